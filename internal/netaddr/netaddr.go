// Package netaddr turns the net package's socket addresses into netip
// values, the one address type the rest of nasreach uses.
package netaddr

import (
	"net"
	"net/netip"
)

// AddrPort returns the IP and port of a UDP, TCP or IP socket address with
// an IPv4-mapped IPv6 address unmapped (::ffff:192.0.2.1 becomes 192.0.2.1)
// and the zone kept. Any other address (nil, a Unix socket) gives the zero
// value. A dual-stack socket reports IPv4 clients in the mapped form; every
// comparison, mask and log record wants the plain IPv4 address.
func AddrPort(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.UDPAddr:
		ap = a.AddrPort()
	case *net.TCPAddr:
		ap = a.AddrPort()
	case *net.IPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		ap = netip.AddrPortFrom(ip.WithZone(a.Zone), 0)
	case interface{ AddrPort() netip.AddrPort }: // an address of another net.Addr type that knows its AddrPort (dnsserver's handed-over queries)
		ap = a.AddrPort()
	default:
		return netip.AddrPort{}
	}
	return Unmap(ap)
}

// Addr is AddrPort without the port.
func Addr(a net.Addr) netip.Addr { return AddrPort(a).Addr() }

// Unmap returns ap with an IPv4-mapped IPv6 address unmapped.
func Unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

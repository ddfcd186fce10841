// Package anonymize masks client addresses before they reach a log or a disk:
// the last IPv4 octet and the IPv6 host part (everything past the configured
// prefix, /48 by default) are zeroed. It has pure functions only.
package anonymize

import (
	"net/netip"
)

// DefaultIPv6Prefix is the number of IPv6 bits kept by Addr: a /48 is what one
// site typically receives, so it says "which network" without saying "which host".
const DefaultIPv6Prefix = 48

// Addr masks a single address: IPv4 (and IPv4-mapped IPv6) keeps its first three
// octets, IPv6 keeps its first DefaultIPv6Prefix bits. The zone is dropped. An
// invalid address is returned unchanged (it carries no host to hide).
func Addr(a netip.Addr) netip.Addr {
	return AddrBits(a, DefaultIPv6Prefix)
}

// AddrBits is Addr with the number of IPv6 bits to keep; it is clamped to 32–64.
func AddrBits(a netip.Addr, v6bits int) netip.Addr {
	if !a.IsValid() {
		return a
	}
	a = a.Unmap().WithZone("")
	if a.Is4() {
		p, _ := a.Prefix(24)
		return p.Addr()
	}
	v6bits = min(max(v6bits, 32), 64)
	p, _ := a.Prefix(v6bits)
	return p.Addr()
}

// AddrPort masks the address of ap and drops the port, which can single out a
// client behind a shared address just as well as the host part.
func AddrPort(ap netip.AddrPort) netip.Addr {
	return Addr(ap.Addr())
}

// String masks the address in s, which may be "ip", "ip:port" or "[ip]:port"
// (what net.Addr.String and http.Request.RemoteAddr give). Anything that is not an
// address is returned as "unknown" so that an unparsable value never leaks.
func String(s string) string {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return AddrPort(ap).String()
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return Addr(a).String()
	}
	return "unknown"
}

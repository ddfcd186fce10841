// Package listen binds the sockets of a server that answers on UDP and TCP
// at one port (DNS, STUN, TURN): the same port for both transports, port 0
// resolved to one port free for both, optionally several SO_REUSEPORT
// sockets per transport, and large UDP buffers.
package listen

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"

	"github.com/nasreach/nasreach/internal/netaddr"
)

// portZeroTries bounds how often Bind picks a new port when the one the
// kernel gave UDP is taken on TCP (only with port 0).
const portZeroTries = 20

// Config says what Bind opens.
type Config struct {
	// Addr is host:port; port 0 picks one port free on both transports.
	Addr string
	// Copies is the number of sockets per transport sharing the port with
	// SO_REUSEPORT, so that the kernel spreads clients over them (a client's
	// 5-tuple always hashes to the same socket). Zero or one opens one each;
	// more than one needs SO_REUSEPORT (ReusePortSupported).
	Copies int
	// TCPOnly opens TCP listeners only (a TLS port).
	TCPOnly bool
	// OneTCP opens one TCP listener whatever Copies says, without
	// SO_REUSEPORT: Copies then applies to UDP only (a DNS server, whose TCP
	// side is light), and another server binding the same address fails on
	// TCP rather than sharing the UDP port with this one.
	OneTCP bool
	// UDPBuffer, when positive, is the receive and send buffer asked for
	// each UDP socket. With CAP_NET_ADMIN it is granted whatever
	// net.core.rmem_max says; otherwise the kernel caps it there.
	UDPBuffer int
}

// Sockets are the bound sockets of one Config, all on one port.
type Sockets struct {
	UDP []net.PacketConn
	TCP []net.Listener
	// Addr is the address they share, unmapped.
	Addr netip.AddrPort
	// BufferShortfall, when not nil, says that the kernel granted less than
	// Config.UDPBuffer (the sockets work; bursts may drop datagrams). The
	// caller logs it, naming what it serves.
	BufferShortfall error
}

// Close closes every socket.
func (s *Sockets) Close() error {
	var errs []error
	for _, c := range s.UDP {
		errs = append(errs, c.Close())
	}
	for _, l := range s.TCP {
		errs = append(errs, l.Close())
	}
	return errors.Join(errs...)
}

// CloseGiven closes the sockets a caller handed to a server whose New failed
// (a server owns what it is given, failure included); nil ones are skipped.
func CloseGiven(pc net.PacketConn, ln net.Listener) {
	if pc != nil {
		pc.Close()
	}
	if ln != nil {
		ln.Close()
	}
}

// CheckAddr reports whether addr is a listen address: host:port with a port
// from 0 to 65535 and a host that is empty (every address), an IP address or
// a host name. It opens no socket, so a configuration can be checked before
// anything starts.
func CheckAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("listen address %q: want HOST:PORT, e.g. 0.0.0.0:53 or [::]:53", addr)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("listen address %q: port %q is not a number from 0 to 65535", addr, port)
	}
	if _, err := netip.ParseAddr(host); err != nil && host != "" && !validHostName(host) {
		return fmt.Errorf("listen address %q: %q is neither an IP address nor a host name", addr, host)
	}
	return nil
}

// validHostName reports whether h is a host name: dot-separated labels of
// letters, digits and '-', none empty or starting or ending with '-'.
func validHostName(h string) bool {
	if len(h) > 253 {
		return false
	}
	for label := range strings.SplitSeq(strings.TrimSuffix(h, "."), ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range []byte(label) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// Bind opens the sockets cfg describes: UDP first, then TCP on the port UDP
// got. With port 0 the whole set is retried when TCP finds that port taken.
func Bind(cfg Config) (*Sockets, error) {
	if err := CheckAddr(cfg.Addr); err != nil {
		return nil, err
	}
	host, port, _ := net.SplitHostPort(cfg.Addr)
	n := max(cfg.Copies, 1)
	if n > 1 && !ReusePortSupported {
		return nil, fmt.Errorf("listen %s: %d sockets per port need SO_REUSEPORT, which this system lacks", cfg.Addr, n)
	}
	for attempt := 1; ; attempt++ {
		s, err := bindOnce(host, port, n, cfg)
		if err == nil || port != "0" || attempt == portZeroTries || !errors.Is(err, syscall.EADDRINUSE) {
			return s, err
		}
	}
}

func bindOnce(host, port string, n int, cfg Config) (*Sockets, error) {
	s := &Sockets{}
	var shortfall error
	lc := net.ListenConfig{Control: func(network, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) {
			// With OneTCP the TCP listener is alone on its port: without
			// SO_REUSEPORT, a second server started on the same address
			// fails to bind it instead of sharing the port unnoticed.
			if n > 1 && (network[:3] == "udp" || !cfg.OneTCP) {
				setReusePort(fd)
			}
			if cfg.UDPBuffer > 0 && network[:3] == "udp" {
				if err := setBuffers(fd, cfg.UDPBuffer); err != nil && shortfall == nil {
					shortfall = err
				}
			}
		})
	}}
	ctx := context.Background()
	p := port
	nt := n
	if cfg.OneTCP {
		nt = 1
	}
	bindUDP := func() error {
		for i := range n {
			c, err := lc.ListenPacket(ctx, "udp", net.JoinHostPort(host, p))
			if err != nil {
				return fmt.Errorf("listen udp %s (socket %d of %d): %w", net.JoinHostPort(host, p), i+1, n, err)
			}
			s.UDP = append(s.UDP, c)
			p = strconv.Itoa(int(netaddr.AddrPort(c.LocalAddr()).Port()))
		}
		return nil
	}
	bindTCP := func() error {
		for i := range nt {
			l, err := lc.Listen(ctx, "tcp", net.JoinHostPort(host, p))
			if err != nil {
				return fmt.Errorf("listen tcp %s (socket %d of %d): %w", net.JoinHostPort(host, p), i+1, nt, err)
			}
			s.TCP = append(s.TCP, l)
			p = strconv.Itoa(int(netaddr.AddrPort(l.Addr()).Port()))
		}
		return nil
	}
	// A fixed port with one TCP listener: TCP first, so that a server
	// already on the port makes this one fail before any of its UDP
	// sockets joins the other's SO_REUSEPORT group.
	steps := []func() error{bindUDP, bindTCP}
	if cfg.TCPOnly {
		steps = []func() error{bindTCP}
	} else if cfg.OneTCP && port != "0" {
		steps = []func() error{bindTCP, bindUDP}
	}
	for _, step := range steps {
		if err := step(); err != nil {
			s.Close()
			return nil, err
		}
	}
	s.Addr = netaddr.AddrPort(s.TCP[0].Addr())
	if shortfall != nil {
		s.BufferShortfall = fmt.Errorf("udp buffers on %s: %w", s.Addr, shortfall)
	}
	return s, nil
}

package testutil

import (
	"errors"
	"net"
	"testing"
	"time"
)

// ListenUDP binds a UDP socket on 127.0.0.1:0, closed when the test ends
// (if nothing that took it over has closed it first).
func ListenUDP(t testing.TB) net.PacketConn {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// ListenTCP binds a TCP listener on 127.0.0.1:0, closed when the test ends
// (if nothing that took it over has closed it first).
func ListenTCP(t testing.TB) *net.TCPListener {
	t.Helper()
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// Closed reports whether a socket (a net.PacketConn, a *net.TCPListener) has
// been closed: setting a deadline is the one call that fails once it is
// closed without blocking while it is open.
func Closed(sock interface{ SetDeadline(time.Time) error }) bool {
	return errors.Is(sock.SetDeadline(time.Time{}), net.ErrClosed)
}

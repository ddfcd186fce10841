package testutil

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
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

// DialFrom opens a TCP connection to addr from the loopback address src
// (Linux routes all of 127.0.0.0/8 to the loopback interface, so a test can
// play several clients), closed when the test ends.
func DialFrom(t testing.TB, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, src, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Refused dials addr from the loopback address src and reports whether the
// server closed the connection without a word within wait: the connect or
// a read ends with end of file or a reset rather than the read timing out.
// It suits servers that wait for the client to speak first. A connection
// that stays open is closed when the test ends.
func Refused(t testing.TB, src, addr string, wait time.Duration) bool {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if errors.Is(err, syscall.ECONNRESET) {
		return true // reset before the connect returned, as loopback can be that quick
	}
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, src, err)
	}
	t.Cleanup(func() { c.Close() })
	return closedBy(c, wait)
}

// closedBy reports whether the peer closes c within wait.
func closedBy(c net.Conn, wait time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(wait)) //nolint:errcheck // shows as a read error
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

// CheckSourceCap checks the per-source cap of perSource connections of the
// TCP server at addr, which waits for its clients to speak first; live
// returns how many connections the server holds. perSource connections
// from 127.0.0.2 are held, the next one from there is refused while one from
// 127.0.0.3 is held, and closing one of 127.0.0.2's frees its slot.
func CheckSourceCap(t testing.TB, addr string, perSource int, live func() int) {
	t.Helper()
	held := func(n int) {
		t.Helper()
		WaitFor(t, 5*time.Second, fmt.Sprintf("the server to hold %d connections", n), func() bool { return live() == n })
	}
	var first []net.Conn
	for range perSource {
		first = append(first, DialFrom(t, "127.0.0.2", addr))
	}
	held(perSource)
	if !Refused(t, "127.0.0.2", addr, 3*time.Second) {
		t.Fatalf("connection %d from 127.0.0.2 was held, want it refused over the cap of %d per source", perSource+1, perSource)
	}
	held(perSource)
	other := DialFrom(t, "127.0.0.3", addr)
	held(perSource + 1)
	first[0].Close()
	held(perSource)
	again := DialFrom(t, "127.0.0.2", addr)
	held(perSource + 1)
	if closedBy(again, 50*time.Millisecond) || closedBy(other, 50*time.Millisecond) {
		t.Fatal("a connection counted as held was closed by the server")
	}
}

// CheckSlowClientIsCut sends the TCP server at addr msg, one byte every
// interval and then its last byte over and over, as a slow-loris client
// does, and fails the test unless the server closes the connection within
// limit of the first byte. It returns how long the server took.
func CheckSlowClientIsCut(t testing.TB, addr string, msg []byte, every, limit time.Duration) time.Duration {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	for i := 0; time.Since(start) < limit; i++ {
		if _, err := c.Write(msg[min(i, len(msg)-1):][:1]); err != nil {
			return time.Since(start) // the server closed it (a reset)
		}
		if closedBy(c, every) {
			return time.Since(start)
		}
	}
	t.Fatalf("a client sending a byte every %v was still connected after %v", every, limit)
	return 0
}

// Serve runs serve on each connection ln accepts, each in a goroutine of
// its own, and closes the connection when serve returns. When the test ends
// it closes ln and waits for every goroutine.
func Serve(t testing.TB, ln net.Listener, serve func(net.Conn)) {
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				serve(c)
			})
		}
	})
}

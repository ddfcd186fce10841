package stun

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/connlimit"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/rs/zerolog"
)

func startServer(t *testing.T) *Server {
	t.Helper()
	return startServerWith(t, Config{Addr: "127.0.0.1:0", Logger: zerolog.New(zerolog.NewTestWriter(t))})
}

// startServerWith starts a server on cfg, shut down when the test ends.
func startServerWith(t *testing.T, cfg Config) *Server {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Shutdown(context.Background()); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return s
}

func newClient(t *testing.T, cfg ClientConfig) *Client {
	t.Helper()
	c, err := NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestDiscoverOverUDPReturnsTheSocketAddress(t *testing.T) {
	s := startServer(t)
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got, err := newClient(t, ClientConfig{}).Discover(ctx, conn, s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if want := conn.LocalAddr().(*net.UDPAddr).AddrPort(); got != want {
		t.Errorf("mapped %v, want %v", got, want)
	}
	if st := s.Stats(); st.Answered != 1 {
		t.Errorf("stats %+v, want one answered", st)
	}
}

func TestDiscoverOverTCPReturnsTheConnectionAddress(t *testing.T) {
	s := startServer(t)
	conn, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c := newClient(t, ClientConfig{})
	for range 3 { // several requests on one connection
		got, err := c.DiscoverStream(ctx, conn)
		if err != nil {
			t.Fatal(err)
		}
		if want := conn.LocalAddr().(*net.TCPAddr).AddrPort(); got != want {
			t.Errorf("mapped %v, want %v", got, want)
		}
	}
}

func TestMalformedPacketGetsNoReply(t *testing.T) {
	s := startServer(t)
	conn, err := net.Dial("udp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, pkt := range [][]byte{
		[]byte("GET / HTTP/1.0\r\n\r\n"),
		make([]byte, 20),                     // a zero header is not a Binding request
		{0x00, 0x01, 0x00, 0x04, 1, 2, 3, 4}, // truncated
	} {
		if _, err := conn.Write(pkt); err != nil {
			t.Fatal(err)
		}
	}
	// Then a valid request: the server reads its socket in order, so the
	// first reply is this one's unless a malformed packet got one, and once
	// it arrives the three drops have been counted.
	req := build(t)
	if _, err := conn.Write(req); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1500)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	if n < HeaderSize || !bytes.Equal(buf[8:HeaderSize], req[8:HeaderSize]) {
		t.Fatalf("got a %d-byte reply to malformed packets", n)
	}
	if st := s.Stats(); st.Dropped != 3 || st.Answered != 1 {
		t.Errorf("stats %+v, want 3 dropped and the valid request answered", st)
	}
}

func TestDiscoverRetransmitsThenTimesOut(t *testing.T) {
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := newClient(t, ClientConfig{RTO: 10 * time.Millisecond, Rc: 4, Rm: 4})
	start := time.Now()
	_, err = c.Discover(context.Background(), conn, silent.LocalAddr().(*net.UDPAddr).AddrPort())
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("err %v, want ErrTimeout", err)
	}
	// 10+20+40 ms between the 4 transmissions, then 4×10 ms: 110 ms.
	if d := time.Since(start); d < 100*time.Millisecond || d > 3*time.Second {
		t.Errorf("gave up after %v, want about 110ms", d)
	}
	silent.SetReadDeadline(time.Now().Add(time.Second))
	n := 0
	buf := make([]byte, 1500)
	for {
		if _, _, err := silent.ReadFrom(buf); err != nil {
			break
		}
		n++
		silent.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	}
	if n != 4 {
		t.Errorf("server saw %d transmissions, want 4", n)
	}
}

func TestDiscoverStopsWithContext(t *testing.T) {
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	_, err = newClient(t, ClientConfig{}).Discover(ctx, conn, silent.LocalAddr().(*net.UDPAddr).AddrPort())
	if !errors.Is(err, ErrTimeout) || !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want ErrTimeout and context.Canceled", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("returned after %v, want soon after the cancel", d)
	}
	// The caller's socket is usable again: its deadline was cleared.
	if err := conn.SetReadDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
}

func TestDiscoverIgnoresOtherSenders(t *testing.T) {
	s := startServer(t)
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// A stranger sends a well-formed but unrelated answer first.
	stranger, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	fake := build(t)
	fake[0], fake[1] = 0x01, 0x01
	stranger.WriteTo(fake, conn.LocalAddr())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got, err := newClient(t, ClientConfig{}).Discover(ctx, conn, s.Addr())
	if err != nil || got != conn.LocalAddr().(*net.UDPAddr).AddrPort() {
		t.Fatalf("Discover = %v, %v", got, err)
	}
}

// Shutdown closes the sockets and the TCP connections and waits for every
// goroutine, and a second call waits for the same stop; with a context that
// has already ended it still does all of that, and may say the context ended.
func TestShutdownStopsEveryGoroutine(t *testing.T) {
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name string
		ctx  context.Context
	}{
		{"context", context.Background()},
		{"context already ended", ended},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := runtime.NumGoroutine()
			s, err := New(Config{Addr: "127.0.0.1:0"})
			if err != nil {
				t.Fatal(err)
			}
			// An open TCP connection mid-request keeps a goroutine until
			// Shutdown.
			c, err := net.Dial("tcp", s.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write([]byte{0, 1, 0, 0})
			waitConns(t, s, 1)
			if err := s.Shutdown(tc.ctx); err != nil && (tc.ctx.Err() == nil || !errors.Is(err, tc.ctx.Err())) {
				t.Fatalf("Shutdown: %v", err)
			}
			if err := s.Shutdown(context.Background()); err != nil {
				t.Errorf("second Shutdown: %v", err)
			}
			waitGoroutines(t, before)
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("read on a connection open at Shutdown: %v, want it closed by the server", err)
			}
		})
	}
}

// Sockets handed to New belong to the server from the call on: when New
// fails, it has closed them.
func TestNewClosesGivenSocketsOnError(t *testing.T) {
	for _, tc := range []struct {
		name     string
		udp, tcp bool
		software string
	}{
		{"PacketConn without Listener", true, false, ""},
		{"Listener without PacketConn", false, true, ""},
		{"both, invalid Software", true, true, strings.Repeat("x", MaxSoftwareLen+1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{Addr: "127.0.0.1:0", Software: tc.software}
			pc, ln := testutil.ListenUDP(t), testutil.ListenTCP(t)
			if tc.udp {
				cfg.PacketConn = pc
			}
			if tc.tcp {
				cfg.Listener = ln
			}
			if s, err := New(cfg); err == nil {
				s.Shutdown(context.Background())
				t.Fatal("New succeeded")
			}
			if tc.udp && !testutil.Closed(pc) {
				t.Error("PacketConn still open after New failed")
			}
			if tc.tcp && !testutil.Closed(ln) {
				t.Error("Listener still open after New failed")
			}
		})
	}
}

func TestServesGivenSockets(t *testing.T) {
	pc, ln := testutil.ListenUDP(t), testutil.ListenTCP(t)
	s, err := New(Config{PacketConn: pc, Listener: ln})
	if err != nil {
		t.Fatal(err)
	}
	if want := pc.LocalAddr().(*net.UDPAddr).AddrPort(); s.Addr() != want {
		t.Errorf("Addr %v, want the given socket's %v", s.Addr(), want)
	}
	conn := testutil.ListenUDP(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := newClient(t, ClientConfig{}).Discover(ctx, conn, s.Addr()); err != nil {
		t.Fatal(err)
	}
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if !testutil.Closed(pc) || !testutil.Closed(ln) {
		t.Error("the given sockets are still open after Shutdown")
	}
}

func TestTCPConnectionsAreCappedPerSourceAndInTotal(t *testing.T) {
	s := startServerWith(t, Config{Addr: "127.0.0.1:0", TCPConns: connlimit.Config{Max: 4, MaxPerSource: 3}})
	testutil.CheckSourceCap(t, s.Addr().String(), 3, func() int { return s.TCPConnStats().Live })
	// Four held now: a third source is refused by the total.
	if !testutil.Refused(t, "127.0.0.4", s.Addr().String(), 3*time.Second) {
		t.Fatal("a connection over the total cap was held")
	}
	if st := s.TCPConnStats(); st.Live != 4 || st.RefusedSource != 1 || st.RefusedTotal != 1 {
		t.Fatalf("stats %+v, want 4 held, 1 refused per source, 1 over the total", st)
	}
}

// A request must arrive whole within the idle timeout, however slowly its
// bytes trickle in.
func TestSlowTCPClientIsCutAfterTheIdleTimeout(t *testing.T) {
	s := startServerWith(t, Config{Addr: "127.0.0.1:0", TCPIdleTimeout: time.Second})
	req := []byte{0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	testutil.CheckSlowClientIsCut(t, s.Addr().String(), req, 250*time.Millisecond, 3*time.Second)
}

// waitConns waits until the server holds n TCP connections.
func waitConns(t *testing.T, s *Server, n int) {
	t.Helper()
	held := func() int {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.open)
	}
	testutil.WaitFor(t, 3*time.Second, fmt.Sprintf("the server to hold %d TCP connections", n), func() bool { return held() == n })
}

func waitGoroutines(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for runtime.NumGoroutine() > want && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > want {
		buf := make([]byte, 1<<16)
		t.Fatalf("%d goroutines left, want at most %d:\n%s", n, want, buf[:runtime.Stack(buf, true)])
	}
}

package stun

import (
	"context"
	"errors"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func startServer(t *testing.T) *Server {
	t.Helper()
	s, err := New(Config{Addr: "127.0.0.1:0", Logger: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
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
	conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := conn.Read(make([]byte, 1500)); err == nil {
		t.Fatalf("got a %d-byte reply to malformed packets", n)
	}
	deadline := time.Now().Add(2 * time.Second)
	for s.Stats().Dropped != 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if st := s.Stats(); st.Dropped != 3 || st.Answered != 0 {
		t.Errorf("stats %+v, want 3 dropped", st)
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

func TestCloseStopsEveryGoroutine(t *testing.T) {
	before := runtime.NumGoroutine()
	s, err := New(Config{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	// An open TCP connection mid-request keeps a goroutine until Close.
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte{0, 1, 0, 0})
	time.Sleep(50 * time.Millisecond)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	waitGoroutines(t, before)
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestTCPConnectionLimit(t *testing.T) {
	s, err := New(Config{Addr: "127.0.0.1:0", MaxTCPConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	first, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	time.Sleep(50 * time.Millisecond)
	second, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	second.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err = second.Read(make([]byte, 1))
	var ne net.Error
	if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		t.Fatalf("second connection read: %v, want it closed by the server beyond MaxTCPConns", err)
	}
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

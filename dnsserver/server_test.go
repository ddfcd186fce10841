package dnsserver

import (
	"context"
	"errors"
	"io"
	"math"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/internal/connlimit"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/rs/zerolog"
)

func TestUDPReceiveBufferIsAtLeast2MiB(t *testing.T) {
	if !kernelGrants(t, 2<<20) {
		t.Skip("this kernel grants no 2 MiB receive buffer without CAP_NET_ADMIN (raise net.core.rmem_max)")
	}
	st := openStore(t)
	s := startServer(t, Config{Source: st})
	pc := udpSocket(s)
	got := sockoptRcvBuf(t, pc)
	// Linux reports twice the size asked for (the rest is bookkeeping).
	if got/2 < 2<<20 {
		t.Errorf("UDP receive buffer is %d bytes, want at least 2 MiB", got/2)
	}
}

func TestReceiveBufferShortfallIsLogged(t *testing.T) {
	var log testutil.Buffer
	st := openStore(t)
	// No kernel grants this much: the operator must be told.
	startServer(t, Config{Source: st, ReceiveBuffer: math.MaxInt32, Logger: zerolog.New(&log)})
	if !strings.Contains(log.String(), "cannot enlarge dns udp receive buffer") {
		t.Errorf("no warning about the receive buffer; log:\n%s", log.String())
	}
}

func TestShutdownStopsEveryGoroutineAndFreesThePort(t *testing.T) {
	st := openStore(t)
	addDevice(t, st, "nas1", "198.51.100.1", "")
	before := settledGoroutines()

	s, err := newTestServer(Config{Addr: "127.0.0.1:0", Source: st})
	if err != nil {
		t.Fatal(err)
	}
	addr := s.Addr().String()
	// One UDP query, and a TCP connection left open after its query: the
	// server holds a goroutine for it until the idle timeout (10s).
	q := new(dns.Msg).SetQuestion("nas1.myqnapcloud.com.", dns.TypeA)
	if _, _, err := (&dns.Client{Net: "udp", Timeout: 2 * time.Second}).Exchange(q, addr); err != nil {
		t.Fatalf("udp query: %v", err)
	}
	tcp, err := (&dns.Client{Net: "tcp", Timeout: 2 * time.Second}).Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	if err := tcp.WriteMsg(q); err != nil {
		t.Fatal(err)
	}
	if _, err := tcp.ReadMsg(); err != nil {
		t.Fatalf("tcp query: %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	start := time.Now()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown with an idle TCP client: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("shutdown took %s: it waited for the idle TCP client", d)
	}
	tcp.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := tcp.ReadMsg(); !errors.Is(err, io.EOF) {
		t.Errorf("idle TCP connection after shutdown: read gave %v, want EOF (closed by the server)", err)
	}
	tcp.Close()

	if c, err := net.ListenPacket("udp", addr); err != nil {
		t.Errorf("udp port still taken after shutdown: %v", err)
	} else {
		c.Close()
	}
	if ln, err := net.Listen("tcp", addr); err != nil {
		t.Errorf("tcp port still taken after shutdown: %v", err)
	} else {
		ln.Close()
	}
	waitGoroutines(t, before)
}

func TestShutdownTwiceReturns(t *testing.T) {
	st := openStore(t)
	s, err := newTestServer(Config{Addr: "127.0.0.1:0", Source: st})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		done := make(chan error, 1)
		go func() { done <- s.Shutdown(context.Background()) }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("shutdown #%d: %v", i+1, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("shutdown #%d hangs", i+1)
		}
	}
}

func TestServeFailureLeavesNothingRunning(t *testing.T) {
	st := openStore(t)
	before := settledGoroutines()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pc.Close() // the UDP transport cannot start on this
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := newTestServer(Config{PacketConn: pc, Listener: ln, Source: st}); err == nil {
		t.Fatal("New on a closed UDP socket succeeded")
	}
	if c, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		c.Close()
		t.Error("the TCP listener still accepts after New failed")
	}
	waitGoroutines(t, before)
}

// settledGoroutines counts goroutines once those left by earlier work (store
// commits, closed connections) have had a moment to exit.
func settledGoroutines() int {
	n := runtime.NumGoroutine()
	for range 10 {
		time.Sleep(5 * time.Millisecond)
		n = min(n, runtime.NumGoroutine())
	}
	return n
}

// waitGoroutines waits until no more goroutines run than before; goroutines
// that have finished their work may take a moment to exit.
func waitGoroutines(t *testing.T, before int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("%d goroutines still running, %d before the server started:\n%s", runtime.NumGoroutine(), before, buf)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func sockoptRcvBuf(t *testing.T, c syscall.Conn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var got int
	var serr error
	if err := rc.Control(func(fd uintptr) {
		got, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF)
	}); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatalf("getsockopt SO_RCVBUF: %v", serr)
	}
	return got
}

// kernelGrants reports whether a process like this one can get a UDP receive
// buffer of size bytes: with CAP_NET_ADMIN, or under net.core.rmem_max.
func kernelGrants(t *testing.T, size int) bool {
	t.Helper()
	if b, err := os.ReadFile("/proc/sys/net/core/rmem_max"); err == nil {
		if rmemMax, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && rmemMax >= size {
			return true
		}
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	rc, err := pc.(*net.UDPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUFFORCE, size)
	})
	return serr == nil
}

func TestTCPConnectionsArePerSourceCapped(t *testing.T) {
	s := startServer(t, Config{Source: openStore(t), TCPConns: connlimit.Config{Max: 10, MaxPerSource: 3}})
	testutil.CheckSourceCap(t, s.Addr().String(), 3, func() int { return s.TCPConnStats().Live })
	if st := s.TCPConnStats(); st.RefusedSource != 1 {
		t.Errorf("refused per source: %d, want 1", st.RefusedSource)
	}
	// The cap is on connections, not on answers: a held one answers.
	c := &dns.Client{Net: "tcp", Timeout: 2 * time.Second, Dialer: &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 4)}}}
	if _, _, err := c.Exchange(new(dns.Msg).SetQuestion("myqnapcloud.com.", dns.TypeSOA), s.Addr().String()); err != nil {
		t.Fatalf("query over TCP from another source: %v", err)
	}
}

// A query must arrive whole within the read timeout, however slowly its
// bytes trickle in.
func TestSlowTCPClientIsCutAfterTheReadTimeout(t *testing.T) {
	s := startServer(t, Config{Source: openStore(t)})
	q, _ := new(dns.Msg).SetQuestion("nas1.myqnapcloud.com.", dns.TypeA).Pack()
	msg := append([]byte{byte(len(q) >> 8), byte(len(q))}, q...)
	took := testutil.CheckSlowClientIsCut(t, s.Addr().String(), msg, 250*time.Millisecond, tcpReadTimeout+2*time.Second)
	if took < tcpReadTimeout-250*time.Millisecond {
		t.Errorf("cut after %v, before the read timeout of %v", took, tcpReadTimeout)
	}
}

// udpSocket returns the server's (first) UDP socket, the fast path's or
// miekg/dns's.
func udpSocket(s *Server) *net.UDPConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.readers) > 0 {
		return s.readers[0].conn
	}
	return s.udp.PacketConn.(*net.UDPConn)
}

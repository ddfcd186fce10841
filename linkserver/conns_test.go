package linkserver

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/connlimit"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/link"
	"github.com/quic-go/quic-go"
)

// dialFrom opens a QUIC connection to the relay at addr from the loopback
// address src, closed when the test ends.
func dialFrom(t *testing.T, src string, addr net.Addr) (*quic.Conn, error) {
	t.Helper()
	pc, err := net.ListenPacket("udp", net.JoinHostPort(src, "0"))
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: pc}
	t.Cleanup(func() { tr.Close(); pc.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := tr.Dial(ctx, addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{link.ALPN}}, &quic.Config{})
	if err == nil {
		t.Cleanup(func() { c.CloseWithError(0, "") })
	}
	return c, err
}

// Agents and clients alike: the (cap+1)-th connection from one source is
// refused before its handshake while another source is admitted, and a
// closed connection frees its slot. From half a source's cap on, a new
// connection proves its address first (a Retry), which the client's QUIC
// stack answers without the application noticing.
func TestQUICConnectionsArePerSourceCapped(t *testing.T) {
	cfg := validConfig(t)
	cfg.PacketConn = testutil.ListenUDP(t)
	cfg.Conns = connlimit.Config{Max: 10, MaxPerSource: 2}
	l := start(t, cfg)
	addr := cfg.PacketConn.LocalAddr()
	var first []*quic.Conn
	for range 2 {
		c, err := dialFrom(t, "127.0.0.2", addr)
		if err != nil {
			t.Fatalf("connection %d from 127.0.0.2: %v", len(first)+1, err)
		}
		first = append(first, c)
	}
	_, err := dialFrom(t, "127.0.0.2", addr)
	var te *quic.TransportError
	if !errors.As(err, &te) || te.ErrorCode != quic.ConnectionRefused {
		t.Fatalf("third connection from 127.0.0.2: %v, want CONNECTION_REFUSED", err)
	}
	if _, err := dialFrom(t, "127.0.0.3", addr); err != nil {
		t.Fatalf("another source while 127.0.0.2 is full: %v", err)
	}
	if st := l.ConnStats(); st.Live != 3 || st.RefusedSource == 0 {
		t.Fatalf("stats %+v, want 3 held and the refusal per source counted", st)
	}
	first[0].CloseWithError(0, "")
	testutil.WaitFor(t, 5*time.Second, "the closed connection's slot given back", func() bool { return l.ConnStats().Live == 2 })
	if _, err := dialFrom(t, "127.0.0.2", addr); err != nil {
		t.Fatalf("127.0.0.2 after closing one of its connections: %v", err)
	}
	// Lowered live (a reload), the cap applies to the next connection.
	l.SetLimits(Limits{Conns: connlimit.Config{Max: 3}})
	if _, err := dialFrom(t, "127.0.0.4", addr); err == nil {
		t.Fatal("a connection over a lowered total cap was admitted")
	}
	if st := l.ConnStats(); st.RefusedTotal == 0 {
		t.Errorf("stats %+v, want the refusal over the total counted", st)
	}
}

// The TCP carrier's listener caps connections per source like every TCP
// listener: the (cap+1)-th from one source is closed before its TLS
// handshake, and a closed connection frees its slot.
func TestTCPConnectionsArePerSourceCapped(t *testing.T) {
	cfg := withTCP(t)
	cfg.TCPConns = connlimit.Config{Max: 10, MaxPerSource: 2}
	l := start(t, cfg)
	testutil.CheckSourceCap(t, l.TCPAddr().String(), 2, func() int { return l.TCPConnStats().Live })
	if st := l.TCPConnStats(); st.RefusedSource == 0 {
		t.Errorf("stats %+v, want the refusal per source counted", st)
	}
}

// A TLS handshake that trickles in is cut at the handshake timeout, as
// every TCP server bounds how long a request may take to arrive.
func TestSlowTLSHandshakeIsCut(t *testing.T) {
	cfg := withTCP(t)
	cfg.HandshakeTimeout = 500 * time.Millisecond
	l := start(t, cfg)
	hello := []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc} // a ClientHello's first bytes
	testutil.CheckSlowClientIsCut(t, l.TCPAddr().String(), hello, 100*time.Millisecond, 3*time.Second)
}

// start starts a relay on cfg, shut down when the test ends.
func start(t *testing.T, cfg Config) *Server {
	t.Helper()
	l, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Shutdown(context.Background()) })
	return l
}

// withTCP is a valid Config with sockets for QUIC and for the TCP carrier.
func withTCP(t *testing.T) Config {
	cfg := validConfig(t)
	cfg.PacketConn = testutil.ListenUDP(t)
	cfg.TCPListener = testutil.ListenTCP(t)
	return cfg
}

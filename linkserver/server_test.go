package linkserver

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/link"
	"github.com/nasreach/nasreach/store"
	"github.com/nasreach/nasreach/stun"
)

// validConfig is a Config New accepts but for a socket: a store and a
// certificate, gone when the test ends.
func validConfig(t *testing.T) Config {
	t.Helper()
	st, err := store.Open(store.Config{Dir: t.TempDir(), SweepEvery: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cert, _, err := LoadCert(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return Config{Certificate: cert, Store: st}
}

// The sockets handed to New belong to the relay from the call on: when New
// fails, it has closed them.
func TestNewClosesTheGivenSocketOnError(t *testing.T) {
	valid := validConfig(t)
	for _, tc := range []struct {
		name string
		mod  func(*Config)
	}{
		{"no Store", func(c *Config) { c.Store = nil }},
		{"no Certificate", func(c *Config) { c.Certificate.Certificate = nil }},
		{"MaxHeaderBytes too large", func(c *Config) { c.MaxHeaderBytes = 1 << 30 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := valid
			cfg.PacketConn = testutil.ListenUDP(t)
			tcp := testutil.ListenTCP(t)
			cfg.TCPListener = tcp
			tc.mod(&cfg)
			if l, err := New(cfg); err == nil {
				l.Shutdown(context.Background())
				t.Fatal("New succeeded")
			}
			if !testutil.Closed(cfg.PacketConn) {
				t.Error("the given PacketConn is still open after New failed")
			}
			if !testutil.Closed(tcp) {
				t.Error("the given TCPListener is still open after New failed")
			}
		})
	}
}

// Shutdown closes the socket it was given even when its context has
// already ended, and a second call waits for the same stop.
func TestShutdownClosesTheGivenSocket(t *testing.T) {
	cfg := validConfig(t)
	pc := testutil.ListenUDP(t)
	cfg.PacketConn = pc
	l, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if want := pc.LocalAddr().(*net.UDPAddr).AddrPort(); l.Addr() != want {
		t.Errorf("Addr %v, want the given socket's %v", l.Addr(), want)
	}
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	if err := l.Shutdown(ended); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("Shutdown with an ended context: %v, want nil or context.Canceled", err)
	}
	if !testutil.Closed(pc) {
		t.Error("the given PacketConn is still open after Shutdown")
	}
	if err := l.Shutdown(context.Background()); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
}

// startRelay starts a relay of validConfig on 127.0.0.1, until the test
// ends.
func startRelay(t *testing.T) (*Server, Config) {
	t.Helper()
	cfg := validConfig(t)
	cfg.Addr = "127.0.0.1:0"
	l, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Shutdown(context.Background()) })
	return l, cfg
}

// An agent's Info stream lives as long as its connection: the relay keeps
// no state for an agent that left.
func TestInfoStreamsEndWithTheirConnections(t *testing.T) {
	l, cfg := startRelay(t)
	_, tok, err := cfg.Store.(*store.Store).Create(context.Background(), "nas1", store.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	a, err := link.NewAgent(link.AgentConfig{Server: l.Addr().String(), RelayFingerprint: Fingerprint(cfg.Certificate.Leaf),
		Device: "nas1", Token: tok, Expose: map[uint16]string{22: "127.0.0.1:1"}, StateDir: t.TempDir(), Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	infos := func() int {
		l.mu.Lock()
		defer l.mu.Unlock()
		return len(l.infos)
	}
	testutil.WaitFor(t, 10*time.Second, "the agent's Info stream", func() bool { return infos() == 1 })
	a.Close()
	testutil.WaitFor(t, 10*time.Second, "the Info stream to go with the agent", func() bool { return infos() == 0 && l.Agents() == 0 })
}

// The relay answers STUN Binding on its own port, beside QUIC: the second
// destination an agent or client compares its mapping across.
func TestRelayAnswersSTUNBindingOnItsPort(t *testing.T) {
	l, _ := startRelay(t)
	conn := testutil.ListenUDP(t)
	c, err := stun.NewClient(stun.ClientConfig{RTO: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	mapped, err := c.Discover(ctx, conn, l.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if want := conn.LocalAddr().(*net.UDPAddr).AddrPort(); mapped != want {
		t.Errorf("mapped address %v, want the socket's %v", mapped, want)
	}
}

package api

import (
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/nasreach/nasreach/api/client"
	"github.com/nasreach/nasreach/internal/connlimit"
	"github.com/nasreach/nasreach/internal/testutil"
)

func TestConnectionsArePerSourceCapped(t *testing.T) {
	s := startServer(t, func(c *Config) { c.Conns = connlimit.Config{Max: 20, MaxPerSource: 3} })
	testutil.CheckSourceCap(t, s.api.Addr().String(), 3, func() int { return s.api.ConnStats().Live })
	if st := s.api.ConnStats(); st.RefusedSource != 1 || st.RefusedTotal != 0 {
		t.Errorf("stats %+v, want one refusal per source", st)
	}
}

// A reverse proxy carries every client's connections from one address: a
// trusted proxy counts toward the total only, and that follows a reload of
// the trusted proxies.
func TestTrustedProxiesAreNotCappedPerSource(t *testing.T) {
	s := startServer(t, func(c *Config) { // 127.0.0.1 trusted, as in every test here
		c.Conns = connlimit.Config{Max: 20, MaxPerSource: 2}
	})
	addr := s.api.Addr().String()
	for range 4 {
		testutil.DialFrom(t, "127.0.0.1", addr)
	}
	testutil.WaitFor(t, 5*time.Second, "four connections from the proxy held", func() bool { return s.api.ConnStats().Live == 4 })
	s.api.SetTrustedProxies([]netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")})
	for range 2 {
		testutil.DialFrom(t, "127.0.0.1", addr) // not trusted now: up to its per-source cap
	}
	testutil.WaitFor(t, 5*time.Second, "the next two held", func() bool { return s.api.ConnStats().Live == 6 })
	if !testutil.Refused(t, "127.0.0.1", addr, 3*time.Second) {
		t.Fatal("no longer a trusted proxy, 127.0.0.1 was not capped per source")
	}
}

// The operator's socket has no per-source cap: connections to it never
// count against the network listener's, and it serves while the network
// listener is full.
func TestTheLocalSocketIsNotCappedWithTheNetwork(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "nasreach.sock")
	s := startServer(t, func(c *Config) {
		c.LocalListener = listenUnix(t, sock)
		c.Conns = connlimit.Config{Max: 2}
	})
	for _, src := range []string{"127.0.0.2", "127.0.0.3"} {
		testutil.DialFrom(t, src, s.api.Addr().String())
	}
	testutil.WaitFor(t, 5*time.Second, "the network listener full", func() bool { return s.api.ConnStats().Live == 2 })
	var held []net.Conn
	for range 10 {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		held = append(held, c)
	}
	local, err := client.New(client.Config{Socket: sock})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := local.Devices(t.Context()); err != nil {
		t.Fatalf("the operator's socket with %d idle connections and the network full: %v", len(held), err)
	}
	if !testutil.Refused(t, "127.0.0.4", s.api.Addr().String(), 3*time.Second) {
		t.Error("the network listener held a connection over its total cap")
	}
}

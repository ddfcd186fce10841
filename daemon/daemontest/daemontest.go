// Package daemontest starts a whole nasreach daemon in process for tests: on
// 127.0.0.1 with port 0 everywhere and its data in a temporary directory,
// with the requests, DNS checks and relay clients the tests of daemon and
// cmd/nasreach drive it with. Only tests import it.
package daemontest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/daemon"
	"github.com/rs/zerolog"
)

// Zone is the test daemon's zone.
const Zone = "myqnapcloud.com"

// Daemon is a whole nasreach daemon started in-process on 127.0.0.1 with
// port 0 everywhere and its data in a temporary directory. The address
// fields are those of the running daemon: Restart binds fresh ports, so read
// them again after it.
type Daemon struct {
	T       *testing.T     // the test it runs for, which its checks fail
	Daemon  *daemon.Daemon // the running daemon; nil once stopped
	cfg     daemon.Config
	DNS     string // host:port for UDP and TCP
	HTTP    string // base URL, e.g. http://127.0.0.1:41234
	Metrics string // base URL of /metrics, /healthz, /readyz
	STUN    string // STUN/TURN host:port (UDP and TCP) with WithTURN
	Link    string // Link relay host:port (UDP) with WithLink
	LinkTCP string // its TCP carrier's host:port with WithLinkTCP
	Admin   string // admin token
	Dir     string // data directory
}

// Start starts a daemon; mods adjust the config first. It is stopped when
// the test ends.
func Start(t *testing.T, mods ...func(*daemon.Config)) *Daemon {
	t.Helper()
	td := &Daemon{T: t, Dir: t.TempDir()}
	td.cfg = daemon.Config{
		DataDir: td.Dir, Zone: Zone,
		DNSAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
	}
	for _, m := range mods {
		m(&td.cfg)
	}
	td.start()
	t.Cleanup(td.Stop)
	return td
}

// start starts the daemon on td.cfg and reads back where it listens. The
// config keeps its port-0 addresses, so a restart binds fresh ports rather
// than binding again ports just freed, which another test or process may
// have taken in between.
func (td *Daemon) start() {
	td.T.Helper()
	d, err := daemon.New(td.cfg)
	if err != nil {
		td.T.Fatalf("start daemon: %v", err)
	}
	a := d.Addrs()
	td.Daemon, td.Admin = d, d.AdminTokenValue()
	td.DNS = a.DNS.String()
	td.HTTP = "http://" + a.HTTP.String()
	td.Metrics = "http://" + a.Metrics.String()
	if a.STUN.IsValid() {
		td.STUN = a.STUN.String()
	}
	if a.Link.IsValid() {
		td.Link = a.Link.String()
	}
	if a.LinkTCP.IsValid() {
		td.LinkTCP = a.LinkTCP.String()
	}
}

// WithTURN runs STUN and TURN on a free loopback port, with peers on
// 127.0.0.1 allowed (the tests' echo peers live there).
func WithTURN(c *daemon.Config) {
	c.TURN = daemon.TURNConfig{
		Addr: "127.0.0.1:0", Enabled: true, AllowPeers: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
	}
}

// WithLink runs the Link relay on a free loopback port with its defaults.
func WithLink(c *daemon.Config) { c.Link = daemon.LinkConfig{Addr: "127.0.0.1:0", Direct: true} }

// WithLinkTCP is WithLink with the TCP carrier on a free loopback port too.
func WithLinkTCP(c *daemon.Config) {
	WithLink(c)
	c.Link.TCPAddr = "127.0.0.1:0"
}

// Stop shuts the daemon down cleanly; calling it twice is harmless.
func (td *Daemon) Stop() {
	if td.Daemon == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := td.Daemon.Shutdown(ctx); err != nil {
		td.T.Errorf("shutdown: %v", err)
	}
	td.Daemon = nil
}

// Restart stops the daemon if it runs and starts it again on the same data
// directory and config, on fresh loopback ports: the address fields change,
// and a client must be pointed at them again.
func (td *Daemon) Restart() {
	td.T.Helper()
	td.Stop()
	td.start()
}

// Do sends an HTTP request with an optional bearer token and JSON body and
// returns the status and body.
func (td *Daemon) Do(method, path, token string, body any) (int, []byte) {
	td.T.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			td.T.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, td.HTTP+path, rd)
	if err != nil {
		td.T.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		td.T.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, data
}

// AddDevice registers name as admin and returns its token.
func (td *Daemon) AddDevice(name string) string {
	td.T.Helper()
	code, body := td.Do(http.MethodPost, "/v1/devices", td.Admin, map[string]string{"name": name})
	if code != http.StatusCreated {
		td.T.Fatalf("create %s: HTTP %d %s", name, code, body)
	}
	var out struct{ Token string }
	if err := json.Unmarshal(body, &out); err != nil || out.Token == "" {
		td.T.Fatalf("create %s: no token in %s", name, body)
	}
	return out.Token
}

// Query asks the daemon's DNS server over net ("udp" or "tcp").
func (td *Daemon) Query(net, name string, qtype uint16) *dns.Msg {
	td.T.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	c := &dns.Client{Net: net, Timeout: 2 * time.Second}
	r, _, err := c.Exchange(m, td.DNS)
	if err != nil {
		td.T.Fatalf("query %s %s over %s: %v", name, dns.TypeToString[qtype], net, err)
	}
	return r
}

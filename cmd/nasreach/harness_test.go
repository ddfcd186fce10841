package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/daemon"
	"github.com/rs/zerolog"
)

// testDaemon is a whole nasreach daemon started in-process on 127.0.0.1 with
// port 0 everywhere and its data in a temporary directory.
type testDaemon struct {
	t       *testing.T
	cfg     daemon.Config
	d       *daemon.Daemon
	DNS     string // host:port for UDP and TCP
	HTTP    string // base URL, e.g. http://127.0.0.1:41234
	Metrics string // base URL of /metrics, /healthz, /readyz
	STUN    string // STUN/TURN host:port (UDP and TCP) with withTURN
	Link    string // Link relay host:port (UDP) with withLink
	Admin   string // admin token
	Dir     string // data directory
}

// startTestDaemon starts a daemon; mods adjust the config first. It is stopped
// when the test ends.
func startTestDaemon(t *testing.T, mods ...func(*daemon.Config)) *testDaemon {
	t.Helper()
	td := &testDaemon{t: t, Dir: t.TempDir()}
	td.cfg = daemon.Config{
		DataDir: td.Dir, Zone: "myqnapcloud.com",
		DNSAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
	}
	for _, m := range mods {
		m(&td.cfg)
	}
	td.start()
	t.Cleanup(td.stop)
	return td
}

func (td *testDaemon) start() {
	td.t.Helper()
	d, err := daemon.New(td.cfg)
	if err != nil {
		td.t.Fatalf("start daemon: %v", err)
	}
	a := d.Addrs()
	td.d, td.Admin = d, d.AdminTokenValue()
	td.DNS = a.DNS.String()
	td.HTTP = "http://" + a.HTTP.String()
	td.Metrics = "http://" + a.Metrics.String()
	// Keep the ports on restart so clients configured once keep working.
	td.cfg.DNSAddr, td.cfg.HTTPAddr, td.cfg.MetricsAddr = td.DNS, a.HTTP.String(), a.Metrics.String()
	if a.STUN.IsValid() {
		td.STUN = a.STUN.String()
		td.cfg.TURN.Addr = td.STUN
	}
	if a.Link.IsValid() {
		td.Link = a.Link.String()
		td.cfg.Link.Addr = td.Link
	}
}

// withTURN runs STUN and TURN on a free loopback port, with peers on
// 127.0.0.1 allowed (the tests' echo peers live there).
func withTURN(c *daemon.Config) {
	c.TURN = daemon.TURNConfig{
		Addr: "127.0.0.1:0", Enabled: true, AllowPeers: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
	}
}

// withLink runs the Link relay on a free loopback port with its defaults.
func withLink(c *daemon.Config) { c.Link = daemon.LinkConfig{Addr: "127.0.0.1:0"} }

// stop shuts the daemon down cleanly; calling it twice is harmless.
func (td *testDaemon) stop() {
	if td.d == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := td.d.Shutdown(ctx); err != nil {
		td.t.Errorf("shutdown: %v", err)
	}
	td.d = nil
}

// restart stops the daemon and starts it again on the same data and ports.
func (td *testDaemon) restart() {
	td.t.Helper()
	td.stop()
	td.start()
}

// do sends an HTTP request with an optional bearer token and JSON body and
// returns the status and body.
func (td *testDaemon) do(method, path, token string, body any) (int, []byte) {
	td.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			td.t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, td.HTTP+path, rd)
	if err != nil {
		td.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		td.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, data
}

// addDevice registers name as admin and returns its token.
func (td *testDaemon) addDevice(name string) string {
	td.t.Helper()
	code, body := td.do(http.MethodPost, "/v1/devices", td.Admin, map[string]string{"name": name})
	if code != http.StatusCreated {
		td.t.Fatalf("create %s: HTTP %d %s", name, code, body)
	}
	var out struct{ Token string }
	if err := json.Unmarshal(body, &out); err != nil || out.Token == "" {
		td.t.Fatalf("create %s: no token in %s", name, body)
	}
	return out.Token
}

// query asks the daemon's DNS server over net ("udp" or "tcp").
func (td *testDaemon) query(net, name string, qtype uint16) *dns.Msg {
	td.t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	c := &dns.Client{Net: net, Timeout: 2 * time.Second}
	r, _, err := c.Exchange(m, td.DNS)
	if err != nil {
		td.t.Fatalf("query %s %s over %s: %v", name, dns.TypeToString[qtype], net, err)
	}
	return r
}

func TestHarnessServesAndRestarts(t *testing.T) {
	td := startTestDaemon(t)
	td.addDevice("nas1")
	if r := td.query("udp", "nas1.myqnapcloud.com", dns.TypeA); r.Rcode != dns.RcodeSuccess {
		t.Fatalf("nas1 before restart: %s", dns.RcodeToString[r.Rcode])
	}
	td.restart()
	if r := td.query("tcp", "nas1.myqnapcloud.com", dns.TypeA); r.Rcode != dns.RcodeSuccess {
		t.Fatalf("nas1 after restart: %s", dns.RcodeToString[r.Rcode])
	}
}

func TestStartFailureIsAnErrorNotACrash(t *testing.T) {
	td := startTestDaemon(t)
	// The second daemon's DNS port is taken by the first.
	_, err := daemon.New(daemon.Config{DataDir: t.TempDir(), Zone: "myqnapcloud.com", DNSAddr: td.DNS, HTTPAddr: "127.0.0.1:0"})
	if err == nil || !strings.Contains(err.Error(), td.DNS) {
		t.Fatalf("starting on a taken port: %v, want an error naming %s", err, td.DNS)
	}
}

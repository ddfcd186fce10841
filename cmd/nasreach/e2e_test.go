package main

// End-to-end tests of the whole daemon: the store, the DNS server and the
// HTTP API wired by startDaemon, driven over real loopback sockets the way a
// NAS, an operator's CLI and a resolver drive them.

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/daemon"
	"github.com/nasreach/nasreach/store"
	"github.com/rs/zerolog"
)

const e2eZone = "myqnapcloud.com"

// deviceFQDN is a device's name in the test zone.
func deviceFQDN(device string) string { return device + "." + e2eZone }

// dyndns2Update sends one dyndns2 update the way ddclient does (GET, Basic
// auth) and returns the HTTP status and the reply text. It is safe to call
// from several goroutines.
func dyndns2Update(ctx context.Context, c *http.Client, base, user, token, hostname, myip string) (int, string, error) {
	q := url.Values{"hostname": {hostname}}
	if myip != "" {
		q.Set("myip", myip)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/nic/update?"+q.Encode(), nil)
	if err != nil {
		return 0, "", err
	}
	req.SetBasicAuth(user, token)
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// createDevice registers name with the admin token; safe for goroutines.
func createDevice(ctx context.Context, c *http.Client, base, admin, name string) (string, error) {
	b, _ := json.Marshal(map[string]string{"name": name})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/devices", bytes.NewReader(b))
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "Bearer "+admin)
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("create %s: HTTP %d %s", name, resp.StatusCode, body)
	}
	var out struct{ Token string }
	if err := json.Unmarshal(body, &out); err != nil || out.Token == "" {
		return "", fmt.Errorf("create %s: no token in %s", name, body)
	}
	return out.Token, nil
}

// dyndns2 sends a dyndns2 update from the test goroutine and fails the test
// unless the reply is HTTP 200 with want as its text.
func (td *testDaemon) dyndns2(user, token, hostname, myip, want string) {
	td.t.Helper()
	code, body, err := dyndns2Update(context.Background(), http.DefaultClient, td.HTTP, user, token, hostname, myip)
	if err != nil {
		td.t.Fatalf("dyndns2 update %s myip=%s: %v", hostname, myip, err)
	}
	if code != http.StatusOK || body != want+"\n" {
		td.t.Fatalf("dyndns2 update %s myip=%s: HTTP %d %q, want HTTP 200 %q", hostname, myip, code, body, want+"\n")
	}
}

// wantAnswer asks name/qtype over net and fails the test unless the daemon
// answers authoritatively with exactly the address want.
func (td *testDaemon) wantAnswer(net, name string, qtype uint16, want netip.Addr) {
	td.t.Helper()
	r := td.query(net, name, qtype)
	if err := checkAnswer(r, qtype, want); err != nil {
		td.t.Fatalf("%s %s over %s: %v", name, dns.TypeToString[qtype], net, err)
	}
}

// checkAnswer reports how r differs from an authoritative answer holding
// exactly one record of qtype with address want.
func checkAnswer(r *dns.Msg, qtype uint16, want netip.Addr) error {
	if r.Rcode != dns.RcodeSuccess {
		return fmt.Errorf("rcode %s, want NOERROR with %s", dns.RcodeToString[r.Rcode], want)
	}
	if !r.Authoritative {
		return errors.New("answer is not authoritative (AA flag clear)")
	}
	if len(r.Answer) != 1 {
		return fmt.Errorf("answer has %d records %v, want one %s %s", len(r.Answer), r.Answer, dns.TypeToString[qtype], want)
	}
	var got netip.Addr
	switch rr := r.Answer[0].(type) {
	case *dns.A:
		got, _ = netip.AddrFromSlice(rr.A.To4())
	case *dns.AAAA:
		got, _ = netip.AddrFromSlice(rr.AAAA)
	}
	if r.Answer[0].Header().Rrtype != qtype || got != want {
		return fmt.Errorf("answer is %v, want %s %s", r.Answer[0], dns.TypeToString[qtype], want)
	}
	return nil
}

// wantNXDOMAIN fails the test unless name is NXDOMAIN over net, with the
// zone's SOA in the authority section so resolvers can cache the denial.
func (td *testDaemon) wantNXDOMAIN(net, name string, qtype uint16) {
	td.t.Helper()
	r := td.query(net, name, qtype)
	if r.Rcode != dns.RcodeNameError {
		td.t.Fatalf("%s %s over %s: rcode %s answer %v, want NXDOMAIN", name, dns.TypeToString[qtype], net, dns.RcodeToString[r.Rcode], r.Answer)
	}
	if len(r.Ns) != 1 || r.Ns[0].Header().Rrtype != dns.TypeSOA || r.Ns[0].Header().Name != e2eZone+"." {
		td.t.Fatalf("%s NXDOMAIN over %s: authority %v, want the SOA of %s", name, net, r.Ns, e2eZone)
	}
}

// deviceJSON fetches a device's JSON as admin.
func (td *testDaemon) deviceJSON(name string) map[string]any {
	td.t.Helper()
	code, body := td.do(http.MethodGet, "/v1/devices/"+name, td.Admin, nil)
	if code != http.StatusOK {
		td.t.Fatalf("GET device %s: HTTP %d %s", name, code, body)
	}
	var out map[string]any
	if err := json.Unmarshal(body, &out); err != nil {
		td.t.Fatalf("GET device %s: %v in %s", name, err, body)
	}
	return out
}

func TestE2EDevicesAndAddressesSurviveRestart(t *testing.T) {
	td := startTestDaemon(t)
	tok1 := td.addDevice("nas1")
	td.dyndns2("nas1", tok1, deviceFQDN("nas1"), "203.0.113.1,2001:db8::1", "good 203.0.113.1,2001:db8::1")
	tok2 := td.addDevice("nas2")
	td.dyndns2("nas2", tok2, deviceFQDN("nas2"), "198.51.100.2", "good 198.51.100.2")
	if code, body := td.do(http.MethodPatch, "/v1/devices/nas2", td.Admin, map[string]bool{"ddns": false}); code != http.StatusOK {
		t.Fatalf("PATCH nas2 ddns=false: HTTP %d %s", code, body)
	}
	tok3 := td.addDevice("nas3")
	td.dyndns2("nas3", tok3, deviceFQDN("nas3"), "198.51.100.3", "good 198.51.100.3")
	if code, body := td.do(http.MethodDelete, "/v1/devices/nas3", td.Admin, nil); code != http.StatusNoContent {
		t.Fatalf("DELETE nas3: HTTP %d %s", code, body)
	}
	admin := td.Admin

	td.restart()

	if td.Admin != admin {
		t.Errorf("admin token changed across restart: the operator's saved token stopped working")
	}
	td.wantAnswer("udp", deviceFQDN("nas1"), dns.TypeA, netip.MustParseAddr("203.0.113.1"))
	td.wantAnswer("tcp", deviceFQDN("nas1"), dns.TypeAAAA, netip.MustParseAddr("2001:db8::1"))
	// The device token still works and the server still knows the address:
	// the same update is "nochg", not "good".
	td.dyndns2("nas1", tok1, deviceFQDN("nas1"), "203.0.113.1", "nochg 203.0.113.1")

	if d := td.deviceJSON("nas2"); d["ddns"] != false || d["ipv4"] != "198.51.100.2" {
		t.Errorf("nas2 after restart: ddns=%v ipv4=%v, want ddns=false ipv4=198.51.100.2", d["ddns"], d["ipv4"])
	}

	td.wantNXDOMAIN("udp", deviceFQDN("nas3"), dns.TypeA)
	if code, body, _ := dyndns2Update(context.Background(), http.DefaultClient, td.HTTP, "nas3", tok3, deviceFQDN("nas3"), "198.51.100.33"); code != http.StatusUnauthorized || body != "badauth\n" {
		t.Errorf("update of deleted nas3 after restart: HTTP %d %q, want 401 badauth", code, body)
	}
	code, body := td.do(http.MethodGet, "/v1/devices", td.Admin, nil)
	var list struct{ Devices []struct{ Name string } }
	if err := json.Unmarshal(body, &list); code != http.StatusOK || err != nil {
		t.Fatalf("list after restart: HTTP %d %s", code, body)
	}
	var names []string
	for _, d := range list.Devices {
		names = append(names, d.Name)
	}
	if strings.Join(names, ",") != "nas1,nas2" {
		t.Errorf("devices after restart: %v, want [nas1 nas2]", names)
	}
}

func TestE2EDDNSOffSurvivesRestart(t *testing.T) {
	td := startTestDaemon(t)
	tok := td.addDevice("nas1")
	td.dyndns2("nas1", tok, deviceFQDN("nas1"), "198.51.100.2", "good 198.51.100.2")
	if code, body := td.do(http.MethodPatch, "/v1/devices/nas1", tok, map[string]bool{"ddns": false}); code != http.StatusOK {
		t.Fatalf("PATCH nas1 ddns=false: HTTP %d %s", code, body)
	}
	td.wantNXDOMAIN("udp", deviceFQDN("nas1"), dns.TypeA)

	td.restart()

	// The owner hid the name; a server restart must not publish it again.
	td.wantNXDOMAIN("udp", deviceFQDN("nas1"), dns.TypeA)
	td.wantNXDOMAIN("tcp", deviceFQDN("nas1"), dns.TypeAAAA)
	if code, body := td.do(http.MethodPatch, "/v1/devices/nas1", tok, map[string]bool{"ddns": true}); code != http.StatusOK {
		t.Fatalf("PATCH nas1 ddns=true: HTTP %d %s", code, body)
	}
	td.wantAnswer("udp", deviceFQDN("nas1"), dns.TypeA, netip.MustParseAddr("198.51.100.2"))
}

// e2eAddr is the distinct IPv4 address device i gets in the concurrency test:
// 198.18.0.0/15 is set aside for benchmarks (RFC 2544).
func e2eAddr(i int) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], (198<<24|18<<16)+uint32(i))
	return netip.AddrFrom4(b)
}

// onWorkers runs f(i) for i in [0, n) on workers goroutines and returns the
// first errors (at most 10).
func onWorkers(n, workers int, f func(i int) error) []error {
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
		next = make(chan int)
	)
	for range workers {
		wg.Go(func() {
			for i := range next {
				if err := f(i); err != nil {
					mu.Lock()
					if len(errs) < 10 {
						errs = append(errs, err)
					}
					mu.Unlock()
				}
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return errs
}

func TestE2EThousandDevicesUpdatedConcurrently(t *testing.T) {
	const devices, workers = 1000, 50
	td := startTestDaemon(t)
	tr := &http.Transport{MaxIdleConnsPerHost: workers}
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr, Timeout: 20 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	name := func(i int) string { return fmt.Sprintf("dev%04d", i) }

	tokens := make([]string, devices)
	start := time.Now()
	errs := onWorkers(devices, workers, func(i int) (err error) {
		tokens[i], err = createDevice(ctx, client, td.HTTP, td.Admin, name(i))
		return err
	})
	if len(errs) > 0 {
		t.Fatalf("creating %d devices from %d goroutines: %v", devices, workers, errors.Join(errs...))
	}
	created := time.Since(start)

	start = time.Now()
	errs = onWorkers(devices, workers, func(i int) error {
		ip := e2eAddr(i).String()
		code, body, err := dyndns2Update(ctx, client, td.HTTP, name(i), tokens[i], deviceFQDN(name(i)), ip)
		if err != nil {
			return fmt.Errorf("%s: %w", name(i), err)
		}
		if code != http.StatusOK || body != "good "+ip+"\n" {
			return fmt.Errorf("%s myip=%s: HTTP %d %q, want 200 %q", name(i), ip, code, body, "good "+ip)
		}
		return nil
	})
	if len(errs) > 0 {
		t.Fatalf("updating %d devices from %d goroutines: %v", devices, workers, errors.Join(errs...))
	}
	updated := time.Since(start)

	// Every device answers with its own address, over UDP and TCP alternately,
	// also asked concurrently.
	start = time.Now()
	errs = onWorkers(devices, workers/5, func(i int) error {
		c := &dns.Client{Net: []string{"udp", "tcp"}[i%2], Timeout: 5 * time.Second}
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(deviceFQDN(name(i))), dns.TypeA)
		r, _, err := c.ExchangeContext(ctx, m, td.DNS)
		if err != nil {
			return fmt.Errorf("%s over %s: %w", name(i), c.Net, err)
		}
		if err := checkAnswer(r, dns.TypeA, e2eAddr(i)); err != nil {
			return fmt.Errorf("%s over %s: %w", name(i), c.Net, err)
		}
		return nil
	})
	if len(errs) > 0 {
		t.Fatalf("DNS after concurrent updates: %v", errors.Join(errs...))
	}
	t.Logf("%d devices, %d goroutines: create %v, dyndns2 update %v, DNS check %v", devices, workers, created, updated, time.Since(start))
}

func TestE2EUpdateVisibleInNextQuery(t *testing.T) {
	td := startTestDaemon(t)
	tok := td.addDevice("nas1")
	for i := 1; i <= 50; i++ {
		v4 := netip.AddrFrom4([4]byte{198, 51, 100, byte(i)})
		v6 := netip.MustParseAddr(fmt.Sprintf("2001:db8::%x", i))
		td.dyndns2("nas1", tok, deviceFQDN("nas1"), v4.String()+","+v6.String(), "good "+v4.String()+","+v6.String())
		// No sleep: the store acknowledges only what the DNS index already shows.
		td.wantAnswer("udp", deviceFQDN("nas1"), dns.TypeA, v4)
		td.wantAnswer("tcp", deviceFQDN("nas1"), dns.TypeA, v4)
		td.wantAnswer([]string{"udp", "tcp"}[i%2], deviceFQDN("nas1"), dns.TypeAAAA, v6)
	}
}

func TestE2EDeleteMakesNameNXDOMAINInNextQuery(t *testing.T) {
	td := startTestDaemon(t)
	for _, n := range []string{"nas1", "nas2"} {
		tok := td.addDevice(n)
		td.dyndns2(n, tok, deviceFQDN(n), "203.0.113.7", "good 203.0.113.7")
		td.wantAnswer("udp", deviceFQDN(n), dns.TypeA, netip.MustParseAddr("203.0.113.7"))
		// The admin deletes nas1; the owner of nas2 deletes it with its own token.
		by := td.Admin
		if n == "nas2" {
			by = tok
		}
		if code, body := td.do(http.MethodDelete, "/v1/devices/"+n, by, nil); code != http.StatusNoContent {
			t.Fatalf("DELETE %s: HTTP %d %s", n, code, body)
		}
		td.wantNXDOMAIN("udp", deviceFQDN(n), dns.TypeA)
		td.wantNXDOMAIN("tcp", deviceFQDN(n), dns.TypeA)
		td.wantNXDOMAIN("udp", deviceFQDN(n), dns.TypeAAAA)
		code, body, err := dyndns2Update(context.Background(), http.DefaultClient, td.HTTP, n, tok, deviceFQDN(n), "203.0.113.8")
		if err != nil || code != http.StatusUnauthorized || body != "badauth\n" {
			t.Fatalf("update of deleted %s: HTTP %d %q %v, want 401 badauth", n, code, body, err)
		}
		td.wantNXDOMAIN("udp", deviceFQDN(n), dns.TypeA)
	}
}

func TestE2EDDNSSwitchHidesAndRestoresName(t *testing.T) {
	td := startTestDaemon(t)
	tok := td.addDevice("nas1")
	td.dyndns2("nas1", tok, deviceFQDN("nas1"), "203.0.113.5", "good 203.0.113.5")
	patch := func(on bool) {
		t.Helper()
		code, body := td.do(http.MethodPatch, "/v1/devices/nas1", tok, map[string]bool{"ddns": on})
		if code != http.StatusOK || !bytes.Contains(body, []byte(fmt.Sprintf(`"ddns":%v`, on))) {
			t.Fatalf("PATCH ddns=%v: HTTP %d %s", on, code, body)
		}
	}

	patch(false)
	td.wantNXDOMAIN("udp", deviceFQDN("nas1"), dns.TypeA)
	td.wantNXDOMAIN("tcp", deviceFQDN("nas1"), dns.TypeA)
	// The NAS keeps updating while hidden; the name stays hidden, and the
	// address it reported is what answers once the owner turns DDNS back on.
	td.dyndns2("nas1", tok, deviceFQDN("nas1"), "203.0.113.6", "good 203.0.113.6")
	td.wantNXDOMAIN("udp", deviceFQDN("nas1"), dns.TypeA)

	patch(true)
	td.wantAnswer("udp", deviceFQDN("nas1"), dns.TypeA, netip.MustParseAddr("203.0.113.6"))
	td.wantAnswer("tcp", deviceFQDN("nas1"), dns.TypeA, netip.MustParseAddr("203.0.113.6"))

	patch(false)
	td.wantNXDOMAIN("udp", deviceFQDN("nas1"), dns.TypeA)
	patch(true)
	td.wantAnswer("udp", deviceFQDN("nas1"), dns.TypeA, netip.MustParseAddr("203.0.113.6"))
}

func TestE2EShutdownLeavesPrivateTokenAndClosesPorts(t *testing.T) {
	td := startTestDaemon(t)
	td.addDevice("nas1")
	token, dnsAddr, httpAddr := td.Admin, td.DNS, strings.TrimPrefix(td.HTTP, "http://")
	td.stop()

	file := filepath.Join(td.Dir, daemon.AdminTokenFile)
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatalf("admin token file after shutdown: %v", err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600 (only the daemon's user may read it)", file, fi.Mode().Perm())
	}
	if b, _ := os.ReadFile(file); strings.TrimSpace(string(b)) != token {
		t.Errorf("%s holds %q, want the token the daemon used", file, b)
	}
	if fi, err := os.Stat(filepath.Join(td.Dir, store.FileName)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("database file after shutdown: %v %v, want mode 0600", fi, err)
	}
	for _, addr := range []string{dnsAddr, httpAddr} {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			t.Errorf("%s still accepts connections after shutdown", addr)
		}
	}

	// The next start reads the same token back and serves the same devices.
	td.start()
	if td.Admin != token {
		t.Errorf("admin token after restart differs from %s", file)
	}
	if code, body := td.do(http.MethodGet, "/v1/devices/nas1", td.Admin, nil); code != http.StatusOK {
		t.Errorf("nas1 after restart: HTTP %d %s", code, body)
	}
}

// A service manager may stop the daemon the moment it has started (a failed
// unit dependency, an operator's quick restart): shutdown must still return,
// and free the ports and the database.
func TestE2EShutdownRightAfterStartReturns(t *testing.T) {
	dir := t.TempDir()
	cfg := daemon.Config{
		DataDir: dir, Zone: e2eZone, DNSAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
	}
	for i := range 20 {
		d, err := daemon.New(cfg)
		if err != nil {
			t.Fatalf("start %d: %v", i, err)
		}
		httpAddr := d.Addrs().HTTP.String()
		done := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			done <- d.Shutdown(ctx)
		}()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("shutdown %d right after start: %v", i, err)
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("shutdown %d right after start has not returned after 15s", i)
		}
		if c, err := net.DialTimeout("tcp", httpAddr, time.Second); err == nil {
			c.Close()
			t.Fatalf("HTTP API %s still accepts connections after shutdown %d", httpAddr, i)
		}
	}
}

func TestE2EAdminTokenFromFlagIsNotWritten(t *testing.T) {
	const given = "operator-chosen-admin-token-0123"
	td := startTestDaemon(t, func(c *daemon.Config) { c.AdminToken = given })
	if td.Admin != given {
		t.Fatalf("daemon uses admin token %q, want the given one", td.Admin)
	}
	td.addDevice("nas1")
	td.stop()
	if _, err := os.Stat(filepath.Join(td.Dir, daemon.AdminTokenFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s exists (%v) although the token came from the command line; it must not be copied to disk", daemon.AdminTokenFile, err)
	}
}

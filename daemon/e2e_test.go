package daemon_test

// End-to-end tests of the whole daemon: the store, the DNS server and the
// HTTP API wired by daemon.New (started by daemontest), driven over real
// loopback sockets the way a NAS, an operator's tools and a resolver drive
// them. The device CLI's own test is in cmd/nasreach.

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
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/daemon"
	"github.com/nasreach/nasreach/daemon/daemontest"
	"github.com/nasreach/nasreach/store"
	"github.com/rs/zerolog"
)

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

// deviceJSON fetches a device's JSON as admin.
func deviceJSON(td *daemontest.Daemon, name string) map[string]any {
	td.T.Helper()
	code, body := td.Do(http.MethodGet, "/v1/devices/"+name, td.Admin, nil)
	if code != http.StatusOK {
		td.T.Fatalf("GET device %s: HTTP %d %s", name, code, body)
	}
	var out map[string]any
	if err := json.Unmarshal(body, &out); err != nil {
		td.T.Fatalf("GET device %s: %v in %s", name, err, body)
	}
	return out
}

func TestE2EDevicesAndAddressesSurviveRestart(t *testing.T) {
	td := daemontest.Start(t)
	tok1 := td.AddDevice("nas1")
	td.DynDNS2("nas1", tok1, daemontest.FQDN("nas1"), "203.0.113.1,2001:db8::1", "good 203.0.113.1,2001:db8::1")
	tok2 := td.AddDevice("nas2")
	td.DynDNS2("nas2", tok2, daemontest.FQDN("nas2"), "198.51.100.2", "good 198.51.100.2")
	if code, body := td.Do(http.MethodPatch, "/v1/devices/nas2", td.Admin, map[string]bool{"ddns": false}); code != http.StatusOK {
		t.Fatalf("PATCH nas2 ddns=false: HTTP %d %s", code, body)
	}
	tok3 := td.AddDevice("nas3")
	td.DynDNS2("nas3", tok3, daemontest.FQDN("nas3"), "198.51.100.3", "good 198.51.100.3")
	if code, body := td.Do(http.MethodDelete, "/v1/devices/nas3", td.Admin, nil); code != http.StatusNoContent {
		t.Fatalf("DELETE nas3: HTTP %d %s", code, body)
	}
	admin := td.Admin

	td.Restart()

	if td.Admin != admin {
		t.Errorf("admin token changed across restart: the operator's saved token stopped working")
	}
	td.WantAnswer("udp", daemontest.FQDN("nas1"), dns.TypeA, netip.MustParseAddr("203.0.113.1"))
	td.WantAnswer("tcp", daemontest.FQDN("nas1"), dns.TypeAAAA, netip.MustParseAddr("2001:db8::1"))
	// The device token still works and the server still knows the address:
	// the same update is "nochg", not "good".
	td.DynDNS2("nas1", tok1, daemontest.FQDN("nas1"), "203.0.113.1", "nochg 203.0.113.1")

	if d := deviceJSON(td, "nas2"); d["ddns"] != false || d["ipv4"] != "198.51.100.2" {
		t.Errorf("nas2 after restart: ddns=%v ipv4=%v, want ddns=false ipv4=198.51.100.2", d["ddns"], d["ipv4"])
	}

	td.WantNXDOMAIN("udp", daemontest.FQDN("nas3"), dns.TypeA)
	if code, body, _ := daemontest.DynDNS2Update(context.Background(), http.DefaultClient, td.HTTP, "nas3", tok3, daemontest.FQDN("nas3"), "198.51.100.33"); code != http.StatusUnauthorized || body != "badauth\n" {
		t.Errorf("update of deleted nas3 after restart: HTTP %d %q, want 401 badauth", code, body)
	}
	code, body := td.Do(http.MethodGet, "/v1/devices", td.Admin, nil)
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
	td := daemontest.Start(t)
	tok := td.AddDevice("nas1")
	td.DynDNS2("nas1", tok, daemontest.FQDN("nas1"), "198.51.100.2", "good 198.51.100.2")
	if code, body := td.Do(http.MethodPatch, "/v1/devices/nas1", tok, map[string]bool{"ddns": false}); code != http.StatusOK {
		t.Fatalf("PATCH nas1 ddns=false: HTTP %d %s", code, body)
	}
	td.WantNXDOMAIN("udp", daemontest.FQDN("nas1"), dns.TypeA)

	td.Restart()

	// The owner hid the name; a server restart must not publish it again.
	td.WantNXDOMAIN("udp", daemontest.FQDN("nas1"), dns.TypeA)
	td.WantNXDOMAIN("tcp", daemontest.FQDN("nas1"), dns.TypeAAAA)
	if code, body := td.Do(http.MethodPatch, "/v1/devices/nas1", tok, map[string]bool{"ddns": true}); code != http.StatusOK {
		t.Fatalf("PATCH nas1 ddns=true: HTTP %d %s", code, body)
	}
	td.WantAnswer("udp", daemontest.FQDN("nas1"), dns.TypeA, netip.MustParseAddr("198.51.100.2"))
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
	td := daemontest.Start(t)
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
		code, body, err := daemontest.DynDNS2Update(ctx, client, td.HTTP, name(i), tokens[i], daemontest.FQDN(name(i)), ip)
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
		m.SetQuestion(dns.Fqdn(daemontest.FQDN(name(i))), dns.TypeA)
		r, _, err := c.ExchangeContext(ctx, m, td.DNS)
		if err != nil {
			return fmt.Errorf("%s over %s: %w", name(i), c.Net, err)
		}
		if err := daemontest.CheckAnswer(r, dns.TypeA, e2eAddr(i)); err != nil {
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
	td := daemontest.Start(t)
	tok := td.AddDevice("nas1")
	for i := 1; i <= 50; i++ {
		v4 := netip.AddrFrom4([4]byte{198, 51, 100, byte(i)})
		v6 := netip.MustParseAddr(fmt.Sprintf("2001:db8::%x", i))
		td.DynDNS2("nas1", tok, daemontest.FQDN("nas1"), v4.String()+","+v6.String(), "good "+v4.String()+","+v6.String())
		// No sleep: the store acknowledges only what the DNS index already shows.
		td.WantAnswer("udp", daemontest.FQDN("nas1"), dns.TypeA, v4)
		td.WantAnswer("tcp", daemontest.FQDN("nas1"), dns.TypeA, v4)
		td.WantAnswer([]string{"udp", "tcp"}[i%2], daemontest.FQDN("nas1"), dns.TypeAAAA, v6)
	}
}

func TestE2EDeleteMakesNameNXDOMAINInNextQuery(t *testing.T) {
	td := daemontest.Start(t)
	for _, n := range []string{"nas1", "nas2"} {
		tok := td.AddDevice(n)
		td.DynDNS2(n, tok, daemontest.FQDN(n), "203.0.113.7", "good 203.0.113.7")
		td.WantAnswer("udp", daemontest.FQDN(n), dns.TypeA, netip.MustParseAddr("203.0.113.7"))
		// The admin deletes nas1; the owner of nas2 deletes it with its own token.
		by := td.Admin
		if n == "nas2" {
			by = tok
		}
		if code, body := td.Do(http.MethodDelete, "/v1/devices/"+n, by, nil); code != http.StatusNoContent {
			t.Fatalf("DELETE %s: HTTP %d %s", n, code, body)
		}
		td.WantNXDOMAIN("udp", daemontest.FQDN(n), dns.TypeA)
		td.WantNXDOMAIN("tcp", daemontest.FQDN(n), dns.TypeA)
		td.WantNXDOMAIN("udp", daemontest.FQDN(n), dns.TypeAAAA)
		code, body, err := daemontest.DynDNS2Update(context.Background(), http.DefaultClient, td.HTTP, n, tok, daemontest.FQDN(n), "203.0.113.8")
		if err != nil || code != http.StatusUnauthorized || body != "badauth\n" {
			t.Fatalf("update of deleted %s: HTTP %d %q %v, want 401 badauth", n, code, body, err)
		}
		td.WantNXDOMAIN("udp", daemontest.FQDN(n), dns.TypeA)
	}
}

func TestE2EDDNSSwitchHidesAndRestoresName(t *testing.T) {
	td := daemontest.Start(t)
	tok := td.AddDevice("nas1")
	td.DynDNS2("nas1", tok, daemontest.FQDN("nas1"), "203.0.113.5", "good 203.0.113.5")
	patch := func(on bool) {
		t.Helper()
		code, body := td.Do(http.MethodPatch, "/v1/devices/nas1", tok, map[string]bool{"ddns": on})
		if code != http.StatusOK || !bytes.Contains(body, []byte(fmt.Sprintf(`"ddns":%v`, on))) {
			t.Fatalf("PATCH ddns=%v: HTTP %d %s", on, code, body)
		}
	}

	patch(false)
	td.WantNXDOMAIN("udp", daemontest.FQDN("nas1"), dns.TypeA)
	td.WantNXDOMAIN("tcp", daemontest.FQDN("nas1"), dns.TypeA)
	// The NAS keeps updating while hidden; the name stays hidden, and the
	// address it reported is what answers once the owner turns DDNS back on.
	td.DynDNS2("nas1", tok, daemontest.FQDN("nas1"), "203.0.113.6", "good 203.0.113.6")
	td.WantNXDOMAIN("udp", daemontest.FQDN("nas1"), dns.TypeA)

	patch(true)
	td.WantAnswer("udp", daemontest.FQDN("nas1"), dns.TypeA, netip.MustParseAddr("203.0.113.6"))
	td.WantAnswer("tcp", daemontest.FQDN("nas1"), dns.TypeA, netip.MustParseAddr("203.0.113.6"))

	patch(false)
	td.WantNXDOMAIN("udp", daemontest.FQDN("nas1"), dns.TypeA)
	patch(true)
	td.WantAnswer("udp", daemontest.FQDN("nas1"), dns.TypeA, netip.MustParseAddr("203.0.113.6"))
}

func TestE2EShutdownLeavesPrivateTokenAndClosesPorts(t *testing.T) {
	td := daemontest.Start(t)
	td.AddDevice("nas1")
	token, dnsAddr, httpAddr := td.Admin, td.DNS, strings.TrimPrefix(td.HTTP, "http://")
	td.Stop()

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
	td.Restart()
	if td.Admin != token {
		t.Errorf("admin token after restart differs from %s", file)
	}
	if code, body := td.Do(http.MethodGet, "/v1/devices/nas1", td.Admin, nil); code != http.StatusOK {
		t.Errorf("nas1 after restart: HTTP %d %s", code, body)
	}
}

// A service manager may stop the daemon the moment it has started (a failed
// unit dependency, an operator's quick restart): shutdown must still return,
// and free the ports and the database.
func TestE2EShutdownRightAfterStartReturns(t *testing.T) {
	dir := t.TempDir()
	cfg := daemon.Config{
		DataDir: dir, Zone: daemontest.Zone, DNSAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
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
	td := daemontest.Start(t, func(c *daemon.Config) { c.AdminToken = given })
	if td.Admin != given {
		t.Fatalf("daemon uses admin token %q, want the given one", td.Admin)
	}
	td.AddDevice("nas1")
	td.Stop()
	if _, err := os.Stat(filepath.Join(td.Dir, daemon.AdminTokenFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s exists (%v) although the token came from the command line; it must not be copied to disk", daemon.AdminTokenFile, err)
	}
}

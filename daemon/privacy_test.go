package daemon_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/daemon"
	"github.com/nasreach/nasreach/daemon/daemontest"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/store"
	bolt "go.etcd.io/bbolt"
)

// withClock makes c the daemon's clock.
func withClock(c *testutil.Clock) func(*daemon.Config) {
	return func(cfg *daemon.Config) { cfg.Now = c.Now }
}

// dumpStore stops the daemon and returns every bucket/key/value of its bbolt
// file, read directly from disk.
func dumpStore(t *testing.T, td *daemontest.Daemon) map[string]map[string][]byte {
	t.Helper()
	td.Stop()
	db, err := bolt.Open(filepath.Join(td.Dir, store.FileName), 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	out := map[string]map[string][]byte{}
	err = db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			kv := map[string][]byte{}
			out[string(name)] = kv
			return b.ForEach(func(k, v []byte) error {
				kv[string(k)] = bytes.Clone(v)
				return nil
			})
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// mentions reports every place in the dump where needle occurs.
func mentions(dump map[string]map[string][]byte, needle string) []string {
	var where []string
	for b, kv := range dump {
		for k, v := range kv {
			if strings.Contains(k, needle) || bytes.Contains(v, []byte(needle)) {
				where = append(where, b+"/"+k)
			}
		}
	}
	return where
}

func TestUnregisterDeletesEverythingAtOnce(t *testing.T) {
	td := daemontest.Start(t)
	token := td.AddDevice("gone")
	keep := td.AddDevice("kept")
	if code, body := td.Do(http.MethodPut, "/v1/devices/gone/address", token, map[string]string{"ipv4": "198.51.100.23", "ipv6": "2001:db8:77::23"}); code != http.StatusOK {
		t.Fatalf("address: %d %s", code, body)
	}
	if _, err := td.Daemon.Store().SetPublicKey(context.Background(), "gone", "MCowBQYDK2VwAyEAgonekey"); err != nil {
		t.Fatal(err)
	}
	_, code, err := td.Daemon.Store().AddAccessCode(context.Background(), "gone")
	if err != nil {
		t.Fatal(err)
	}
	challenge := strings.Repeat("G", 43)
	if code, body := td.Do(http.MethodPut, "/v1/devices/gone/acme-challenge", token, map[string][]string{"values": {challenge}}); code != http.StatusOK {
		t.Fatalf("acme challenge: %d %s", code, body)
	}
	key := td.IssueTSIGKey("gone", token)
	if code, _ := td.Do(http.MethodDelete, "/v1/devices/gone", token, nil); code != http.StatusNoContent {
		t.Fatalf("delete: HTTP %d", code)
	}
	// DNS, the API and the device's own token forget it in the next request.
	if r := td.Query("udp", "gone.myqnapcloud.com", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Errorf("deleted device answers %s, want NXDOMAIN", dns.RcodeToString[r.Rcode])
	}
	if r := td.Query("udp", "_acme-challenge.gone.myqnapcloud.com", dns.TypeTXT); r.Rcode != dns.RcodeNameError {
		t.Errorf("deleted device's acme challenge answers %s, want NXDOMAIN", dns.RcodeToString[r.Rcode])
	}
	if code, _ := td.Do(http.MethodGet, "/v1/devices/gone", td.Admin, nil); code != http.StatusNotFound {
		t.Errorf("admin GET of deleted device: HTTP %d, want 404", code)
	}
	if code, _ := td.Do(http.MethodGet, "/v1/devices/gone", token, nil); code != http.StatusUnauthorized {
		t.Errorf("deleted device's token still works: HTTP %d", code)
	}
	dump := dumpStore(t, td)
	for _, needle := range []string{"198.51.100.23", "2001:db8:77::23", store.HashToken(token), "gonekey", store.HashToken(code), challenge, key.Secret} {
		if w := mentions(dump, needle); len(w) > 0 {
			t.Errorf("%q still stored at %v", needle, w)
		}
	}
	// Only the quarantine keeps the bare name (and the deletion time).
	if w := mentions(dump, "gone"); !slices.Equal(w, []string{"quarantine/gone"}) || len(dump["quarantine"]["gone"]) != 8 {
		t.Errorf("the deleted name is stored at %v, want only quarantine/gone with a time", w)
	}
	if len(mentions(dump, store.HashToken(keep))) != 1 {
		t.Error("the other device was harmed by the deletion")
	}
}

func TestDeletedNameIsQuarantinedThenFree(t *testing.T) {
	clk := testutil.NewClock(time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC))
	td := daemontest.Start(t, withClock(clk))
	token := td.AddDevice("nas1")
	td.Do(http.MethodDelete, "/v1/devices/nas1", token, nil)
	code, body := td.Do(http.MethodPost, "/v1/devices", td.Admin, map[string]string{"name": "nas1"})
	if code != http.StatusConflict || !strings.Contains(string(body), "quarantine") {
		t.Fatalf("re-registering a just-deleted name: HTTP %d %s, want 409 quarantined", code, body)
	}
	clk.Advance(23 * time.Hour)
	if code, _ := td.Do(http.MethodPost, "/v1/devices", td.Admin, map[string]string{"name": "nas1"}); code != http.StatusConflict {
		t.Fatalf("after 23h: HTTP %d, want 409", code)
	}
	clk.Advance(time.Hour)
	if code, body := td.Do(http.MethodPost, "/v1/devices", td.Admin, map[string]string{"name": "nas1"}); code != http.StatusCreated {
		t.Fatalf("after 24h: HTTP %d %s, want 201", code, body)
	}
}

func TestUninitializedDeviceExpiresWithAllItsData(t *testing.T) {
	clk := testutil.NewClock(time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC))
	td := daemontest.Start(t, withClock(clk))
	create := func(name string) string {
		code, body := td.Do(http.MethodPost, "/v1/devices", td.Admin, map[string]string{"name": name, "state": "uninitialized"})
		if code != http.StatusCreated {
			t.Fatalf("create uninitialized %s: HTTP %d %s", name, code, body)
		}
		var out struct{ Token string }
		json.Unmarshal(body, &out)
		return out.Token
	}
	orphan := create("orphan")
	owned := create("owned")
	td.Do(http.MethodPut, "/v1/devices/orphan/address", orphan, map[string]string{"ipv4": "203.0.113.41"})
	if code, _ := td.Do(http.MethodPatch, "/v1/devices/owned", owned, map[string]string{"state": "active"}); code != http.StatusOK {
		t.Fatalf("activate: HTTP %d", code)
	}
	sweep := func() int {
		n, err := td.Daemon.Store().Sweep(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	clk.Advance(24*time.Hour - time.Second)
	if n := sweep(); n != 0 {
		t.Fatalf("swept %d devices before 24 hours", n)
	}
	if r := td.Query("udp", "orphan.myqnapcloud.com", dns.TypeA); len(r.Answer) != 1 {
		t.Fatal("uninitialized device does not resolve before expiry")
	}
	clk.Advance(time.Second)
	if n := sweep(); n != 1 {
		t.Fatalf("swept %d devices at 24 hours, want 1", n)
	}
	if r := td.Query("udp", "orphan.myqnapcloud.com", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Errorf("expired device answers %s", dns.RcodeToString[r.Rcode])
	}
	if r := td.Query("udp", "owned.myqnapcloud.com", dns.TypeSOA); r.Rcode != dns.RcodeSuccess {
		t.Errorf("activated device expired too: %s", dns.RcodeToString[r.Rcode])
	}
	dump := dumpStore(t, td)
	for _, needle := range []string{"orphan", "203.0.113.41", store.HashToken(orphan)} {
		if w := mentions(dump, needle); len(w) > 0 {
			t.Errorf("%q remains after expiry at %v", needle, w)
		}
	}
}

func TestExportHoldsEverythingStored(t *testing.T) {
	td := daemontest.Start(t)
	token := td.AddDevice("nas1")
	td.Do(http.MethodPut, "/v1/devices/nas1/address", token, map[string]string{"ipv4": "198.51.100.5", "ipv6": "2001:db8::5"})
	td.Do(http.MethodPatch, "/v1/devices/nas1", token, map[string]any{"link": false, "access": "token"})
	if _, _, err := td.Daemon.Store().AddAccessCode(context.Background(), "nas1"); err != nil {
		t.Fatal(err)
	}
	td.Do(http.MethodPut, "/v1/devices/nas1/acme-challenge", token, map[string][]string{"values": {strings.Repeat("E", 43)}})
	key := td.IssueTSIGKey("nas1", token)
	code, body := td.Do(http.MethodGet, "/v1/devices/nas1", token, nil)
	if code != http.StatusOK {
		t.Fatalf("export: HTTP %d", code)
	}
	var export map[string]any
	json.Unmarshal(body, &export)
	dump := dumpStore(t, td)
	var raw map[string]any
	if err := json.Unmarshal(dump["devices"]["nas1"], &raw); err != nil {
		t.Fatal(err)
	}
	if _, ok := raw["acme_challenges"]; !ok {
		t.Error("the acme challenge value was not stored: this test no longer covers it")
	}
	// The one exception: the TSIG key's secret, which the owner was shown
	// when it was issued, as the device token (whose hash is exported).
	if k, _ := raw["tsig_key"].(map[string]any); k["secret"] != key.Secret {
		t.Errorf("stored TSIG key %v, want the secret issued", k)
	} else {
		delete(k, "secret")
	}
	if strings.Contains(string(body), key.Secret) {
		t.Error("the export shows the TSIG key's secret")
	}
	for k, v := range raw {
		if got, ok := export[k]; !ok || !jsonEqual(got, v) {
			t.Errorf("stored field %q = %v is missing from the owner's export (got %v)", k, v, got)
		}
	}
	// Every other bucket's entries about the device are in the export too.
	codes, _ := export["access_codes"].([]any)
	var stored []any
	for k, v := range dump["access_codes"] {
		if strings.HasPrefix(k, "nas1/") {
			var c any
			json.Unmarshal(v, &c)
			stored = append(stored, c)
		}
	}
	if len(stored) != 1 || !jsonEqual(codes, stored) {
		t.Errorf("stored access codes %v, exported %v", stored, codes)
	}
}

func jsonEqual(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}

// documentedFields reads the README's "What we store" table: its first
// column holds `bucket` or `bucket.field` names in backquotes.
func documentedFields(t *testing.T) map[string]bool {
	t.Helper()
	section := whatWeStore(t)
	out := map[string]bool{}
	name := regexp.MustCompile("`([a-z0-9_.]+)`")
	for _, line := range strings.Split(section, "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 3 {
			continue
		}
		for _, m := range name.FindAllStringSubmatch(cells[1], -1) {
			out[m[1]] = true
		}
	}
	return out
}

// whatWeStore returns the README's "What we store" section.
func whatWeStore(t *testing.T) string {
	t.Helper()
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "## What we store")
	if !ok {
		t.Fatal(`README.md has no "## What we store" section`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	return section
}

func TestStoreHoldsOnlyDocumentedFields(t *testing.T) {
	clk := testutil.NewClock(time.Now().UTC())
	td := daemontest.Start(t, withClock(clk), func(c *daemon.Config) {
		c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	})
	// A realistic session: registrations, updates of both families through
	// dyndns2 and REST, switches, a deletion, a cloud install.
	token := td.AddDevice("nas1")
	other := td.AddDevice("nas2")
	td.Do(http.MethodPost, "/v1/devices", td.Admin, map[string]string{"name": "fresh", "state": "uninitialized"})
	req, _ := http.NewRequest(http.MethodGet, td.HTTP+"/nic/update?hostname=nas1.myqnapcloud.com&myip=198.51.100.9,2001:db8::9", nil)
	req.SetBasicAuth("nas1", token)
	req.Header.Set("X-Forwarded-For", "198.51.100.77")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	td.Do(http.MethodPatch, "/v1/devices/nas1", token, map[string]any{"ddns": false, "access": "token"})
	if _, err := td.Daemon.Store().SetPublicKey(context.Background(), "nas1", "MCowBQYDK2VwAyEAexample"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := td.Daemon.Store().AddAccessCode(context.Background(), "nas1"); err != nil {
		t.Fatal(err)
	}
	td.IssueTSIGKey("nas1", token)
	td.Do(http.MethodPut, "/v1/devices/nas1/acme-challenge", token, map[string][]string{"values": {strings.Repeat("D", 43)}})
	td.Do(http.MethodPut, "/v1/devices/nas2/address", other, nil)
	td.Do(http.MethodDelete, "/v1/devices/nas2", other, nil)

	documented := documentedFields(t)
	for bucket, kv := range dumpStore(t, td) {
		if !documented[bucket] {
			t.Errorf("bucket %q is not in the README's What we store table", bucket)
		}
		switch bucket {
		case "meta":
			for k := range kv {
				if !documented["meta."+k] {
					t.Errorf("meta key %q is not documented", k)
				}
			}
			continue
		case "quarantine":
			continue // name -> time, documented as a whole
		}
		for name, v := range kv {
			var rec map[string]json.RawMessage
			if err := json.Unmarshal(v, &rec); err != nil {
				t.Fatalf("device %s: %v", name, err)
			}
			for field := range rec {
				if !documented[bucket+"."+field] {
					t.Errorf("field %q of bucket %s is stored but not documented in the README", field, bucket)
				}
			}
		}
	}
}

func TestQueryLoggingIsOffByDefaultAndMaskedWhenOn(t *testing.T) {
	for _, on := range []bool{false, true} {
		td := daemontest.Start(t, func(c *daemon.Config) { c.Privacy.LogQueries = on })
		td.AddDevice("nas1")
		td.Query("udp", "nas1.myqnapcloud.com", dns.TypeA)
		td.Query("tcp", "unknown.myqnapcloud.com", dns.TypeAAAA)
		td.Stop()
		files, _ := filepath.Glob(filepath.Join(td.Dir, "logs", "conn-*.jsonl"))
		var all string
		for _, f := range files {
			b, _ := os.ReadFile(f)
			all += string(b)
		}
		n := strings.Count(all, `"service":"dns"`)
		switch {
		case !on && n != 0:
			t.Errorf("query logging is off by default, yet %d queries were logged", n)
		case on && (n != 2 || !strings.Contains(all, `"detail":"unknown.myqnapcloud.com AAAA"`) || !strings.Contains(all, `"outcome":"NXDOMAIN"`) || !strings.Contains(all, `"client":"127.0.0.0"`) || strings.Contains(all, "127.0.0.1")):
			t.Errorf("with --log-queries want two masked query events, got:\n%s", all)
		}
	}
}

package api

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/store"
)

const (
	testZone  = "example.com"
	testAdmin = "admin-token-0123456789abcdef"
)

// server is an API serving real HTTP on 127.0.0.1:0 over a real store.
type server struct {
	t     *testing.T
	st    *store.Store
	api   *API
	url   string          // http://127.0.0.1:port
	clock *testutil.Clock // shared by the store and the API
}

// startServer starts an API; mod adjusts its config first. Connections come
// from 127.0.0.1, which is a trusted proxy, so a test picks the client address
// it wants with X-Forwarded-For.
func startServer(t *testing.T, mod func(*Config)) *server {
	t.Helper()
	clk := testutil.NewClock(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	st, err := store.Open(store.Config{Dir: t.TempDir(), Now: clk.Now, SweepEvery: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	cfg := Config{
		Store: st, Zone: "Example.COM.", AdminToken: testAdmin, Now: clk.Now,
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
	}
	if mod != nil {
		mod(&cfg)
	}
	cfg.Addr = "127.0.0.1:0"
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := a.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return &server{t: t, st: st, api: a, url: "http://" + a.Addr().String(), clock: clk}
}

// device registers name directly in the store and returns its token.
func (s *server) device(name string) string {
	s.t.Helper()
	_, tok, err := s.st.Create(context.Background(), name, store.CreateOptions{})
	if err != nil {
		s.t.Fatal(err)
	}
	return tok
}

// req is one HTTP request; zero fields are left out.
type req struct {
	method, path string
	body         string // sent as is when not empty
	bearer       string
	basic        []string // user, password
	from         string   // client address, sent as X-Forwarded-For
	header       http.Header
}

type resp struct {
	code   int
	header http.Header
	body   string
}

func (s *server) do(r req) resp {
	s.t.Helper()
	var body io.Reader
	if r.body != "" {
		body = strings.NewReader(r.body)
	}
	hr, err := http.NewRequest(cmpOr(r.method, http.MethodGet), s.url+r.path, body)
	if err != nil {
		s.t.Fatal(err)
	}
	for k, vs := range r.header {
		hr.Header[k] = vs
	}
	if r.bearer != "" {
		hr.Header.Set("Authorization", "Bearer "+r.bearer)
	}
	if r.basic != nil {
		hr.SetBasicAuth(r.basic[0], r.basic[1])
	}
	if r.from != "" {
		hr.Header.Set("X-Forwarded-For", r.from)
	}
	res, err := http.DefaultClient.Do(hr)
	if err != nil {
		s.t.Fatalf("%s %s: %v", hr.Method, r.path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		s.t.Fatal(err)
	}
	return resp{res.StatusCode, res.Header, string(b)}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// wantError checks that r is status code with a one-line JSON {"error": …}
// whose reason contains every word in says, and returns the reason.
func wantError(t *testing.T, what string, r resp, code int, says ...string) string {
	t.Helper()
	if r.code != code {
		t.Errorf("%s: status %d, want %d (body %q)", what, r.code, code, r.body)
		return ""
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: Content-Type %q, want application/json", what, ct)
	}
	if strings.Count(strings.TrimSuffix(r.body, "\n"), "\n") != 0 {
		t.Errorf("%s: error body is not one line: %q", what, r.body)
	}
	var e map[string]string
	if err := json.Unmarshal([]byte(r.body), &e); err != nil || len(e) != 1 || e["error"] == "" {
		t.Errorf("%s: body %q is not {\"error\": reason}", what, r.body)
		return ""
	}
	for _, w := range says {
		if !strings.Contains(e["error"], w) {
			t.Errorf("%s: reason %q should say %q", what, e["error"], w)
		}
	}
	return e["error"]
}

// deviceOut is a device as the API shows it.
type deviceOut struct {
	store.Device
	FQDN string `json:"fqdn"`
}

func decodeDevice(t *testing.T, r resp) deviceOut {
	t.Helper()
	var d deviceOut
	if err := json.Unmarshal([]byte(r.body), &d); err != nil {
		t.Fatalf("body %q: %v", r.body, err)
	}
	return d
}

// TestDeviceJSONIsTheStoredRecordAndItsFQDN pins the device's JSON on the
// wire, which deployed agents and scripts decode: the stored record's keys in
// their order (the TSIG key without its secret), then the FQDN. Renaming a key breaks them; adding one to
// record.Device must add it here, knowingly.
func TestDeviceJSONIsTheStoredRecordAndItsFQDN(t *testing.T) {
	d := store.Device{
		Name: "nas1", TokenSHA256: "5e88", IPv4: netip.MustParseAddr("203.0.113.7"), IPv6: netip.MustParseAddr("2001:db8::7"),
		DDNS: true, Link: true, Access: store.AccessToken, State: store.StateUninitialized,
		Created: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC), Updated: time.Date(2026, 3, 2, 12, 0, 0, 5, time.UTC),
		PublicKey:      "MCowBQYDK2VwAyEA",
		ACMEChallenges: []store.ACMEChallenge{{Value: "abc", Expires: time.Date(2026, 3, 2, 13, 0, 0, 0, time.UTC)}},
		TSIGKey:        &store.TSIGKey{Algorithm: "hmac-sha256", Secret: []byte("never sent"), Created: time.Date(2026, 3, 3, 12, 0, 0, 0, time.UTC)},
	}
	v := reflect.ValueOf(d)
	for i := range v.NumField() {
		if v.Field(i).IsZero() {
			t.Fatalf("store.Device.%s is zero in this test; give it a value so that its key on the wire is pinned", v.Type().Field(i).Name)
		}
	}
	const want = `{"name":"nas1","token_sha256":"5e88","ipv4":"203.0.113.7","ipv6":"2001:db8::7",` +
		`"ddns":true,"link":true,"access":"token","state":"uninitialized",` +
		`"created":"2026-03-01T12:00:00Z","updated":"2026-03-02T12:00:00.000000005Z",` +
		`"public_key":"MCowBQYDK2VwAyEA","acme_challenges":[{"value":"abc","expires":"2026-03-02T13:00:00Z"}],` +
		`"tsig_key":{"algorithm":"hmac-sha256","created":"2026-03-03T12:00:00Z"},` +
		`"fqdn":"nas1.example.com"}`
	got, err := json.Marshal((&API{zone: "example.com"}).deviceJSON(d))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Errorf("the API sends\n%s\nwant\n%s", got, want)
	}
}

func TestNewRefusesIncompleteConfig(t *testing.T) {
	st, err := store.Open(store.Config{Dir: t.TempDir(), SweepEvery: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	cases := []struct {
		cfg  Config
		says string
	}{
		{Config{Zone: testZone, AdminToken: testAdmin}, "Store"},
		{Config{Store: st, AdminToken: testAdmin}, "Zone"},
		{Config{Store: st, Zone: ".", AdminToken: testAdmin}, "Zone"},
		{Config{Store: st, Zone: testZone, AdminToken: "short"}, "AdminToken"},
	}
	for _, c := range cases {
		a, err := New(c.cfg)
		if err == nil {
			a.Shutdown(context.Background())
			t.Errorf("New(%+v) succeeded", c.cfg)
			continue
		}
		if !strings.Contains(err.Error(), c.says) {
			t.Errorf("New error %q should name %s", err, c.says)
		}
	}
}

func TestRegisterDeviceReturnsNameFQDNAndAWorkingToken(t *testing.T) {
	s := startServer(t, nil)
	r := s.do(req{method: "POST", path: "/v1/devices", bearer: testAdmin, body: `{"name":"NAS1"}`})
	if r.code != http.StatusCreated {
		t.Fatalf("POST /v1/devices = %d %s", r.code, r.body)
	}
	var out map[string]string
	if err := json.Unmarshal([]byte(r.body), &out); err != nil {
		t.Fatal(err)
	}
	if len(out) != 3 || out["name"] != "nas1" || out["fqdn"] != "nas1.example.com" {
		t.Fatalf("POST /v1/devices = %s, want name nas1, fqdn nas1.example.com and a token", r.body)
	}
	if raw, err := base64.RawURLEncoding.DecodeString(out["token"]); err != nil || len(raw) < 16 {
		t.Fatalf("token %q is not at least 128 bits of URL-safe base64", out["token"])
	}
	if loc := r.header.Get("Location"); loc != "/v1/devices/nas1" {
		t.Errorf("Location = %q, want /v1/devices/nas1", loc)
	}
	if _, ok := s.st.Lookup("nas1"); !ok {
		t.Error("a registered device does not resolve")
	}
	if g := s.do(req{path: "/v1/devices/nas1", bearer: out["token"]}); g.code != http.StatusOK {
		t.Errorf("GET with the new token = %d %s", g.code, g.body)
	}
}

func TestRegisterRefusalsSayWhy(t *testing.T) {
	s := startServer(t, nil)
	s.device("taken")
	cases := []struct {
		what string
		body string
		code int
		says []string
	}{
		{"taken name", `{"name":"taken"}`, 409, []string{"taken"}},
		{"taken name in capitals", `{"name":"TAKEN"}`, 409, []string{"taken"}},
		{"leading hyphen", `{"name":"-nas"}`, 400, []string{"invalid", "start or end"}},
		{"underscore", `{"name":"nas_1"}`, 400, []string{"invalid", "letters"}},
		{"dotted", `{"name":"a.b"}`, 400, []string{"invalid"}},
		{"too long", `{"name":"` + strings.Repeat("n", 64) + `"}`, 400, []string{"1 to 63"}},
		{"reserved ns1", `{"name":"ns1"}`, 400, []string{"reserved"}},
		{"reserved www", `{"name":"WWW"}`, 400, []string{"reserved"}},
		{"reserved acme", `{"name":"_acme-challenge"}`, 400, []string{"reserved"}},
		{"underscore label", `{"name":"_dmarc"}`, 400, []string{"reserved"}},
		{"reserved localhost", `{"name":"localhost"}`, 400, []string{`"localhost": name is reserved`}},
		{"reserved wpad", `{"name":"WPAD"}`, 400, []string{`"wpad": name is reserved`}},
		{"reserved hostmaster", `{"name":"hostmaster"}`, 400, []string{`"hostmaster": name is reserved`}},
		{"reserved autodiscover", `{"name":"autodiscover"}`, 400, []string{`"autodiscover": name is reserved`}},
		{"Kelvin sign is not folded to k", `{"name":"NAS\u212a"}`, 400, []string{`"nas\u212a": invalid device name`, "punycode form xn--", "not valid IDNA"}},
		{"IDN in Unicode", `{"name":"M\u00fcller"}`, 400, []string{`"m\u00fcller": invalid device name`, `here "xn--mller-kva"`}},
		{"invalid punycode", `{"name":"xn--zz"}`, 400, []string{`"xn--zz": invalid device name: not valid IDNA (punycode)`}},
		{"empty punycode", `{"name":"xn--"}`, 400, []string{`"xn--": invalid device name: not valid IDNA (punycode)`}},
		{"empty name", `{"name":""}`, 400, []string{"name is required"}},
		{"no body", ``, 400, []string{"name"}},
		{"not JSON", `name=nas1`, 400, []string{"JSON"}},
		{"unknown field", `{"name":"nas2","owner":"bob"}`, 400, []string{"owner"}},
		{"two objects", `{"name":"nas2"}{"name":"nas3"}`, 400, []string{"after"}},
		{"unknown state", `{"name":"nas2","state":"zombie"}`, 400, []string{"state"}},
		{"huge body", `{"name":"nas2","pad":"` + strings.Repeat("x", 8<<10) + `"}`, 400, []string{"larger than"}},
	}
	for _, c := range cases {
		r := s.do(req{method: "POST", path: "/v1/devices", bearer: testAdmin, body: c.body})
		wantError(t, c.what, r, c.code, c.says...)
	}
	if ds, _ := s.st.List(); len(ds) != 1 {
		t.Fatalf("refused registrations stored devices: %+v", ds)
	}
}

func TestRegisterKeepsAPunycodeNameAsSent(t *testing.T) {
	s := startServer(t, nil)
	r := s.do(req{method: "POST", path: "/v1/devices", bearer: testAdmin, body: `{"name":"XN--Mller-KVA"}`})
	var out map[string]string
	if r.code != http.StatusCreated || json.Unmarshal([]byte(r.body), &out) != nil {
		t.Fatalf("register xn--mller-kva = %d %s", r.code, r.body)
	}
	if out["name"] != "xn--mller-kva" || out["fqdn"] != "xn--mller-kva.example.com" {
		t.Errorf("registered %q (%q), want the A-label xn--mller-kva", out["name"], out["fqdn"])
	}
}

func TestRegisterADeletedNameIsRefusedUntilTheQuarantineEnds(t *testing.T) {
	s := startServer(t, nil)
	tok := s.device("nas1")
	if r := s.do(req{method: "DELETE", path: "/v1/devices/nas1", bearer: tok}); r.code != http.StatusNoContent {
		t.Fatalf("DELETE = %d %s", r.code, r.body)
	}
	r := s.do(req{method: "POST", path: "/v1/devices", bearer: testAdmin, body: `{"name":"nas1"}`})
	wantError(t, "re-register during quarantine", r, http.StatusConflict, "quarantined")
	s.clock.Advance(store.DefaultQuarantine)
	r = s.do(req{method: "POST", path: "/v1/devices", bearer: testAdmin, body: `{"name":"nas1"}`})
	if r.code != http.StatusCreated {
		t.Fatalf("re-register after the quarantine = %d %s", r.code, r.body)
	}
}

func TestRegisterNeedsAdminUnlessRegistrationIsOpen(t *testing.T) {
	for _, open := range []bool{false, true} {
		s := startServer(t, func(c *Config) { c.OpenRegistration = open })
		devTok := s.device("nas0")
		for i, cred := range []req{{}, {bearer: "wrong-admin-token-xxxxxxxx"}, {bearer: devTok}, {basic: []string{"admin", testAdmin}}} {
			cred.method, cred.path = "POST", "/v1/devices"
			cred.body = `{"name":"anon` + string(rune('a'+i)) + `"}`
			r := s.do(cred)
			if open {
				if r.code != http.StatusCreated {
					t.Errorf("open registration, credentials %d: %d %s, want 201", i, r.code, r.body)
				}
				continue
			}
			wantError(t, "closed registration without the admin bearer token", r, http.StatusUnauthorized, "admin")
			if r.header.Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
		}
		if r := s.do(req{method: "POST", path: "/v1/devices", bearer: testAdmin, body: `{"name":"byadmin"}`}); r.code != http.StatusCreated {
			t.Errorf("open=%v: admin registration = %d %s", open, r.code, r.body)
		}
	}
}

func TestGetDeviceReturnsEverythingStored(t *testing.T) {
	s := startServer(t, nil)
	tok := s.device("nas1")
	ctx := context.Background()
	if _, _, err := s.st.SetAddress(ctx, "nas1", store.AddressUpdate{IPv4: netip.MustParseAddr("203.0.113.7"), IPv6: netip.MustParseAddr("2001:db8::7")}); err != nil {
		t.Fatal(err)
	}
	acc := store.AccessToken
	if _, err := s.st.Update(ctx, "nas1", store.Patch{Access: &acc}); err != nil {
		t.Fatal(err)
	}
	stored, err := s.st.Get("nas1")
	if err != nil {
		t.Fatal(err)
	}
	for _, cred := range []req{
		{bearer: tok},
		{basic: []string{"nas1", tok}},
		{bearer: testAdmin},
	} {
		cred.path = "/v1/devices/NAS1"
		r := s.do(cred)
		if r.code != http.StatusOK {
			t.Fatalf("GET = %d %s", r.code, r.body)
		}
		got := decodeDevice(t, r)
		if !reflect.DeepEqual(got.Device, stored) || got.FQDN != "nas1.example.com" {
			t.Errorf("GET = %+v, want %+v with fqdn nas1.example.com", got, stored)
		}
		var raw map[string]any
		json.Unmarshal([]byte(r.body), &raw)
		for _, k := range []string{"name", "fqdn", "token_sha256", "ipv4", "ipv6", "ddns", "link", "access", "state", "created", "updated"} {
			if _, ok := raw[k]; !ok {
				t.Errorf("GET body lacks %q: %s", k, r.body)
			}
		}
		if strings.Contains(r.body, tok) {
			t.Error("GET shows the clear-text token")
		}
	}
	wantError(t, "admin GET of an unknown device", s.do(req{path: "/v1/devices/ghost", bearer: testAdmin}), http.StatusNotFound)
}

func TestListDevicesIsAdminOnlyAndSorted(t *testing.T) {
	s := startServer(t, nil)
	tok := s.device("zeta")
	s.device("alpha")
	r := s.do(req{path: "/v1/devices", bearer: testAdmin})
	if r.code != http.StatusOK {
		t.Fatalf("GET /v1/devices = %d %s", r.code, r.body)
	}
	var out struct{ Devices []deviceOut }
	if err := json.Unmarshal([]byte(r.body), &out); err != nil {
		t.Fatal(err)
	}
	if len(out.Devices) != 2 || out.Devices[0].Name != "alpha" || out.Devices[1].FQDN != "zeta.example.com" {
		t.Fatalf("GET /v1/devices = %s", r.body)
	}
	wantError(t, "list with a device token", s.do(req{path: "/v1/devices", bearer: tok}), http.StatusUnauthorized)
	wantError(t, "list without credentials", s.do(req{path: "/v1/devices"}), http.StatusUnauthorized)

	empty := startServer(t, nil)
	if r := empty.do(req{path: "/v1/devices", bearer: testAdmin}); strings.TrimSpace(r.body) != `{"devices":[]}` {
		t.Errorf("empty list = %s, want {\"devices\":[]}", r.body)
	}
}

func TestWrongCredentialsDoNotRevealWhetherADeviceExists(t *testing.T) {
	s := startServer(t, nil)
	s.device("nas1")
	other := s.device("nas2")
	calls := []struct{ method, path, body string }{
		{"GET", "/v1/devices/%s", ""},
		{"PATCH", "/v1/devices/%s", `{"ddns":false}`},
		{"PUT", "/v1/devices/%s/address", `{"ipv4":"203.0.113.9"}`},
		{"DELETE", "/v1/devices/%s", ""},
	}
	creds := []struct {
		what string
		r    req
	}{
		{"wrong bearer", req{bearer: "guess-guess-guess-guess"}},
		{"another device's token", req{bearer: other}},
		{"wrong basic password", req{basic: []string{"x", "guess"}}},
	}
	src := 0
	for _, c := range calls {
		for _, cr := range creds {
			var first resp
			src++ // a fresh source for each pair keeps it under the failed-login limit
			for i, name := range []string{"nas1", "ghost"} {
				r := cr.r
				r.method, r.path, r.body = c.method, strings.Replace(c.path, "%s", name, 1), c.body
				r.from = fmt.Sprintf("198.51.100.%d", src)
				got := s.do(r)
				wantError(t, c.method+" "+r.path+" with "+cr.what, got, http.StatusUnauthorized)
				if i == 0 {
					first = got
					continue
				}
				if got.body != first.body || got.header.Get("WWW-Authenticate") != first.header.Get("WWW-Authenticate") {
					t.Errorf("%s with %s: existing and unknown device answer differently:\n%q\n%q", c.method, cr.what, first.body, got.body)
				}
			}
		}
	}
	if d, err := s.st.Get("nas1"); err != nil || !d.DDNS || d.IPv4.IsValid() {
		t.Fatalf("a refused call changed nas1: %+v, %v", d, err)
	}
}

func TestPutAddress(t *testing.T) {
	v4, v6 := netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("2001:db8::99")
	none := netip.Addr{}
	cases := []struct {
		what       string
		body, from string
		code       int
		want4      netip.Addr
		want6      netip.Addr
		says       string
	}{
		{"set ipv4 keeps ipv6", `{"ipv4":"203.0.113.7"}`, "", 200, netip.MustParseAddr("203.0.113.7"), v6, ""},
		{"set ipv6 keeps ipv4", `{"ipv6":"2001:db8::7"}`, "", 200, v4, netip.MustParseAddr("2001:db8::7"), ""},
		{"set both", `{"ipv4":"203.0.113.7","ipv6":"2001:db8::7"}`, "", 200, netip.MustParseAddr("203.0.113.7"), netip.MustParseAddr("2001:db8::7"), ""},
		{"empty string clears ipv4", `{"ipv4":""}`, "", 200, none, v6, ""},
		{"empty string clears ipv6", `{"ipv6":""}`, "", 200, v4, none, ""},
		{"clear both", `{"ipv4":"","ipv6":""}`, "", 200, none, none, ""},
		{"empty object changes nothing", `{}`, "", 200, v4, v6, ""},
		{"no body uses the IPv4 source", "", "203.0.113.50", 200, netip.MustParseAddr("203.0.113.50"), v6, ""},
		{"no body uses the IPv6 source", "", "2001:db8:5::1", 200, v4, netip.MustParseAddr("2001:db8:5::1"), ""},
		{"no body, mapped source", "", "::ffff:203.0.113.51", 200, netip.MustParseAddr("203.0.113.51"), v6, ""},
		{"mapped ipv4 stored plain", `{"ipv4":"::ffff:203.0.113.8"}`, "", 200, netip.MustParseAddr("203.0.113.8"), v6, ""},
		{"not an address", `{"ipv4":"nas.example.org"}`, "", 400, v4, v6, "not an address"},
		{"ipv6 in the ipv4 field", `{"ipv4":"2001:db8::1"}`, "", 400, v4, v6, "IPv4"},
		{"ipv4 in the ipv6 field", `{"ipv6":"203.0.113.1"}`, "", 400, v4, v6, "IPv6"},
		{"unknown field", `{"ipv5":"1.2.3.4"}`, "", 400, v4, v6, "ipv5"},
		{"number instead of string", `{"ipv4":1}`, "", 400, v4, v6, "JSON"},
		// The addresses dyndns2 refuses, refused the same way (store.ValidateAddress).
		{"unspecified", `{"ipv4":"0.0.0.0"}`, "", 400, v4, v6, "ipv4 0.0.0.0: invalid value: the unspecified (this-network) address names no host"},
		{"link-local", `{"ipv6":"fe80::1"}`, "", 400, v4, v6, "ipv6 fe80::1: invalid value: a link-local address"},
		{"multicast", `{"ipv4":"224.0.0.1"}`, "", 400, v4, v6, "multicast"},
		{"a zone", `{"ipv6":"2001:db8::7%eth0"}`, "", 400, v4, v6, "zone"},
		{"one refused address keeps both", `{"ipv4":"203.0.113.7","ipv6":"ff02::1"}`, "", 400, v4, v6, "ipv6 ff02::1"},
		{"no body from a source that may not be published", "", "169.254.9.9", 400, v4, v6, "ipv4 169.254.9.9: invalid value: a link-local address"},
		{"private and loopback are published", `{"ipv4":"192.168.1.2","ipv6":"::1"}`, "", 200, netip.MustParseAddr("192.168.1.2"), netip.MustParseAddr("::1"), ""},
	}
	for _, c := range cases {
		t.Run(c.what, func(t *testing.T) {
			s := startServer(t, nil)
			tok := s.device("nas1")
			if _, _, err := s.st.SetAddress(context.Background(), "nas1", store.AddressUpdate{IPv4: v4, IPv6: v6}); err != nil {
				t.Fatal(err)
			}
			r := s.do(req{method: "PUT", path: "/v1/devices/nas1/address", bearer: tok, body: c.body, from: c.from})
			if c.code != 200 {
				wantError(t, "PUT address", r, c.code, c.says)
			} else if r.code != 200 {
				t.Fatalf("PUT address = %d %s", r.code, r.body)
			} else if d := decodeDevice(t, r); d.IPv4 != c.want4 || d.IPv6 != c.want6 {
				t.Errorf("PUT answered %v %v, want %v %v", d.IPv4, d.IPv6, c.want4, c.want6)
			}
			rec, ok := s.st.Lookup("nas1")
			if !ok || rec.IPv4 != c.want4 || rec.IPv6 != c.want6 {
				t.Errorf("right after PUT the name resolves to %v %v (ok=%v), want %v %v", rec.IPv4, rec.IPv6, ok, c.want4, c.want6)
			}
		})
	}
}

func TestPatchSetsSwitches(t *testing.T) {
	s := startServer(t, nil)
	tok := s.device("nas1")
	steps := []struct {
		body     string
		code     int
		ddns     bool
		link     bool
		access   store.Access
		resolves bool
	}{
		{`{"ddns":false}`, 200, false, true, store.AccessPublic, false},
		{`{"link":false,"access":"token"}`, 200, false, false, store.AccessToken, false},
		{`{"ddns":true}`, 200, true, false, store.AccessToken, true},
		{`{"access":"everyone"}`, 400, true, false, store.AccessToken, true},
		{`{"ddns":"yes"}`, 400, true, false, store.AccessToken, true},
		{``, 400, true, false, store.AccessToken, true},
		{`{"access":"public","link":true}`, 200, true, true, store.AccessPublic, true},
	}
	for _, st := range steps {
		r := s.do(req{method: "PATCH", path: "/v1/devices/nas1", bearer: tok, body: st.body})
		if st.code != 200 {
			wantError(t, "PATCH "+st.body, r, st.code)
		} else if r.code != 200 {
			t.Fatalf("PATCH %s = %d %s", st.body, r.code, r.body)
		} else if d := decodeDevice(t, r); d.DDNS != st.ddns || d.Link != st.link || d.Access != st.access {
			t.Errorf("PATCH %s answered %+v", st.body, d.Device)
		}
		d, _ := s.st.Get("nas1")
		if d.DDNS != st.ddns || d.Link != st.link || d.Access != st.access {
			t.Errorf("after PATCH %s stored %+v", st.body, d)
		}
		if _, ok := s.st.Lookup("nas1"); ok != st.resolves {
			t.Errorf("after PATCH %s resolves = %v, want %v", st.body, ok, st.resolves)
		}
	}
	wantError(t, "admin PATCH of an unknown device", s.do(req{method: "PATCH", path: "/v1/devices/ghost", bearer: testAdmin, body: `{"ddns":false}`}), http.StatusNotFound)
}

func TestDeleteUnregistersTheDevice(t *testing.T) {
	s := startServer(t, nil)
	tok := s.device("nas1")
	s.device("nas2")
	r := s.do(req{method: "DELETE", path: "/v1/devices/nas1", bearer: tok})
	if r.code != http.StatusNoContent || r.body != "" {
		t.Fatalf("DELETE = %d %q, want 204 and no body", r.code, r.body)
	}
	if _, ok := s.st.Lookup("nas1"); ok {
		t.Error("nas1 resolves after DELETE answered")
	}
	wantError(t, "GET with the token of a deleted device", s.do(req{path: "/v1/devices/nas1", bearer: tok}), http.StatusUnauthorized)
	wantError(t, "admin DELETE of a deleted device", s.do(req{method: "DELETE", path: "/v1/devices/nas1", bearer: testAdmin}), http.StatusNotFound)
	if r := s.do(req{method: "DELETE", path: "/v1/devices/nas2", bearer: testAdmin}); r.code != http.StatusNoContent {
		t.Fatalf("admin DELETE = %d %s", r.code, r.body)
	}
	if s.st.Len() != 0 {
		t.Fatalf("%d devices left", s.st.Len())
	}
}

func TestCallerAddressEndpoint(t *testing.T) {
	s := startServer(t, nil)
	cases := []struct {
		accept, from string
		wantType     string
		wantBody     string
	}{
		{"", "", "application/json", `{"ip":"127.0.0.1"}` + "\n"},
		{"*/*", "", "application/json", `{"ip":"127.0.0.1"}` + "\n"},
		{"application/json", "", "application/json", `{"ip":"127.0.0.1"}` + "\n"},
		{"text/plain", "", "text/plain; charset=utf-8", "127.0.0.1\n"},
		{"text/*;q=0.9", "", "text/plain; charset=utf-8", "127.0.0.1\n"},
		{"application/json, text/plain", "", "application/json", `{"ip":"127.0.0.1"}` + "\n"},
		{"text/plain, application/json", "2001:db8::5", "text/plain; charset=utf-8", "2001:db8::5\n"},
		{"", "198.51.100.4", "application/json", `{"ip":"198.51.100.4"}` + "\n"},
		{"", "10.0.0.1, 198.51.100.4", "application/json", `{"ip":"198.51.100.4"}` + "\n"},
	}
	for _, c := range cases {
		r := s.do(req{path: "/v1/ip", from: c.from, header: http.Header{"Accept": {c.accept}}})
		if r.code != 200 || r.header.Get("Content-Type") != c.wantType || r.body != c.wantBody {
			t.Errorf("Accept %q from %q: %d %q %q; want %q %q", c.accept, c.from, r.code, r.header.Get("Content-Type"), r.body, c.wantType, c.wantBody)
		}
	}
}

func TestForwardedForIsIgnoredFromUntrustedPeers(t *testing.T) {
	s := startServer(t, func(c *Config) { c.TrustedProxies = nil })
	r := s.do(req{path: "/v1/ip", from: "198.51.100.4"})
	if r.body != `{"ip":"127.0.0.1"}`+"\n" {
		t.Fatalf("an untrusted X-Forwarded-For was believed: %s", r.body)
	}
	tok := s.device("nas1")
	s.do(req{method: "PUT", path: "/v1/devices/nas1/address", bearer: tok, from: "198.51.100.4"})
	if rec, _ := s.st.Lookup("nas1"); rec.IPv4 != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("PUT without body from an untrusted proxy stored %v, want the connection's address", rec.IPv4)
	}
}

func TestUnknownEndpointsAndMethodsAnswerJSON(t *testing.T) {
	s := startServer(t, nil)
	for _, r := range []req{
		{path: "/v2/devices"},
		{path: "/"},
		{method: "POST", path: "/v1/ip"},
		{method: "GET", path: "/v1/devices/nas1/address", bearer: testAdmin},
	} {
		got := s.do(r)
		if got.code < 400 || got.code > 499 {
			t.Errorf("%s %s = %d, want a 4xx", r.method, r.path, got.code)
			continue
		}
		wantError(t, r.method+" "+r.path, got, got.code)
	}
}

func TestServerLevelRefusalsAreJSON(t *testing.T) {
	s := startServer(t, nil)
	cases := []struct {
		what    string
		request string
		code    int
	}{
		{"16 KiB header", "GET /v1/ip HTTP/1.1\r\nHost: x\r\nX-Pad: " + strings.Repeat("p", 16<<10) + "\r\n\r\n", http.StatusRequestHeaderFieldsTooLarge},
		{"asterisk target", "GET * HTTP/1.1\r\nHost: x\r\n\r\n", http.StatusBadRequest},
	}
	var notJSON []string
	for _, c := range cases {
		conn, err := net.Dial("tcp", strings.TrimPrefix(s.url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(conn, c.request); err != nil {
			t.Fatal(err)
		}
		res, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("%s: %v", c.what, err)
		}
		body, _ := io.ReadAll(res.Body)
		conn.Close()
		if res.StatusCode != c.code {
			t.Errorf("%s: status %d, want %d", c.what, res.StatusCode, c.code)
		}
		if !json.Valid(body) {
			notJSON = append(notJSON, fmt.Sprintf("%s: %d %q", c.what, res.StatusCode, body))
		}
	}
	if notJSON != nil {
		t.Errorf("refusals made by net/http itself (http.Server's 431, http.ServeMux's 400 for a \"*\" target) are not the one-line JSON every 4xx promises: %v", notJSON)
	}
}

func TestResponsesAreNotCached(t *testing.T) {
	s := startServer(t, nil)
	tok := s.device("nas1")
	for _, r := range []req{{path: "/v1/ip"}, {path: "/v1/devices/nas1", bearer: tok}, {path: "/nic/update"}} {
		if got := s.do(r).header.Get("Cache-Control"); got != "no-store" {
			t.Errorf("%s: Cache-Control %q, want no-store", r.path, got)
		}
	}
}

func TestBodyOverTheLimitIsRefusedEvenAfterAValidObject(t *testing.T) {
	s := startServer(t, nil)
	tok := s.device("nas1")
	// The object fits in the limit; what follows it does not.
	body := `{"ipv4":"203.0.113.7"}` + strings.Repeat(" ", 8<<10) + `{"ipv6":"2001:db8::1"}`
	r := s.do(req{method: "PUT", path: "/v1/devices/nas1/address", bearer: tok, body: body})
	if r.code == http.StatusOK {
		t.Errorf("api.decode accepts a body over maxBodyBytes when the first JSON object fits: dec.More() hides the MaxBytesError, so %d bytes were applied with 200", len(body))
	}
	wantError(t, "8 KiB address body", r, http.StatusBadRequest)
	if rec, _ := s.st.Lookup("nas1"); rec.IPv4.IsValid() {
		t.Fatal("an oversized body was applied")
	}
}

func TestShutdownStopsEverythingItStarted(t *testing.T) {
	before := runtime.NumGoroutine()
	st, err := store.Open(store.Config{Dir: t.TempDir(), SweepEvery: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(Config{Addr: "127.0.0.1:0", Store: st, Zone: testZone, AdminToken: testAdmin})
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{}}
	res, err := client.Get("http://" + a.Addr().String() + "/v1/ip")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	client.CloseIdleConnections()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<16)
		t.Fatalf("%d goroutines left running after Shutdown and Close (%d before):\n%s", n-before, before, buf[:runtime.Stack(buf, true)])
	}
}

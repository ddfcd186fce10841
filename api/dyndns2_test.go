package api

import (
	"bytes"
	"context"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nasreach/nasreach/store"
)

// dyndns2Case is one update request against a fresh server holding nas1 and
// nas2. "$tok1" and "$tok2" in the credentials stand for their tokens.
type dyndns2Case struct {
	what   string
	method string   // GET when empty
	path   string   // /nic/update when empty
	query  string   // raw query
	auth   []string // Basic user, password; nil sends none
	header http.Header
	from   string            // client address; 203.0.113.99 when empty
	pre    []string          // nas1's addresses before the request
	setup  func(*server)     // runs after the devices exist
	code   int               // HTTP status
	body   string            // exact answer, without the final newline
	stored []string          // nas1's addresses after the request
	check  func(resp) string // extra assertion; returns a complaint or ""
}

var nas1Creds = []string{"nas1", "$tok1"}

func TestDyndns2Answers(t *testing.T) {
	hosts := func(n int) string { return strings.TrimSuffix(strings.Repeat("nas1.example.com,", n), ",") }
	cases := []dyndns2Case{
		// good and nochg
		{what: "good ipv4", query: "hostname=nas1.example.com&myip=198.51.100.7", auth: nas1Creds,
			code: 200, body: "good 198.51.100.7", stored: []string{"198.51.100.7"}},
		{what: "nochg when the address is already stored", query: "hostname=nas1.example.com&myip=198.51.100.7", auth: nas1Creds,
			pre: []string{"198.51.100.7"}, code: 200, body: "nochg 198.51.100.7", stored: []string{"198.51.100.7"}},
		{what: "path /update", path: "/update", query: "hostname=nas1.example.com&myip=198.51.100.7", auth: nas1Creds,
			code: 200, body: "good 198.51.100.7", stored: []string{"198.51.100.7"}},
		{what: "POST", method: "POST", query: "hostname=nas1.example.com&myip=198.51.100.7", auth: nas1Creds,
			code: 200, body: "good 198.51.100.7", stored: []string{"198.51.100.7"}},
		{what: "no myip uses the IPv4 source", query: "hostname=nas1.example.com", auth: nas1Creds,
			code: 200, body: "good 203.0.113.99", stored: []string{"203.0.113.99"}},
		{what: "no myip uses the IPv6 source", query: "hostname=nas1.example.com", auth: nas1Creds, from: "2001:db8:9::1",
			pre: []string{"198.51.100.1"}, code: 200, body: "good 2001:db8:9::1", stored: []string{"198.51.100.1", "2001:db8:9::1"}},
		{what: "empty myip uses the source", query: "hostname=nas1.example.com&myip=", auth: nas1Creds,
			code: 200, body: "good 203.0.113.99", stored: []string{"203.0.113.99"}},
		{what: "blank myip uses the source", query: "hostname=nas1.example.com&myip=%20,%20", auth: nas1Creds,
			code: 200, body: "good 203.0.113.99", stored: []string{"203.0.113.99"}},
		{what: "empty entries in myip are skipped", query: "hostname=nas1.example.com&myip=,2001:db8::7", auth: nas1Creds,
			pre: []string{"198.51.100.1"}, code: 200, body: "good 2001:db8::7", stored: []string{"198.51.100.1", "2001:db8::7"}},
		{what: "the same address twice is one", query: "hostname=nas1.example.com&myip=198.51.100.7,198.51.100.7&myip=198.51.100.7", auth: nas1Creds,
			code: 200, body: "good 198.51.100.7", stored: []string{"198.51.100.7"}},
		{what: "private and loopback addresses are published", query: "hostname=nas1.example.com&myip=10.0.0.2,::1", auth: nas1Creds,
			code: 200, body: "good 10.0.0.2,::1", stored: []string{"10.0.0.2", "::1"}},
		{what: "ipv6 in myip keeps the ipv4", query: "hostname=nas1.example.com&myip=2001:db8::7", auth: nas1Creds,
			pre: []string{"198.51.100.1"}, code: 200, body: "good 2001:db8::7", stored: []string{"198.51.100.1", "2001:db8::7"}},
		{what: "both families in myip", query: "hostname=nas1.example.com&myip=198.51.100.7,2001:db8::7", auth: nas1Creds,
			code: 200, body: "good 198.51.100.7,2001:db8::7", stored: []string{"198.51.100.7", "2001:db8::7"}},
		{what: "ipv6 first in myip, with spaces", query: "hostname=nas1.example.com&myip=" + url.QueryEscape("2001:db8::7 , 198.51.100.7"), auth: nas1Creds,
			code: 200, body: "good 198.51.100.7,2001:db8::7", stored: []string{"198.51.100.7", "2001:db8::7"}},
		{what: "myipv6", query: "hostname=nas1.example.com&myip=198.51.100.7&myipv6=2001:db8::7", auth: nas1Creds,
			code: 200, body: "good 198.51.100.7,2001:db8::7", stored: []string{"198.51.100.7", "2001:db8::7"}},
		{what: "myipv6 alone keeps the ipv4", query: "hostname=nas1.example.com&myipv6=2001:db8::7", auth: nas1Creds,
			pre: []string{"198.51.100.1"}, code: 200, body: "good 2001:db8::7", stored: []string{"198.51.100.1", "2001:db8::7"}},
		{what: "same ipv6 again", query: "hostname=nas1.example.com&myipv6=2001:db8::7", auth: nas1Creds,
			pre: []string{"2001:db8::7"}, code: 200, body: "nochg 2001:db8::7", stored: []string{"2001:db8::7"}},
		{what: "mapped ipv4 in myip", query: "hostname=nas1.example.com&myip=::ffff:198.51.100.8", auth: nas1Creds,
			code: 200, body: "good 198.51.100.8", stored: []string{"198.51.100.8"}},
		{what: "hostname in capitals with a final dot", query: "hostname=NAS1.Example.COM.&myip=198.51.100.7", auth: nas1Creds,
			code: 200, body: "good 198.51.100.7", stored: []string{"198.51.100.7"}},
		{what: "user is the full hostname", query: "hostname=nas1.example.com&myip=198.51.100.7", auth: []string{"NAS1.example.com.", "$tok1"},
			code: 200, body: "good 198.51.100.7", stored: []string{"198.51.100.7"}},
		{what: "one line per hostname in order", query: "hostname=nas1.example.com,nas2.example.com,nas1.example.org,nas1.example.com&myip=198.51.100.7", auth: nas1Creds,
			code: 200, body: "good 198.51.100.7\nnohost\nnotfqdn\nnochg 198.51.100.7", stored: []string{"198.51.100.7"}},
		{what: "dyndns2 extras are accepted", query: "system=dyndns&hostname=nas1.example.com&myip=198.51.100.7&wildcard=ON&mx=mail.example.com&backmx=NO&offline=YES", auth: nas1Creds,
			code: 200, body: "good 198.51.100.7", stored: []string{"198.51.100.7"}},
		{what: "twenty hostnames is the most", query: "myip=198.51.100.7&hostname=" + hosts(20), auth: nas1Creds,
			code: 200, body: "good 198.51.100.7" + strings.Repeat("\nnochg 198.51.100.7", 19), stored: []string{"198.51.100.7"}},

		// An address that cannot be used: badagent with the reason, once per
		// hostname, and nas1 keeps 198.51.100.1 (the runner checks that the
		// store did not change at all).
		{what: "malformed myip", query: "hostname=nas1.example.com&myip=garbage", auth: nas1Creds, pre: []string{"198.51.100.1"},
			code: 200, body: "badagent myip is not an IPv4 or IPv6 address (or one of each, comma-separated)"},
		{what: "malformed myip, a line per hostname", query: "hostname=nas1.example.com,nas2.example.com&myip=my.router", auth: nas1Creds, pre: []string{"198.51.100.1"},
			code: 200, body: "badagent myip is not an IPv4 or IPv6 address (or one of each, comma-separated)\nbadagent myip is not an IPv4 or IPv6 address (or one of each, comma-separated)"},
		{what: "leading zeros are malformed", query: "hostname=nas1.example.com&myip=203.0.113.010", auth: nas1Creds, pre: []string{"198.51.100.1"},
			code: 200, body: "badagent myip is not an IPv4 or IPv6 address (or one of each, comma-separated)"},
		{what: "one malformed entry refuses the list", query: "hostname=nas1.example.com&myip=198.51.100.7,garbage", auth: nas1Creds, pre: []string{"198.51.100.1"},
			code: 200, body: "badagent myip is not an IPv4 or IPv6 address (or one of each, comma-separated)"},
		{what: "malformed myipv6", query: "hostname=nas1.example.com&myip=198.51.100.7&myipv6=good", auth: nas1Creds, pre: []string{"198.51.100.1"},
			code: 200, body: "badagent myipv6 is not an IPv4 or IPv6 address (or one of each, comma-separated)"},
		{what: "two ipv4 addresses", query: "hostname=nas1.example.com&myip=198.51.100.7,198.51.100.8", auth: nas1Creds, pre: []string{"198.51.100.1"},
			code: 200, body: "badagent myip: two different IPv4 addresses; a name has at most one of each family"},
		{what: "myip and myipv6 disagree", query: "hostname=nas1.example.com&myip=2001:db8::7&myipv6=2001:db8::8", auth: nas1Creds, pre: []string{"198.51.100.1"},
			code: 200, body: "badagent myipv6: two different IPv6 addresses; a name has at most one of each family"},
		{what: "unspecified", query: "hostname=nas1.example.com&myip=0.0.0.0", auth: nas1Creds, pre: []string{"198.51.100.1"},
			code: 200, body: "badagent myip 0.0.0.0: invalid value: the unspecified (this-network) address names no host"},
		{what: "mapped unspecified", query: "hostname=nas1.example.com&myip=::ffff:0.0.0.0", auth: nas1Creds, pre: []string{"198.51.100.1"},
			code: 200, body: "badagent myip 0.0.0.0: invalid value: the unspecified (this-network) address names no host"},
		{what: "broadcast", query: "hostname=nas1.example.com&myip=255.255.255.255", auth: nas1Creds, pre: []string{"198.51.100.1"},
			code: 200, body: "badagent myip 255.255.255.255: invalid value: the broadcast address names no host"},
		{what: "multicast", query: "hostname=nas1.example.com&myipv6=ff02::1", auth: nas1Creds, pre: []string{"198.51.100.1"},
			code: 200, body: "badagent myipv6 ff02::1: invalid value: a multicast address names a group, not a host"},
		{what: "link-local", query: "hostname=nas1.example.com&myip=169.254.1.1", auth: nas1Creds, pre: []string{"198.51.100.1"},
			code: 200, body: "badagent myip 169.254.1.1: invalid value: a link-local address only reaches the device from its own link"},
		{what: "an address with a zone", query: "hostname=nas1.example.com&myip=2001:db8::7%25good", auth: nas1Creds, pre: []string{"198.51.100.1"},
			code: 200, body: "badagent myip 2001:db8::7: invalid value: an address with a zone (after %) only has a meaning on one host"},
		{what: "a source that may not be published", query: "hostname=nas1.example.com", auth: nas1Creds, from: "169.254.9.9", pre: []string{"198.51.100.1"},
			code: 200, body: "badagent no myip, and the request's source address 169.254.9.9: invalid value: a link-local address only reaches the device from its own link"},
		{what: "a bad address is answered before nohost", query: "hostname=nas2.example.com&myip=garbage", auth: nas1Creds,
			code: 200, body: "badagent myip is not an IPv4 or IPv6 address (or one of each, comma-separated)"},

		// refusals after a good login
		{what: "notfqdn without hostname", query: "myip=198.51.100.7", auth: nas1Creds, code: 200, body: "notfqdn"},
		{what: "notfqdn for empty hostnames", query: "hostname=,,&myip=198.51.100.7", auth: nas1Creds, code: 200, body: "notfqdn"},
		{what: "notfqdn for the zone apex", query: "hostname=example.com&myip=198.51.100.7", auth: nas1Creds, code: 200, body: "notfqdn"},
		{what: "notfqdn for another zone", query: "hostname=nas1.example.org&myip=198.51.100.7", auth: nas1Creds, code: 200, body: "notfqdn"},
		{what: "notfqdn for a zone suffix lookalike", query: "hostname=nas1.badexample.com&myip=198.51.100.7", auth: nas1Creds, code: 200, body: "notfqdn"},
		{what: "notfqdn for a name below a device", query: "hostname=www.nas1.example.com&myip=198.51.100.7", auth: nas1Creds, code: 200, body: "notfqdn"},
		{what: "notfqdn for a bare label", query: "hostname=nas1&myip=198.51.100.7", auth: nas1Creds, code: 200, body: "notfqdn"},
		{what: "nohost for another device", query: "hostname=nas2.example.com&myip=198.51.100.7", auth: nas1Creds, code: 200, body: "nohost"},
		{what: "nohost for an unknown name", query: "hostname=ghost.example.com&myip=198.51.100.7", auth: nas1Creds, code: 200, body: "nohost"},
		{what: "numhost past twenty hostnames", query: "myip=198.51.100.7&hostname=" + hosts(21), auth: nas1Creds, code: 200, body: "numhost"},

		// badauth
		{what: "badauth without credentials", query: "hostname=nas1.example.com&myip=198.51.100.7", code: 401, body: "badauth"},
		{what: "badauth for a wrong token", query: "hostname=nas1.example.com&myip=198.51.100.7", auth: []string{"nas1", "guess"}, code: 401, body: "badauth"},
		{what: "badauth for an empty token", query: "hostname=nas1.example.com&myip=198.51.100.7", auth: []string{"nas1", ""}, code: 401, body: "badauth"},
		{what: "badauth for another device's token", query: "hostname=nas1.example.com&myip=198.51.100.7", auth: []string{"nas1", "$tok2"}, code: 401, body: "badauth"},
		{what: "badauth for an unknown user", query: "hostname=nas1.example.com&myip=198.51.100.7", auth: []string{"ghost", "$tok1"}, code: 401, body: "badauth"},
		{what: "badauth for the user in another zone", query: "hostname=nas1.example.com&myip=198.51.100.7", auth: []string{"nas1.example.org", "$tok1"}, code: 401, body: "badauth"},
		{what: "badauth for a bearer token", query: "hostname=nas1.example.com&myip=198.51.100.7",
			header: http.Header{"Authorization": {"Bearer $tok1"}}, code: 401, body: "badauth"},
		{what: "badauth before notfqdn", query: "myip=198.51.100.7", code: 401, body: "badauth"},

		// abuse
		{what: "abuse after repeated failed logins", query: "hostname=nas1.example.com&myip=198.51.100.7", auth: nas1Creds,
			setup: func(s *server) {
				for range DefaultThrottle.FailedLogins {
					s.do(req{path: "/nic/update?hostname=nas1.example.com", basic: []string{"nas1", "guess"}, from: "203.0.113.99"})
				}
			},
			code: 429, body: "abuse",
			check: func(r resp) string {
				if r.header.Get("Retry-After") == "" {
					return "429 without Retry-After"
				}
				return ""
			}},
		{what: "abuse is per source", query: "hostname=nas1.example.com&myip=198.51.100.7", auth: nas1Creds,
			setup: func(s *server) {
				for range DefaultThrottle.FailedLogins {
					s.do(req{path: "/nic/update", basic: []string{"nas1", "guess"}, from: "203.0.113.98"})
				}
			},
			code: 200, body: "good 198.51.100.7", stored: []string{"198.51.100.7"}},

		// 911
		{what: "911 when the store fails mid-request", query: "hostname=nas1.example.com,nas1.example.com&myip=198.51.100.7", auth: nas1Creds,
			setup: func(s *server) {
				// The device is deleted right after the first update commits,
				// so the second one fails inside the store.
				var once sync.Once
				s.st.OnChange(func(c store.Change) {
					if c.Kind == store.Updated {
						once.Do(func() { _ = s.st.Delete(context.Background(), "nas1") })
					}
				})
			},
			code: 500, body: "good 198.51.100.7\n911"},

		// badagent
		{what: "badagent for other methods", method: "PUT", query: "hostname=nas1.example.com&myip=198.51.100.7", auth: nas1Creds,
			code: 405, body: "badagent"},
	}
	for _, c := range cases {
		t.Run(c.what, func(t *testing.T) { runDyndns2Case(t, c) })
	}
}

func runDyndns2Case(t *testing.T, c dyndns2Case) {
	s := startServer(t, nil)
	tok1, tok2 := s.device("nas1"), s.device("nas2")
	fill := strings.NewReplacer("$tok1", tok1, "$tok2", tok2).Replace
	var pre store.AddressUpdate
	for _, a := range c.pre {
		if ip := netip.MustParseAddr(a); ip.Is4() {
			pre.IPv4 = ip
		} else {
			pre.IPv6 = ip
		}
	}
	if _, _, err := s.st.SetAddress(context.Background(), "nas1", pre); err != nil {
		t.Fatal(err)
	}
	if c.setup != nil {
		c.setup(s)
	}
	// A request answered without "good" must leave the store exactly as it
	// was; the clock moves so that a write would show in Updated.
	before := snapshot(t, s.st)
	s.clock.Advance(time.Minute)
	r := req{method: c.method, path: cmpOr(c.path, "/nic/update") + "?" + c.query, from: cmpOr(c.from, "203.0.113.99"), header: http.Header{}}
	if c.auth != nil {
		r.basic = []string{fill(c.auth[0]), fill(c.auth[1])}
	}
	for k, vs := range c.header {
		for _, v := range vs {
			r.header.Add(k, fill(v))
		}
	}
	got := s.do(r)
	if got.code != c.code || got.body != c.body+"\n" {
		t.Errorf("answer %d %q, want %d %q", got.code, got.body, c.code, c.body+"\n")
	}
	if ct := got.header.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
		t.Errorf("Content-Type %q, want text/plain", ct)
	}
	if wa := got.header.Get("WWW-Authenticate"); (got.code == 401) != strings.HasPrefix(wa, "Basic ") {
		t.Errorf("status %d with WWW-Authenticate %q; a 401 and only a 401 asks for Basic credentials", got.code, wa)
	}
	if c.check != nil {
		if complaint := c.check(got); complaint != "" {
			t.Error(complaint)
		}
	}
	want := pre
	if c.stored != nil {
		want = store.AddressUpdate{}
		for _, a := range c.stored {
			if ip := netip.MustParseAddr(a); ip.Is4() {
				want.IPv4 = ip
			} else {
				want.IPv6 = ip
			}
		}
	}
	if c.code == 500 {
		return // the device is gone
	}
	if !strings.Contains(got.body, "good") && !bytes.Equal(snapshot(t, s.st), before) {
		t.Errorf("the answer %q has no good line, yet the store changed", got.body)
	}
	d, err := s.st.Get("nas1")
	if err != nil {
		t.Fatal(err)
	}
	if d.IPv4 != want.IPv4 || d.IPv6 != want.IPv6 {
		t.Errorf("nas1 stored %v %v, want %v %v", d.IPv4, d.IPv6, want.IPv4, want.IPv6)
	}
	if rec, ok := s.st.Lookup("nas1"); !ok || rec.IPv4 != want.IPv4 || rec.IPv6 != want.IPv6 {
		t.Errorf("right after the answer nas1 resolves to %+v (ok=%v), want %v %v", rec, ok, want.IPv4, want.IPv6)
	}
	if d2, _ := s.st.Get("nas2"); d2.IPv4.IsValid() || d2.IPv6.IsValid() {
		t.Errorf("nas1's request changed nas2: %+v", d2)
	}
}

// snapshot returns the store's whole content as a consistent bbolt file.
func snapshot(t *testing.T, st *store.Store) []byte {
	t.Helper()
	var b bytes.Buffer
	if _, err := st.Backup(&b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestDyndns2RefusalsHoldNoSuccessWord: clients such as inadyn's custom
// provider call any answer containing "good", "ok" … a success, so a refusal
// must never contain one, whatever the client sent.
func TestDyndns2RefusalsHoldNoSuccessWord(t *testing.T) {
	s := startServer(t, nil)
	tok := s.device("nas1")
	for _, myip := range []string{"good", "ok", "nochg", "updated", "true", "0.0.0.0", "255.255.255.255", "224.0.0.1", "ff02::1",
		"169.254.1.1", "fe80::1", "fe80::1%25good", "2001:db8::1%25OK", "240.0.0.1", "::ffff:0.0.0.0", "1.2.3.4,5.6.7.8", "::1,::2", "010.0.0.1"} {
		for _, param := range []string{"myip", "myipv6"} {
			r := s.do(req{path: "/nic/update?hostname=nas1.example.com&" + param + "=" + myip, basic: []string{"nas1", tok}})
			if !strings.HasPrefix(r.body, "badagent ") {
				t.Errorf("%s=%s: answer %q, want badagent", param, myip, r.body)
			}
			if w := noSuccessWord(r.body); w != "" {
				t.Errorf("%s=%s: refusal %q contains %q, which clients take for success", param, myip, r.body, w)
			}
		}
	}
	if r := s.do(req{path: "/nic/update?hostname=nas1.example.com", basic: []string{"nas1", tok}, from: "0.0.0.1"}); noSuccessWord(r.body) != "" || !strings.HasPrefix(r.body, "badagent ") {
		t.Errorf("unpublishable source: answer %q", r.body)
	}
}

func TestDyndns2UpdateFromOneDeviceNeverTouchesAnother(t *testing.T) {
	s := startServer(t, nil)
	tok1 := s.device("nas1")
	s.device("nas2")
	for _, q := range []string{
		"hostname=nas2.example.com&myip=198.51.100.66",
		"hostname=nas2.example.com,nas2.example.com&myip=198.51.100.66",
		"hostname=nas2.example.com.&myip=198.51.100.66",
		"hostname=NAS2.EXAMPLE.COM&myip=198.51.100.66",
	} {
		r := s.do(req{path: "/nic/update?" + q, basic: []string{"nas1", tok1}})
		if strings.Contains(r.body, "good") || strings.Contains(r.body, "nochg") {
			t.Errorf("%s: %q", q, r.body)
		}
	}
	if d, _ := s.st.Get("nas2"); d.IPv4.IsValid() {
		t.Fatalf("nas1's token changed nas2 to %v", d.IPv4)
	}
}

func TestDyndns2DoesNotFoldNonASCIIOntoADevice(t *testing.T) {
	s := startServer(t, nil)
	tok := s.device("nask")
	kelvin := "NAS\u212a" // strings.ToLower makes this "nask"
	r := s.do(req{path: "/nic/update?hostname=" + url.QueryEscape(kelvin+".example.com") + "&myip=198.51.100.7", basic: []string{"nask", tok}})
	if r.body != "nohost\n" {
		t.Errorf("hostname %+q with nask's credentials: %q, want nohost", kelvin, r.body)
	}
	r = s.do(req{path: "/nic/update?hostname=nask.example.com&myip=198.51.100.7", basic: []string{kelvin, tok}})
	if r.code != http.StatusUnauthorized || r.body != "badauth\n" {
		t.Errorf("user %+q with nask's token: %d %q, want 401 badauth", kelvin, r.code, r.body)
	}
	if d, _ := s.st.Get("nask"); d.IPv4.IsValid() {
		t.Errorf("nask was updated to %v through %+q", d.IPv4, kelvin)
	}
}

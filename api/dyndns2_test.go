package api

import (
	"context"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"testing"

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
		{what: "malformed myip uses the source", query: "hostname=nas1.example.com&myip=my.router", auth: nas1Creds,
			code: 200, body: "good 203.0.113.99", stored: []string{"203.0.113.99"}},
		{what: "empty myip uses the source", query: "hostname=nas1.example.com&myip=", auth: nas1Creds,
			code: 200, body: "good 203.0.113.99", stored: []string{"203.0.113.99"}},
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

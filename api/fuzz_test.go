package api

import (
	"bufio"
	"context"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/store"
)

// FuzzParseDyndns2 feeds arbitrary query strings (and source addresses) to
// the dyndns2 parser.
func FuzzParseDyndns2(f *testing.F) {
	for _, seed := range []struct{ query, src string }{
		{"hostname=nas1.example.com&myip=198.51.100.7", "203.0.113.1"},
		{"hostname=nas1.example.com&myip=198.51.100.7,2001:db8::7", "203.0.113.1"},
		{"hostname=nas1.example.com&myip=2001:db8::7&myipv6=2001:db8::8", "2001:db8:9::1"},
		{"hostname=NAS1.Example.COM.,nas2.example.com&myip=::ffff:198.51.100.8", ""},
		{"hostname=a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q,r,s,t,u", "203.0.113.1"},
		{"hostname=,,,&myip=", "203.0.113.1"},
		{"myip=fe80::1%25eth0&hostname=x", "fe80::2%eth1"},
		{"hostname=nas1.example.com&myip=garbage", "203.0.113.1"},
		{"hostname=nas1.example.com&myip=203.0.113.010", "203.0.113.1"},
		{"hostname=nas1.example.com&myip=,2001:db8::7&myipv6=2001:db8::8", "203.0.113.1"},
		{"hostname=nas1.example.com", "169.254.0.1"},
		{"hostname=NAS%E2%84%AA.example.com&myip=0.0.0.0", "203.0.113.1"},
		{"hostname=%00%ff&myip=1.2.3.4.5&myipv6=::ffff:1.2.3.4", "::ffff:192.0.2.1"},
		{"system=dyndns&hostname=nas1.example.com&wildcard=ON&mx=m&backmx=NO&offline=YES", "203.0.113.1"},
		{"hostname=a&hostname=b&myip=1.1.1.1&myip=2.2.2.2", "203.0.113.1"},
		{"%zz=&hostname", "203.0.113.1"},
	} {
		f.Add(seed.query, seed.src)
	}
	f.Fuzz(func(t *testing.T, query, srcText string) {
		q, err := url.ParseQuery(query)
		if err != nil && q == nil {
			return
		}
		src, _ := netip.ParseAddr(srcText)
		src = src.Unmap() // clientAddr's contract
		req, refusal := parseDyndns2(q, src)
		switch {
		case refusal == nil:
			if n := len(req.Hostnames); n < 1 || n > maxHostnames {
				t.Fatalf("%d hostnames accepted, want 1 to %d", n, maxHostnames)
			}
		case len(refusal) == 1 && (refusal[0] == "notfqdn" || refusal[0] == "numhost"):
			return
		case len(refusal) == len(req.Hostnames) && strings.HasPrefix(refusal[0], "badagent "):
			for _, l := range refusal {
				if l != refusal[0] || !dyndns2Answer.MatchString(l) {
					t.Fatalf("refusal %q is not one badagent answer per hostname", refusal)
				}
			}
			return
		default:
			t.Fatalf("refusal %q is not an answer dyndns2 defines for a parse error", refusal)
		}
		for _, h := range req.Hostnames {
			// Not checked: a hostname such as "a.." or "a ." keeps a dot or a
			// space; it can never match the zone, so it answers notfqdn.
			if h == "" || h != store.NormalizeName(h) {
				t.Fatalf("hostname %q is empty or not lower case", h)
			}
		}
		if a := req.IPv4; a.IsValid() && (!a.Is4() || a.Zone() != "") {
			t.Fatalf("IPv4 = %v is not an IPv4 address", a)
		}
		if a := req.IPv6; a.IsValid() && (!a.Is6() || a.Is4In6()) {
			t.Fatalf("IPv6 = %v is not an IPv6 address", a)
		}
		if !req.IPv4.IsValid() && !req.IPv6.IsValid() {
			t.Fatalf("accepted without an address (source %v)", src)
		}
		for _, a := range []netip.Addr{req.IPv4, req.IPv6} {
			if err := store.ValidateAddress(a); a.IsValid() && err != nil {
				t.Fatalf("accepted an address that may not be published: %v", err)
			}
		}
	})
}

// dyndns2Answer matches one line of a dyndns2 reply.
// A badagent reason must not hold a word that clients take for success
// (inadyn's custom provider looks for these anywhere in the answer, in any
// case); noSuccessWord checks that separately.
var dyndns2Answer = regexp.MustCompile(`^(good|nochg) [0-9a-f.:]+(,[0-9a-f.:]+)?$|^(notfqdn|nohost|numhost|badauth|abuse|911|badagent)$|^badagent [ -~]+$`)

// successWords are what inadyn's custom provider (and similar clients) look
// for, case-insensitively, anywhere in an answer to call it a success.
var successWords = []string{"ok", "good", "true", "updated", "nochg"}

// noSuccessWord returns the success word a refusal line holds, or "".
func noSuccessWord(line string) string {
	for _, w := range successWords {
		if strings.Contains(strings.ToLower(line), w) {
			return w
		}
	}
	return ""
}

// FuzzDyndns2Handler drives the whole HTTP handler with an arbitrary request
// line. The harness adds a Host header and, when auth is true, nas1's real
// credentials, so the fuzzer reaches the update path.
func FuzzDyndns2Handler(f *testing.F) {
	for _, seed := range []string{
		"GET /nic/update?hostname=nas1.example.com&myip=198.51.100.7 HTTP/1.1",
		"GET /update?hostname=nas1.example.com,nas1.example.com&myip=198.51.100.7,2001:db8::7 HTTP/1.1",
		"POST /nic/update?hostname=NAS1.example.com.&myipv6=2001:db8::8 HTTP/1.0",
		"GET /nic/update?hostname=nas2.example.com,ghost.example.org HTTP/1.1",
		"PUT /nic/update HTTP/1.1",
		"GET /nic/update?hostname=" + strings.Repeat("nas1.example.com,", 21) + " HTTP/1.1",
		"GET http://example.com/nic/update?myip=::ffff:1.2.3.4&hostname=nas1.example.com HTTP/1.1",
		"GET /nic/update?hostname=nas1.example.com HTTP/1.1\r\nAuthorization: Basic Og==",
		"GET /nic/update?hostname=nas1.example.com HTTP/1.1\r\nX-Forwarded-For: 2001:db8::1",
	} {
		f.Add(seed, true)
		f.Add(seed, false)
	}
	clk := testutil.NewClock(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC))
	st, err := store.Open(store.Config{Dir: f.TempDir(), Now: clk.Now, SweepEvery: -1})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { st.Close() })
	a, err := New(Config{Store: st, Zone: testZone, AdminToken: testAdmin, Now: clk.Now})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { a.Shutdown(context.Background()) })
	_, tok, err := st.Create(context.Background(), "nas1", store.CreateOptions{})
	if err != nil {
		f.Fatal(err)
	}
	if _, _, err := st.Create(context.Background(), "nas2", store.CreateOptions{}); err != nil {
		f.Fatal(err)
	}

	f.Fuzz(func(t *testing.T, line string, auth bool) {
		clk.Advance(time.Hour) // outlive any block the last input earned
		raw := line + "\r\nHost: nasreach.test\r\n"
		if auth {
			hr := http.Request{Header: http.Header{}}
			hr.SetBasicAuth("nas1", tok)
			raw += "Authorization: " + hr.Header.Get("Authorization") + "\r\n"
		}
		r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw + "\r\n")))
		if err != nil {
			return
		}
		if strings.EqualFold(r.Method, http.MethodDelete) {
			return // a DELETE with nas1's token rightly removes nas1; nothing left to check
		}
		r.RemoteAddr = "127.0.0.1:40000"
		w := httptest.NewRecorder()
		a.ServeHTTP(w, r)

		if p := r.URL.Path; p == "/nic/update" || p == "/update" {
			body := w.Body.String()
			if ct := w.Header().Get("Content-Type"); ct != "text/plain; charset=utf-8" {
				t.Fatalf("%s: Content-Type %q", p, ct)
			}
			lines := strings.Split(strings.TrimSuffix(body, "\n"), "\n")
			if !strings.HasSuffix(body, "\n") || len(lines) > maxHostnames {
				t.Fatalf("reply %q is not 1 to %d lines", body, maxHostnames)
			}
			for _, l := range lines {
				if !dyndns2Answer.MatchString(l) {
					t.Fatalf("reply line %q is not a dyndns2 answer", l)
				}
				if w := noSuccessWord(l); strings.HasPrefix(l, "badagent") && w != "" {
					t.Fatalf("refusal %q contains %q, which clients take for success", l, w)
				}
			}
			if (w.Code == http.StatusUnauthorized) != (body == "badauth\n") {
				t.Fatalf("status %d with reply %q", w.Code, body)
			}
		} else if w.Code >= 400 && w.Code < 500 && r.RequestURI != "*" && !strings.HasPrefix(w.Body.String(), `{"error":`) {
			// ("*" is answered by http.ServeMux itself; see
			// TestServerLevelRefusalsAreJSON.)
			t.Fatalf("%s: %d %q is not a JSON error", r.URL.Path, w.Code, w.Body.String())
		}

		for _, name := range []string{"nas1", "nas2"} {
			d, err := st.Get(name)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if d.IPv4.IsValid() && (!d.IPv4.Is4() || d.IPv4.Zone() != "") {
				t.Fatalf("%s stores IPv4 %v", name, d.IPv4)
			}
			if d.IPv6.IsValid() && (!d.IPv6.Is6() || d.IPv6.Is4In6() || d.IPv6.Zone() != "") {
				t.Fatalf("%s stores IPv6 %v", name, d.IPv6)
			}
			if name == "nas2" && (d.IPv4.IsValid() || d.IPv6.IsValid()) {
				t.Fatalf("nas1's credentials changed nas2: %+v", d)
			}
		}
	})
}

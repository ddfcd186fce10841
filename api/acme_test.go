package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nasreach/nasreach/api/client"
	"github.com/nasreach/nasreach/connlog"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/store"
	"github.com/rs/zerolog"
)

// Challenge values as ACME clients compute them: 43 base64url characters.
var valA, valB, valC = testutil.ChallengeValue(0), testutil.ChallengeValue(1), testutil.ChallengeValue(2)

const challengePath = "/v1/devices/nas1/acme-challenge"

func valuesBody(values ...string) string {
	b, _ := json.Marshal(client.ACMEChallengeValues{Values: values})
	return string(b)
}

func decodeChallenges(t *testing.T, r resp) client.ACMEChallenges {
	t.Helper()
	if r.code != http.StatusOK {
		t.Fatalf("status %d, want 200: %s", r.code, r.body)
	}
	var out client.ACMEChallenges
	if err := json.Unmarshal([]byte(r.body), &out); err != nil {
		t.Fatalf("body %q: %v", r.body, err)
	}
	return out
}

// published is what DNS answers at _acme-challenge.<name>.
func (s *server) published(name string) []string {
	rec, _ := s.st.Lookup(name)
	return rec.ACME
}

// acmeDNS sends acme-dns's POST /update as goacmedns (lego) does: capitalised
// keys, the account in X-Api-User and X-Api-Key.
func (s *server) acmeDNS(user, key, subdomain, txt string) resp {
	s.t.Helper()
	b, _ := json.Marshal(struct{ SubDomain, Txt string }{subdomain, txt})
	return s.do(req{method: http.MethodPost, path: "/update", body: string(b), header: http.Header{
		"X-Api-User": {user}, "X-Api-Key": {key}, "Content-Type": {"application/json"},
	}})
}

func TestChallengePutPublishesAndDeleteWithdraws(t *testing.T) {
	s := startServer(t, nil)
	tok := s.device("nas1")

	got := decodeChallenges(t, s.do(req{method: http.MethodPut, path: challengePath, bearer: tok, body: valuesBody(valA, valB)}))
	expires := s.clock.Now().Add(time.Hour)
	want := client.ACMEChallenges{FQDN: "_acme-challenge.nas1.example.com", Challenges: []client.ACMEChallenge{
		{Value: valA, Expires: expires}, {Value: valB, Expires: expires},
	}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("PUT answered %+v, want %+v", got, want)
	}
	if p := s.published("nas1"); !slices.Equal(p, []string{valA, valB}) {
		t.Fatalf("after PUT DNS publishes %v", p)
	}

	// lego presents one value per call: a PUT adds, and one already there
	// is renewed rather than repeated.
	s.clock.Advance(time.Minute)
	got = decodeChallenges(t, s.do(req{method: http.MethodPut, path: challengePath, basic: []string{"nas1", tok}, body: valuesBody(valA)}))
	if len(got.Challenges) != 2 || got.Challenges[1].Value != valA || !got.Challenges[1].Expires.Equal(s.clock.Now().Add(time.Hour)) {
		t.Fatalf("PUT of a published value: %+v, want it renewed and last", got.Challenges)
	}

	if r := s.do(req{method: http.MethodDelete, path: challengePath, bearer: tok, body: valuesBody(valA)}); r.code != http.StatusNoContent {
		t.Fatalf("DELETE one value: %d %s", r.code, r.body)
	}
	got = decodeChallenges(t, s.do(req{path: challengePath, bearer: tok}))
	if len(got.Challenges) != 1 || got.Challenges[0].Value != valB || !slices.Equal(s.published("nas1"), []string{valB}) {
		t.Fatalf("after DELETE of one value GET says %+v, DNS %v", got.Challenges, s.published("nas1"))
	}
	if r := s.do(req{method: http.MethodDelete, path: challengePath, bearer: tok, body: valuesBody(valC)}); r.code != http.StatusNoContent {
		t.Fatalf("DELETE of a value not published: %d %s", r.code, r.body)
	}
	if r := s.do(req{method: http.MethodDelete, path: challengePath, bearer: tok}); r.code != http.StatusNoContent {
		t.Fatalf("DELETE without a body: %d %s", r.code, r.body)
	}
	if r := s.do(req{path: challengePath, bearer: tok}); !strings.Contains(r.body, `"challenges":[]`) || s.published("nas1") != nil {
		t.Fatalf("after DELETE of all GET says %s, DNS %v", r.body, s.published("nas1"))
	}
	// The owner's export shows the values too, as everything stored.
	s.do(req{method: http.MethodPut, path: challengePath, bearer: tok, body: valuesBody(valC)})
	if d := decodeDevice(t, s.do(req{path: "/v1/devices/nas1", bearer: tok})); len(d.ACMEChallenges) != 1 || d.ACMEChallenges[0].Value != valC {
		t.Fatalf("the export holds %+v", d.ACMEChallenges)
	}
}

func TestChallengeCallsNeedTheDevicesOwnToken(t *testing.T) {
	s := startServer(t, nil)
	s.device("nas1")
	other := s.device("nas2")
	for _, r := range []req{
		{method: http.MethodPut, path: challengePath, bearer: other, body: valuesBody(valA)},
		{method: http.MethodPut, path: challengePath, basic: []string{"nas2", other}, body: valuesBody(valA)},
		{method: http.MethodDelete, path: challengePath, bearer: other},
		{method: http.MethodGet, path: challengePath, bearer: other},
		{method: http.MethodPut, path: challengePath, body: valuesBody(valA)},
	} {
		wantError(t, r.method+" with another device's token or none", s.do(r), http.StatusUnauthorized, "token")
	}
	if p := s.published("nas1"); p != nil {
		t.Fatalf("another device's token set nas1's challenge: %v", p)
	}
	decodeChallenges(t, s.do(req{method: http.MethodPut, path: challengePath, bearer: testAdmin, body: valuesBody(valA)}))
	if p := s.published("nas1"); !slices.Equal(p, []string{valA}) {
		t.Fatalf("the admin's PUT: DNS publishes %v", p)
	}
	wantError(t, "PUT for an unknown device as admin", s.do(req{method: http.MethodPut, path: "/v1/devices/nas9/acme-challenge", bearer: testAdmin, body: valuesBody(valA)}),
		http.StatusNotFound, "no such device")
}

func TestChallengeRefusalsSayWhyWithoutRepeatingTheValue(t *testing.T) {
	s := startServer(t, nil)
	tok := s.device("nas1")
	secret := "my-password-is-hunter2-and-not-a-challenge"
	nine := make([]string, store.MaxChallenges+1)
	for i := range nine {
		nine[i] = testutil.ChallengeValue(10 + i)
	}
	for _, c := range []struct {
		method, body string
		says         []string
	}{
		{http.MethodPut, "", []string{`{"values":[`}},
		{http.MethodPut, `{}`, []string{"values is empty"}},
		{http.MethodPut, `{"values":[]}`, []string{"values is empty"}},
		{http.MethodPut, valuesBody(valA, "short"), []string{"values[1]", "43 characters"}},
		{http.MethodPut, valuesBody(secret + "!"), []string{"values[0]", "base64url"}},
		{http.MethodPut, valuesBody(nine...), []string{"at most 8"}},
		{http.MethodPut, `{"value":"x"}`, []string{"not valid JSON", "value"}},
		{http.MethodDelete, valuesBody("short"), []string{"values[0]"}},
		{http.MethodDelete, `{"values":[]}`, []string{"values is empty"}},
	} {
		r := s.do(req{method: c.method, path: challengePath, bearer: tok, body: c.body})
		reason := wantError(t, c.method+" "+c.body, r, http.StatusBadRequest, c.says...)
		if strings.Contains(reason, "hunter2") || strings.Contains(reason, "short") && !strings.Contains(c.body, `"value"`) {
			t.Errorf("%s %s: the refusal repeats the value: %s", c.method, c.body, reason)
		}
	}
	// Eight at once is the cap: a ninth in a later call is refused too.
	decodeChallenges(t, s.do(req{method: http.MethodPut, path: challengePath, bearer: tok, body: valuesBody(nine[:8]...)}))
	wantError(t, "a ninth value", s.do(req{method: http.MethodPut, path: challengePath, bearer: tok, body: valuesBody(valA)}),
		http.StatusBadRequest, "at most 8", "DELETE")
	if p := s.published("nas1"); len(p) != 8 {
		t.Fatalf("after the refusal DNS publishes %d values, want the 8", len(p))
	}
}

func TestAcmeDNSUpdatePublishesTheLastTwoValues(t *testing.T) {
	s := startServer(t, nil)
	tok := s.device("nas1")
	for _, v := range []string{valA, valB, valC} {
		r := s.acmeDNS("nas1", tok, "nas1", v)
		if r.code != http.StatusOK || r.body != `{"txt":"`+v+`"}`+"\n" {
			t.Fatalf("acme-dns update: %d %q, want 200 {\"txt\":value}", r.code, r.body)
		}
	}
	if p := s.published("nas1"); !slices.Equal(p, []string{valB, valC}) {
		t.Fatalf("after three acme-dns updates DNS publishes %v, want the last two", p)
	}
	// Case does not matter in the account, as in DNS.
	if r := s.acmeDNS("NAS1", tok, "Nas1", valA); r.code != http.StatusOK {
		t.Fatalf("mixed-case account: %d %s", r.code, r.body)
	}
	// The admin token may set any device's value.
	if r := s.acmeDNS("admin", testAdmin, "nas1", valB); r.code != http.StatusOK {
		t.Fatalf("admin: %d %s", r.code, r.body)
	}
	// dyndns2 by POST on the same path still works.
	r := s.do(req{method: http.MethodPost, path: "/update?hostname=nas1.example.com&myip=203.0.113.5", basic: []string{"nas1", tok}})
	if r.code != http.StatusOK || r.body != "good 203.0.113.5\n" {
		t.Fatalf("dyndns2 POST /update: %d %q", r.code, r.body)
	}
}

func TestAcmeDNSRefusals(t *testing.T) {
	s := startServer(t, nil)
	tok := s.device("nas1")
	other := s.device("nas2")
	wantError(t, "wrong key", s.acmeDNS("nas1", other, "nas1", valA), http.StatusUnauthorized, "wrong device name or token")
	wantError(t, "no key", s.acmeDNS("nas1", "", "nas1", valA), http.StatusUnauthorized, "token")
	wantError(t, "another device's account", s.acmeDNS("nas2", other, "nas1", valA), http.StatusForbidden, "subdomain", "its own")
	if p := s.published("nas1"); p != nil {
		t.Fatalf("another device's account set nas1's challenge: %v", p)
	}
	reason := wantError(t, "bad txt", s.acmeDNS("nas1", tok, "nas1", "not-a-challenge"), http.StatusBadRequest, "txt", "43 characters")
	if strings.Contains(reason, "not-a-challenge") {
		t.Errorf("the refusal repeats the value: %s", reason)
	}
	wantError(t, "register", s.do(req{method: http.MethodPost, path: "/register"}), http.StatusForbidden,
		"username and subdomain = the device name", "password = its token", "fulldomain = _acme-challenge.<device>.example.com")
}

// eventLog keeps the events the API sends to the connection log.
type eventLog struct {
	mu     sync.Mutex
	events []connlog.Event
}

func (l *eventLog) Log(e connlog.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, e)
}

func TestChallengeValuesNeverReachTheLogs(t *testing.T) {
	var logs testutil.Buffer
	events := &eventLog{}
	s := startServer(t, func(c *Config) {
		c.Logger = zerolog.New(&logs).Level(zerolog.DebugLevel)
		c.Events = events
	})
	tok := s.device("nas1")
	other := s.device("nas2")
	s.do(req{method: http.MethodPut, path: challengePath, bearer: tok, body: valuesBody(valA, valB), from: "198.51.100.7"})
	s.do(req{method: http.MethodPut, path: challengePath, bearer: other, body: valuesBody(valC)})
	s.do(req{method: http.MethodDelete, path: challengePath, bearer: tok, body: valuesBody(valA)})
	s.do(req{method: http.MethodPut, path: challengePath, bearer: tok, body: valuesBody(valC[:40])})
	s.acmeDNS("nas1", tok, "nas1", valC)
	s.acmeDNS("nas2", other, "nas1", valC)
	s.acmeDNS("nas1", tok, "nas1", valC+"!")

	events.mu.Lock()
	defer events.mu.Unlock()
	counted := map[string]int{}
	for _, e := range events.events {
		line := fmt.Sprintf("%+v", e)
		for _, v := range []string{valA, valB, valC, valC[:40]} {
			if strings.Contains(line, v) {
				t.Errorf("a connection-log event holds a challenge value: %s", line)
			}
		}
		if e.Service == "acme" {
			counted[e.Kind+" "+e.Outcome]++
			if e.Device == "" || !e.Client.IsValid() {
				t.Errorf("an acme event lacks its device or client: %+v", e)
			}
		}
	}
	if want := map[string]int{"set ok": 2, "delete ok": 1, "set invalid": 2}; fmt.Sprint(counted) != fmt.Sprint(want) {
		t.Errorf("acme events %v, want %v", counted, want)
	}
	out := logs.String()
	if !strings.Contains(out, "acme challenge published") {
		t.Fatalf("no log line for a published challenge:\n%s", out)
	}
	for _, v := range []string{valA, valB, valC, valC[:40]} {
		if strings.Contains(out, v) {
			t.Errorf("the log holds a challenge value:\n%s", out)
		}
	}
}

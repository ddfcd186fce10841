package daemon_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/daemon"
	"github.com/nasreach/nasreach/daemon/daemontest"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/rs/zerolog"
)

// challengeName is the TXT name of device's ACME challenge in the test zone.
func challengeName(device string) string { return "_acme-challenge." + daemontest.FQDN(device) }

// txtValues returns the strings of the TXT answer to a query for name, over
// TCP: over UDP two values (a name and its wildcard's) are more than three
// times a query without EDNS, and come truncated (dnsserver's amplification
// bound).
func txtValues(td *daemontest.Daemon, name string) []string {
	td.T.Helper()
	var out []string
	for _, rr := range td.Query("tcp", name, dns.TypeTXT).Answer {
		if txt, ok := rr.(*dns.TXT); ok {
			out = append(out, txt.Txt...)
		}
	}
	return out
}

// putChallenge publishes values for device with token and fails the test
// unless the API accepts them.
func putChallenge(td *daemontest.Daemon, device, token string, values ...string) {
	td.T.Helper()
	if code, body := td.Do(http.MethodPut, "/v1/devices/"+device+"/acme-challenge", token, map[string][]string{"values": values}); code != http.StatusOK {
		td.T.Fatalf("PUT acme-challenge of %s: HTTP %d %s", device, code, body)
	}
}

func TestACMEChallengeIsInTheNextAnswerUntilItsHourEnds(t *testing.T) {
	clk := testutil.NewClock(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	td := daemontest.Start(t, withClock(clk))
	tok := td.AddDevice("nas1")
	a, b := testutil.ChallengeValue(0), testutil.ChallengeValue(1)
	putChallenge(td, "nas1", tok, a)
	clk.Advance(30 * time.Minute)
	putChallenge(td, "nas1", tok, b)
	if got := txtValues(td, challengeName("nas1")); !slices.Equal(got, []string{a, b}) {
		t.Fatalf("TXT after two PUTs: %q", got)
	}
	clk.Advance(30 * time.Minute)
	if _, err := td.Daemon.Store().Sweep(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := txtValues(td, challengeName("nas1")); !slices.Equal(got, []string{b}) {
		t.Fatalf("TXT an hour after the first PUT: %q, want only the second value", got)
	}
	// The daemon sweeps on its own as well; a restart keeps what is left.
	td.Restart()
	if got := txtValues(td, challengeName("nas1")); !slices.Equal(got, []string{b}) {
		t.Fatalf("TXT after a restart: %q", got)
	}
	if code, _ := td.Do(http.MethodDelete, "/v1/devices/nas1/acme-challenge", tok, nil); code != http.StatusNoContent {
		t.Fatalf("DELETE: HTTP %d", code)
	}
	r := td.Query("udp", challengeName("nas1"), dns.TypeTXT)
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 || len(r.Ns) != 1 || r.Ns[0].Header().Ttl != 10 {
		t.Fatalf("TXT after DELETE: want NODATA with a 10 s negative TTL, got\n%v", r)
	}
}

func TestCAAIsServedAtTheApex(t *testing.T) {
	td := daemontest.Start(t, func(c *daemon.Config) {
		c.CAA = []string{`0 issue "letsencrypt.org"`, `0 iodef "mailto:hostmaster@example.net"`}
	})
	r := td.Query("tcp", daemontest.Zone, dns.TypeCAA) // over UDP, two CAA records are over 3 times the query
	var got []string
	for _, rr := range r.Answer {
		got = append(got, strings.Join(strings.Fields(rr.String())[4:], " "))
	}
	want := []string{`0 issue "letsencrypt.org"`, `0 iodef "mailto:hostmaster@example.net"`}
	if !slices.Equal(got, want) {
		t.Fatalf("CAA at the apex: %q, want %q", got, want)
	}
	err := daemon.Config{DataDir: t.TempDir(), CAA: []string{`0 isue "x"`}}.Validate()
	var se *daemon.SettingError
	if !errors.As(err, &se) || se.Setting != "caa" || !strings.Contains(err.Error(), `tag "isue"`) {
		t.Fatalf("a bad --caa: Validate() = %v, want a refusal of setting caa naming the tag", err)
	}
}

func TestACMEChallengeValuesNeverReachALog(t *testing.T) {
	var logs testutil.Buffer
	td := daemontest.Start(t, func(c *daemon.Config) {
		c.Privacy.LogQueries = true
		c.Logger = zerolog.New(&logs).Level(zerolog.DebugLevel)
	})
	tok := td.AddDevice("nas1")
	other := td.AddDevice("nas2")
	values := []string{testutil.ChallengeValue(0), testutil.ChallengeValue(1), testutil.ChallengeValue(2), testutil.ChallengeValue(3)[:42] + "!"}
	putChallenge(td, "nas1", tok, values[0], values[1])
	td.Do(http.MethodPut, "/v1/devices/nas1/acme-challenge", other, map[string][]string{"values": {values[2]}})
	td.Do(http.MethodPut, "/v1/devices/nas1/acme-challenge", tok, map[string][]string{"values": {values[3]}})
	acmeDNSUpdate(t, td, "nas1", tok, values[2])
	if got := txtValues(td, challengeName("nas1")); len(got) != 2 {
		t.Fatalf("TXT: %q, want the last two values (acme-dns keeps two)", got)
	}
	td.Do(http.MethodDelete, "/v1/devices/nas1/acme-challenge", tok, map[string][]string{"values": {values[1]}})

	fams, _ := scrape(t, td)
	for kind, want := range map[string]float64{"set": 2, "delete": 1} {
		if v := value(t, fams, "nasreach_connection_events_total", map[string]string{"service": "acme", "kind": kind, "outcome": "ok"}); v != want {
			t.Errorf("acme %s events counted %v, want %v", kind, v, want)
		}
	}
	td.Stop()
	files, _ := filepath.Glob(filepath.Join(td.Dir, "logs", "conn-*.jsonl"))
	var connlog []byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		connlog = append(connlog, b...)
	}
	if !bytes.Contains(connlog, []byte(`"service":"acme"`)) || !bytes.Contains(connlog, []byte(`"detail":"_acme-challenge.nas1.myqnapcloud.com TXT"`)) {
		t.Fatalf("the connection log lacks the acme events or the TXT query:\n%s", connlog)
	}
	for _, v := range values {
		if bytes.Contains(connlog, []byte(v)) {
			t.Errorf("the connection log holds a challenge value:\n%s", connlog)
		}
		if strings.Contains(logs.String(), v) {
			t.Errorf("the daemon's log holds a challenge value:\n%s", logs.String())
		}
	}
}

// acmeDNSUpdate sends acme-dns's POST /update for device and fails the test
// unless it is accepted.
func acmeDNSUpdate(t *testing.T, td *daemontest.Daemon, device, token, value string) {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"subdomain": device, "txt": value})
	req, _ := http.NewRequest(http.MethodPost, td.HTTP+"/update", bytes.NewReader(body))
	req.Header.Set("X-Api-User", device)
	req.Header.Set("X-Api-Key", token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("acme-dns update: HTTP %d", resp.StatusCode)
	}
}

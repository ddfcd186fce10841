package metrics

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/connlog"
	"github.com/nasreach/nasreach/internal/testutil"
)

func TestRcodeNameSaysBADVERSForSixteen(t *testing.T) {
	for rcode, want := range map[int]string{
		dns.RcodeSuccess: "NOERROR", dns.RcodeNameError: "NXDOMAIN", dns.RcodeRefused: "REFUSED",
		dns.RcodeBadVers: "BADVERS", // miekg/dns says BADSIG: the same number in TSIG
		12:               "other", 4095: "other", -1: "other",
	} {
		if got := RcodeName(rcode); got != want {
			t.Errorf("RcodeName(%d) = %q, want %q", rcode, got, want)
		}
	}
}

func TestQueriesAreCountedByRcodeName(t *testing.T) {
	m := start(t, Config{})
	m.ObserveQuery(dns.TypeA, dns.RcodeBadVers) // a cached (hot) pair
	m.ObserveQuery(dns.TypeA, dns.RcodeBadVers)
	m.ObserveQuery(dns.TypeHINFO, dns.RcodeBadVers) // not cached
	m.ObserveQuery(dns.TypeA, 12)                   // unassigned: "other", not ""
	body := scrape(t, m,
		`nasreach_dns_queries_total{rcode="BADVERS",type="A"} 2`,
		`nasreach_dns_queries_total{rcode="BADVERS",type="HINFO"} 1`,
		`nasreach_dns_queries_total{rcode="other",type="A"} 1`,
	)
	if strings.Contains(body, "BADSIG") || strings.Contains(body, `rcode=""`) {
		t.Errorf("scrape names an rcode BADSIG or leaves it empty:\n%s", body)
	}
}

func TestRefusedConnectionsAreCountedByListenerAndReason(t *testing.T) {
	m := start(t, Config{ConnsRefused: func() map[string]ConnsRefused {
		return map[string]ConnsRefused{"http": {Total: 2, Source: 40}, "link": {}}
	}})
	scrape(t, m,
		`nasreach_connections_refused_total{listener="http",reason="source"} 40`,
		`nasreach_connections_refused_total{listener="http",reason="total"} 2`,
		`nasreach_connections_refused_total{listener="link",reason="source"} 0`,
	)
}

// start serves cfg's metrics on 127.0.0.1 until the test ends.
func start(t *testing.T, cfg Config) *Metrics {
	t.Helper()
	cfg.Addr = "127.0.0.1:0"
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Shutdown(context.Background()) })
	return m
}

// scrape returns m's /metrics page and fails the test unless it holds
// every line of want.
func scrape(t *testing.T, m *Metrics, want ...string) string {
	t.Helper()
	return testutil.Scrape(t, "http://"+m.Addr().String()+"/metrics", want...)
}

// Link's direct-path events: every attempt ends with the client on a path,
// refusals and losses included; time to direct comes from the event's
// start and end.
func TestLinkPathsAndPunchesAreCounted(t *testing.T) {
	m, err := New(Config{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Shutdown(context.Background()) })
	now := time.Now()
	for _, e := range []connlog.Event{
		{Service: "link", Kind: "punch", Outcome: "direct", Start: now.Add(-300 * time.Millisecond), Time: now},
		{Service: "link", Kind: "punch", Outcome: "no_answer", Time: now},
		{Service: "link", Kind: "punch", Outcome: "failed", Time: now},
		{Service: "link", Kind: "punch", Outcome: "lost", Time: now},
		{Service: "link", Kind: "exchange", Outcome: "refused", Time: now},
		{Service: "link", Kind: "exchange", Outcome: "ok", Time: now},   // counted by its report
		{Service: "link", Kind: "renew", Outcome: "refused", Time: now}, // the client reports the loss
	} {
		m.ObserveEvent(e)
	}
	resp, err := http.Get("http://" + m.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		`nasreach_link_paths_total{path="direct"} 1`,
		`nasreach_link_paths_total{path="relay"} 4`,
		`nasreach_link_punch_total{outcome="direct"} 1`,
		`nasreach_link_punch_total{outcome="no_answer"} 1`,
		`nasreach_link_punch_total{outcome="failed"} 1`,
		`nasreach_link_punch_total{outcome="refused"} 1`,
		`nasreach_link_time_to_direct_seconds_bucket{le="0.5"} 1`,
		`nasreach_link_time_to_direct_seconds_count 1`,
	} {
		if !strings.Contains(string(body), want+"\n") {
			t.Errorf("scrape lacks %s", want)
		}
	}
	if strings.Contains(string(body), `nasreach_link_punch_total{outcome="lost"}`) {
		t.Error("a lost path is counted as a punch attempt")
	}
}

package metrics

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/miekg/dns"
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
	resp, err := http.Get("http://" + m.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range want {
		if !strings.Contains(string(body), w+"\n") {
			t.Errorf("scrape lacks %s", w)
		}
	}
	return string(body)
}

package daemon_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/daemon/daemontest"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape fetches and parses /metrics in the Prometheus text format.
func scrape(t *testing.T, td *daemontest.Daemon) (map[string][]labelled, string) {
	t.Helper()
	resp, err := http.Get(td.Metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(string(raw)))
	if err != nil {
		t.Fatalf("scrape does not parse as Prometheus text: %v", err)
	}
	out := map[string][]labelled{}
	for name, f := range families {
		for _, m := range f.GetMetric() {
			l := labelled{labels: map[string]string{}}
			for _, p := range m.GetLabel() {
				l.labels[p.GetName()] = p.GetValue()
			}
			switch {
			case m.Counter != nil:
				l.value = m.Counter.GetValue()
			case m.Gauge != nil:
				l.value = m.Gauge.GetValue()
			}
			out[name] = append(out[name], l)
		}
	}
	return out, string(raw)
}

type labelled struct {
	labels map[string]string
	value  float64
}

func value(t *testing.T, fams map[string][]labelled, name string, labels map[string]string) float64 {
	t.Helper()
	v, ok := lookup(fams, name, labels)
	if !ok {
		t.Errorf("%s%v not in the scrape", name, labels)
	}
	return v
}

// lookup finds the series of name with labels in a scrape.
func lookup(fams map[string][]labelled, name string, labels map[string]string) (float64, bool) {
	for _, l := range fams[name] {
		match := true
		for k, v := range labels {
			if l.labels[k] != v {
				match = false
			}
		}
		if match {
			return l.value, true
		}
	}
	return 0, false
}

func TestMetricsCountTrafficWithoutNamesOrAddresses(t *testing.T) {
	td := daemontest.Start(t)
	token := td.AddDevice("secretnas")
	req, _ := http.NewRequest(http.MethodGet, td.HTTP+"/nic/update?hostname=secretnas.myqnapcloud.com&myip=198.51.100.44", nil)
	req.SetBasicAuth("secretnas", token)
	for range 2 { // good, then nochg
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	for range 5 {
		td.Query("udp", "secretnas.myqnapcloud.com", dns.TypeA)
	}
	td.Query("tcp", "nobody.myqnapcloud.com", dns.TypeAAAA)

	// The DNS server counts a query once its answer is sent, so the client
	// can hold the last answer a moment before the count shows it.
	var fams map[string][]labelled
	var raw string
	testutil.WaitFor(t, 5*time.Second, "the six queries to be counted", func() bool {
		fams, raw = scrape(t, td)
		a, _ := lookup(fams, "nasreach_dns_queries_total", map[string]string{"type": "A", "rcode": "NOERROR"})
		aaaa, _ := lookup(fams, "nasreach_dns_queries_total", map[string]string{"type": "AAAA", "rcode": "NXDOMAIN"})
		return a >= 5 && aaaa >= 1
	})
	if got := value(t, fams, "nasreach_dns_queries_total", map[string]string{"type": "A", "rcode": "NOERROR"}); got != 5 {
		t.Errorf("A/NOERROR queries = %v, want 5", got)
	}
	if got := value(t, fams, "nasreach_dns_queries_total", map[string]string{"type": "AAAA", "rcode": "NXDOMAIN"}); got != 1 {
		t.Errorf("AAAA/NXDOMAIN queries = %v, want 1", got)
	}
	for outcome, want := range map[string]float64{"good": 1, "nochg": 1} {
		if got := value(t, fams, "nasreach_updates_total", map[string]string{"outcome": outcome}); got != want {
			t.Errorf("updates %s = %v, want %v", outcome, got, want)
		}
	}
	if got := value(t, fams, "nasreach_devices", nil); got != 1 {
		t.Errorf("devices = %v, want 1", got)
	}
	if value(t, fams, "nasreach_store_bytes", nil) <= 0 || len(fams["nasreach_build_info"]) != 1 {
		t.Error("store size or build info missing")
	}
	if value(t, fams, "nasreach_connlog_written_total", nil)+value(t, fams, "nasreach_connlog_dropped_total", nil) < 0 {
		t.Error("connection log counters missing")
	}
	for _, leak := range []string{"secretnas", "198.51.100", "127.0.0.1"} {
		if strings.Contains(raw, leak) {
			t.Errorf("the scrape contains %q", leak)
		}
	}
}

func TestHealthAndReadiness(t *testing.T) {
	td := daemontest.Start(t)
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200} {
		resp, err := http.Get(td.Metrics + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("%s = %d, want %d", path, resp.StatusCode, want)
		}
	}
	td.Daemon.Store().Close() // the store going away must show
	resp, err := http.Get(td.Metrics + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "store") {
		t.Errorf("/readyz with the store closed = %d %q, want 503 naming the store", resp.StatusCode, body)
	}
}

// TestStatusPageListsTheRunningDaemon fetches the metrics listener's / as an
// operator's browser would and finds the daemon's own listeners and devices
// on it, and nothing that names a device.
func TestStatusPageListsTheRunningDaemon(t *testing.T) {
	td := daemontest.Start(t, daemontest.WithTURN, daemontest.WithLink)
	td.AddDevice("nas1")
	td.AddDevice("nas2")
	resp, err := http.Get(td.Metrics + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET / on the metrics listener = %s", resp.Status)
	}
	a := td.Daemon.Addrs()
	for _, want := range []string{
		"DNS (UDP, TCP)</td><td>" + a.DNS.String(), "HTTP API</td><td>" + a.HTTP.String(),
		"STUN and TURN (UDP, TCP)</td><td>" + a.STUN.String(), "Link relay (QUIC)</td><td>" + a.Link.String(),
		"devices registered</td><td>2", ">ready<",
	} {
		if !strings.Contains(string(page), want) {
			t.Errorf("status page lacks %q", want)
		}
	}
	if strings.Contains(string(page), "nas1") {
		t.Error("status page names a device")
	}
}

// TestMetricsCountBADVERSAsBADVERS: a query with EDNS version 1 is answered
// BADVERS (16), which miekg/dns's table calls BADSIG (TSIG's 16); the
// metric must say what the server answered.
func TestMetricsCountBADVERSAsBADVERS(t *testing.T) {
	td := daemontest.Start(t)
	q := new(dns.Msg).SetQuestion("nas1.myqnapcloud.com.", dns.TypeA)
	q.SetEdns0(1232, false)
	q.IsEdns0().SetVersion(1)
	r, _, err := (&dns.Client{Net: "udp", Timeout: 2 * time.Second}).Exchange(q, td.DNS)
	if err != nil {
		t.Fatal(err)
	}
	if r.Rcode != dns.RcodeBadVers {
		t.Fatalf("EDNS version 1 answered rcode %d, want BADVERS (16)", r.Rcode)
	}
	var fams map[string][]labelled
	var raw string
	testutil.WaitFor(t, 5*time.Second, "the query to be counted", func() bool {
		fams, raw = scrape(t, td)
		return strings.Contains(raw, `nasreach_dns_queries_total{rcode="`)
	})
	if got := value(t, fams, "nasreach_dns_queries_total", map[string]string{"type": "A", "rcode": "BADVERS"}); got != 1 {
		t.Errorf("A/BADVERS queries = %v, want 1", got)
	}
	if strings.Contains(raw, "BADSIG") {
		t.Error("the scrape counts a BADSIG the server never sends")
	}
}

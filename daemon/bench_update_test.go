package daemon_test

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/daemon"
	"github.com/nasreach/nasreach/daemon/daemontest"
)

// TestBenchDurableUpdates measures durable address updates a second, the
// same daemon taking them by dyndns2 (HTTP, as ddclient's dyndns2 protocol
// sends them) and by RFC 2136 UPDATE (a signed UDP message, as nsupdate and
// ddclient's nsupdate protocol send them): 200 concurrent clients, each
// update a real change acknowledged after its commit, 1,000 devices. It
// prints updates a second, p50 and p99 for each and their ratio; it runs
// only under make bench-update (NASREACH_BENCH_UPDATE=1).
func TestBenchDurableUpdates(t *testing.T) {
	if os.Getenv("NASREACH_BENCH_UPDATE") == "" {
		t.Skip("a benchmark: make bench-update runs it")
	}
	const (
		devices = 1000
		clients = 200
		updates = 20_000
	)
	// 200 HTTP clients from one address are over the per-source cap of
	// connections; a trusted proxy's address is not capped.
	td := daemontest.Start(t, func(c *daemon.Config) { c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")} })
	tokens := make([]string, devices)
	keys := make([]daemontest.TSIGKey, devices)
	for i := range devices {
		name := fmt.Sprintf("bench%d", i)
		tokens[i] = td.AddDevice(name)
		keys[i] = td.IssueTSIGKey(name, tokens[i])
	}
	httpc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients}, Timeout: 10 * time.Second}
	zone := dns.Fqdn(daemontest.Zone)
	// Update n goes to device n%devices with an address no update used
	// before, so that every one is a change.
	addr := func(round, n int) string { return fmt.Sprintf("10.%d.%d.%d", round, n/250%250, 1+n%250) }
	via := map[string]func(round, n int) error{
		"dyndns2": func(round, n int) error {
			d := n % devices
			name := fmt.Sprintf("bench%d", d)
			ip := addr(round, n)
			code, body, err := daemontest.DynDNS2Update(context.Background(), httpc, td.HTTP, name, tokens[d], daemontest.FQDN(name), ip)
			if err != nil || code != http.StatusOK || body != "good "+ip+"\n" {
				return fmt.Errorf("dyndns2 update of %s: HTTP %d %q %v", name, code, body, err)
			}
			return nil
		},
		"rfc2136": func(round, n int) error {
			d := n % devices
			host := dns.Fqdn(daemontest.FQDN(fmt.Sprintf("bench%d", d)))
			m := new(dns.Msg).SetUpdate(zone)
			del := &dns.RR_Header{Name: host, Rrtype: dns.TypeA, Class: dns.ClassANY}
			add, err := dns.NewRR(host + " 60 IN A " + addr(round, n))
			if err != nil {
				return err
			}
			m.Ns = []dns.RR{del, add}
			k := keys[d]
			m.SetTsig(dns.CanonicalName(k.Name), dns.HmacSHA256, 300, time.Now().Unix())
			c := &dns.Client{Timeout: 10 * time.Second, TsigSecret: map[string]string{dns.CanonicalName(k.Name): k.Secret}}
			r, _, err := c.Exchange(m, td.DNS)
			if err != nil || r.Rcode != dns.RcodeSuccess {
				return fmt.Errorf("UPDATE of %s: %v %v", host, r, err)
			}
			return nil
		},
	}
	rate := map[string]float64{}
	for round, name := range []string{"dyndns2", "rfc2136"} {
		update := via[name]
		r := driveUpdates(t, clients, updates, func(_, n int) error { return update(round+1, n) })
		rate[name] = r.rate
		fmt.Printf("update via=%s durable_updates_per_s=%.0f clients=%d updates=%d p50_ms=%.1f p99_ms=%.1f\n",
			name, r.rate, clients, updates, r.p50ms, r.p99ms)
	}
	fmt.Printf("update rfc2136/dyndns2=%.2f\n", rate["rfc2136"]/rate["dyndns2"])
}

// updateRun is what driveUpdates measured.
type updateRun struct{ rate, p50ms, p99ms float64 }

// driveUpdates has clients goroutines send updates updates between them,
// update(client, n) sending the n-th, and returns the updates a second and
// the p50 and p99 of their times; the first error fails the test.
func driveUpdates(t *testing.T, clients, updates int, update func(client, n int) error) updateRun {
	t.Helper()
	var next atomic.Int64
	took := make([][]time.Duration, clients)
	var wg sync.WaitGroup
	var failed atomic.Value
	start := time.Now()
	for c := range clients {
		wg.Go(func() {
			for {
				n := int(next.Add(1)) - 1
				if n >= updates {
					return
				}
				t0 := time.Now()
				if err := update(c, n); err != nil {
					failed.Store(err)
					return
				}
				took[c] = append(took[c], time.Since(t0))
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err, _ := failed.Load().(error); err != nil {
		t.Fatal(err)
	}
	all := slices.Sorted(slices.Values(slices.Concat(took...)))
	pct := func(p float64) float64 { return all[min(len(all)-1, int(p*float64(len(all))))].Seconds() * 1000 }
	return updateRun{rate: float64(updates) / elapsed.Seconds(), p50ms: pct(0.50), p99ms: pct(0.99)}
}

package main

// kill -9 of a real nasreach node on etcd in the middle of a storm of
// dyndns2 clients spread over three nodes.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/daemon"
	"github.com/nasreach/nasreach/daemon/daemontest"
	"github.com/nasreach/nasreach/internal/etcdtest"
	"github.com/nasreach/nasreach/internal/testutil"
)

// readyAddrs waits for the daemon's "nasreach ready" log line (JSON) and
// returns its DNS and HTTP addresses.
func readyAddrs(t *testing.T, p *nasreachProcess) (dnsAddr, httpBase string) {
	t.Helper()
	testutil.WaitFor(t, 20*time.Second, "the node's ready line", func() bool {
		sc := bufio.NewScanner(strings.NewReader(p.stderr.String()))
		for sc.Scan() {
			var line struct{ Message, DNS, HTTP string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Message == "nasreach ready" {
				dnsAddr, httpBase = line.DNS, "http://"+line.HTTP
				return true
			}
		}
		return false
	})
	return dnsAddr, httpBase
}

// TestKilledNodeLosesNoAcknowledgedUpdate: 16 dyndns2 clients, one device
// each, send updates spread over three nodes sharing a three-member etcd
// cluster; one node, a real process, is killed with SIGKILL mid-storm,
// and its clients move to the next node. Afterwards every device answers,
// on both surviving nodes and on the killed node started again, with the
// last address its client had acknowledged, or with the one update that
// was in flight at the kill and got no answer; the housekeeping, which the
// killed node ran (it started first), moves to another node within its
// lease.
func TestKilledNodeLosesNoAcknowledgedUpdate(t *testing.T) {
	c, err := etcdtest.Start(testutil.NeedTool(t, "etcd"), 3)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Stop() })
	bin := buildNasreach(t)
	env := []string{"NASREACH_STORE=etcd", "NASREACH_ETCD_ENDPOINTS=" + strings.Join(c.Endpoints, ","),
		"NASREACH_ETCD_PREFIX=/storm", "NASREACH_ZONE=" + daemontest.Zone}
	victim := startNasreach(t, bin, env...)
	_, victimHTTP := readyAddrs(t, victim)
	onEtcd := func(cfg *daemon.Config) {
		cfg.Store = daemon.StoreConfig{Backend: "etcd", EtcdEndpoints: c.Endpoints, EtcdPrefix: "/storm"}
	}
	a, b := daemontest.Start(t, onEtcd), daemontest.Start(t, onEtcd)
	bases := []string{victimHTTP, a.HTTP, b.HTTP}
	sweeping := func(td *daemontest.Daemon) bool { return td.Daemon.Store().(interface{ Sweeping() bool }).Sweeping() }
	if sweeping(a) || sweeping(b) {
		t.Fatal("a node started after the victim was elected for housekeeping") // the victim campaigned first
	}

	const clients = 16
	tokens := make([]string, clients)
	for i := range clients {
		tokens[i] = a.AddDevice(fmt.Sprintf("nas%d", i))
	}
	type outcome struct {
		acked   netip.Addr   // the last update answered "good" or "nochg"
		unknown []netip.Addr // updates sent after it that got no answer
		sent    int
	}
	results := make([]outcome, clients)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	started := make(chan struct{})
	var once sync.Once
	for i := range clients {
		wg.Go(func() {
			r := &results[i]
			hc := &http.Client{Timeout: 5 * time.Second}
			name := fmt.Sprintf("nas%d", i)
			node := i % len(bases)
			for n := 0; n < 1000 && ctx.Err() == nil; n++ {
				ip := netip.AddrFrom4([4]byte{10, byte(i), byte(n >> 8), byte(n)})
				code, body, err := daemontest.DynDNS2Update(context.Background(), hc, bases[node], name, tokens[i], daemontest.FQDN(name), ip.String())
				r.sent++
				if n == 20 {
					once.Do(func() { close(started) })
				}
				switch {
				case err == nil && code == http.StatusOK && strings.HasPrefix(body, "good "):
					r.acked, r.unknown = ip, nil
				case err != nil:
					r.unknown = append(r.unknown, ip) // the node died with it
					node = (node + 1) % len(bases)
					if node == 0 {
						node = 1
					}
				default:
					t.Errorf("%s: HTTP %d %q from node %d", name, code, body, node)
					return
				}
			}
		})
	}
	<-started
	if err := victim.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-victim.exited
	killed := time.Now()
	testutil.WaitFor(t, 15*time.Second, "housekeeping to move off the killed node", func() bool { return sweeping(a) || sweeping(b) })
	t.Logf("housekeeping moved %v after the kill", time.Since(killed))
	wg.Wait()

	again := startNasreach(t, bin, env...)
	againDNS, _ := readyAddrs(t, again)
	total := 0
	for i, r := range results {
		total += r.sent
		name := daemontest.FQDN(fmt.Sprintf("nas%d", i))
		ok := func(got netip.Addr) bool {
			return got == r.acked || (len(r.unknown) > 0 && got == r.unknown[0])
		}
		for _, dnsAddr := range []string{a.DNS, b.DNS, againDNS} {
			var got netip.Addr
			testutil.WaitFor(t, 5*time.Second, name+" to settle at "+dnsAddr, func() bool {
				m := new(dns.Msg).SetQuestion(dns.Fqdn(name), dns.TypeA)
				resp, _, err := (&dns.Client{Timeout: time.Second}).Exchange(m, dnsAddr)
				if err != nil || len(resp.Answer) != 1 {
					return false
				}
				got, _ = netip.AddrFromSlice(resp.Answer[0].(*dns.A).A.To4())
				return ok(got)
			})
		}
	}
	t.Logf("%d dyndns2 updates from %d clients over 3 nodes, one killed with SIGKILL mid-storm; none acknowledged was lost", total, clients)
}

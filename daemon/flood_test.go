package daemon_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/daemon"
	"github.com/nasreach/nasreach/daemon/daemontest"
	"github.com/nasreach/nasreach/internal/connlimit"
	"github.com/nasreach/nasreach/stun"
)

// Issue 16 §2, bounded: slow connections from five addresses, a byte a
// second each, used to take every file descriptor, and an owner's dyndns2
// update timed out. Here the file limit sizes each TCP listener's cap at 400
// connections, 8 per source; the five addresses try 100 each on HTTP, DNS
// and STUN/TURN (1,500 in all, more than every listener's total), and
// another address's update, DNS query and STUN Binding are answered within
// a second all the same.
func TestOwnersUpdateCompletesDuringAConnectionFlood(t *testing.T) {
	const (
		perListener   = 400
		floodSources  = 5
		floodPerSrc   = 100 // per listener
		floodDuration = 2 * time.Second
	)
	perSource := connlimit.PerSource(perListener)
	td := daemontest.Start(t, daemontest.WithTURN, func(c *daemon.Config) {
		c.TURN.MaxAllocations = 100
		// reserved (512) + TURN's relay sockets (100) + three listeners.
		c.FileLimit = 512 + 100 + 3*perListener
	})
	tok := td.AddDevice("nas1")

	targets := []struct{ name, addr string }{
		{"http", netip.MustParseAddrPort(td.HTTP[len("http://"):]).String()},
		{"dns", td.DNS},
		{"turn", td.STUN},
	}
	flood := &slowFlood{}
	t.Cleanup(flood.stop)
	start := time.Now()
	for i := range floodSources {
		src := fmt.Sprintf("127.0.0.%d", i+2)
		for _, tg := range targets {
			flood.open(t, src, tg.addr, floodPerSrc)
		}
	}
	flood.trickle(time.Second)
	t.Logf("flood: %d connections from %d sources opened in %v", flood.count(), floodSources, time.Since(start).Round(time.Millisecond))

	// Every listener has refused the flood's excess per source, and holds
	// no more than the flood's share of its cap.
	metrics := func() map[string][]labelled { m, _ := scrape(t, td); return m }
	waitRefused := time.Now().Add(10 * time.Second)
	excess := float64(floodSources * (floodPerSrc - perSource))
	for _, tg := range targets {
		for {
			v, _ := lookup(metrics(), "nasreach_connections_refused_total", map[string]string{"listener": tg.name, "reason": "source"})
			if v >= excess {
				break
			}
			if time.Now().After(waitRefused) {
				t.Fatalf("%s refused %v connections per source, want the flood's excess %v", tg.name, v, excess)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	time.Sleep(floodDuration / 2) // the slow connections trickle on

	// The owner, from another address, during the flood.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	began := time.Now()
	code, body, err := daemontest.DynDNS2Update(ctx, &http.Client{Transport: &http.Transport{}}, td.HTTP, "nas1", tok, daemontest.FQDN("nas1"), "203.0.113.7")
	took := time.Since(began)
	if err != nil || code != http.StatusOK || body != "good 203.0.113.7\n" {
		t.Fatalf("owner's dyndns2 update during the flood: HTTP %d %q %v after %v, want good within 1s", code, body, err, took)
	}
	t.Logf("owner's dyndns2 update during the flood: %v", took.Round(time.Microsecond))

	began = time.Now()
	q := new(dns.Msg).SetQuestion(dns.Fqdn(daemontest.FQDN("nas1")), dns.TypeA)
	r, _, err := (&dns.Client{Net: "tcp", Timeout: time.Second}).Exchange(q, td.DNS)
	if err != nil {
		t.Fatalf("DNS over TCP during the flood: %v", err)
	}
	if err := daemontest.CheckAnswer(r, dns.TypeA, netip.MustParseAddr("203.0.113.7")); err != nil {
		t.Fatalf("DNS over TCP during the flood: %v", err)
	}
	t.Logf("DNS over TCP during the flood: %v", time.Since(began).Round(time.Microsecond))

	began = time.Now()
	sc, err := net.DialTimeout("tcp", td.STUN, time.Second)
	if err != nil {
		t.Fatalf("STUN over TCP during the flood: %v", err)
	}
	defer sc.Close()
	client, err := stun.NewClient(stun.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.DiscoverStream(ctx, sc); err != nil {
		t.Fatalf("STUN Binding over TCP during the flood: %v", err)
	}
	t.Logf("STUN Binding over TCP during the flood: %v", time.Since(began).Round(time.Microsecond))

	fams := metrics()
	for _, tg := range targets {
		src, _ := lookup(fams, "nasreach_connections_refused_total", map[string]string{"listener": tg.name, "reason": "source"})
		total, _ := lookup(fams, "nasreach_connections_refused_total", map[string]string{"listener": tg.name, "reason": "total"})
		t.Logf("%s: %v refused per source, %v over the total", tg.name, src, total)
		if total != 0 {
			t.Errorf("%s refused %v connections over its total: the flood reached the cap the others share", tg.name, total)
		}
	}
}

// slowFlood holds connections from several sources and sends a byte a
// second on each, as the attacker did; refused ones fail their
// writes and are left alone.
type slowFlood struct {
	mu    sync.Mutex
	conns []net.Conn
	done  chan struct{}
	wg    sync.WaitGroup
}

// open dials addr n times from src. A dial the server resets before it
// returns (refused over a cap) is counted as a connection all the same.
func (f *slowFlood) open(t *testing.T, src, addr string, n int) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	for range n {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			continue // reset at once: refused
		}
		f.mu.Lock()
		f.conns = append(f.conns, c)
		f.mu.Unlock()
	}
}

func (f *slowFlood) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.conns)
}

// trickle writes a byte on every connection each interval until stop.
func (f *slowFlood) trickle(every time.Duration) {
	f.done = make(chan struct{})
	f.wg.Go(func() {
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			f.mu.Lock()
			for _, c := range f.conns {
				c.SetWriteDeadline(time.Now().Add(10 * time.Millisecond)) //nolint:errcheck // best effort
				c.Write([]byte{'G'})                                      //nolint:errcheck // refused ones fail
			}
			f.mu.Unlock()
			select {
			case <-f.done:
				return
			case <-tick.C:
			}
		}
	})
}

// stop ends the trickle and closes every connection.
func (f *slowFlood) stop() {
	if f.done != nil {
		close(f.done)
		f.wg.Wait()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		c.Close()
	}
}

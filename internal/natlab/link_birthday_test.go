package natlab_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/natlab"
	"github.com/nasreach/nasreach/link"
	"github.com/rs/zerolog"
)

// BenchmarkBirthdayProbing measures birthday probing in the lab: b.N
// attempts, each a new client reaching an agent across a symmetric NAT and
// a masquerading one (half with the symmetric NAT on the agent's side),
// four at a time. It reports the share that went direct, the time from the
// first session to the direct path, and how many ports the
// endpoint-independent side sprayed. Run it with a count:
//
//	go test -run '^$' -bench BirthdayProbing -benchtime 100x ./internal/natlab
func BenchmarkBirthdayProbing(b *testing.B) {
	lab := natlab.New(b)
	r := startLinkRelay(b, lab)
	sink := startHashSink(b)
	probes := &probeCounter{}
	log := zerolog.New(probes).Level(zerolog.DebugLevel)
	type pair struct {
		device                string
		agentHost, clientHost *natlab.Namespace
	}
	var pairs []pair
	for i := range 4 {
		ka, kc := natlab.Symmetric, natlab.Masquerade
		if i%2 == 1 {
			ka, kc = kc, ka
		}
		p := pair{device: fmt.Sprintf("bday%d", i), agentHost: lab.AddHome(ka).Host(), clientHost: lab.AddHome(kc).Host()}
		startLabAgent(b, r, p.agentHost, p.device, sink, log)
		pairs = append(pairs, p)
	}
	// An attempt: a new Dialer, its first session through the relay, then
	// the wait for its direct path.
	attempt := func(p pair) (time.Duration, bool, error) {
		d, err := link.NewDialer(link.DialerConfig{
			Server: r.addr.String(), RelayFingerprint: r.fp, KnownDevices: "-",
			Listen: netip.AddrPortFrom(p.clientHost.Addr, 0).String(), ListenUDP: listenIn(p.clientHost), Logger: log,
		})
		if err != nil {
			return 0, false, err
		}
		defer d.Close()
		ctx, cancel := context.WithTimeout(context.Background(), settleWait)
		defer cancel()
		start := time.Now()
		conn, err := d.Dial(ctx, p.device, 22)
		if err != nil {
			return 0, false, err
		}
		conn.Close()
		for time.Since(start) < link.BirthdayAfter+link.BirthdayWindow+2*time.Second {
			if d.PathTo(p.device).Direct {
				return time.Since(start), true, nil
			}
			time.Sleep(10 * time.Millisecond)
		}
		return time.Since(start), false, nil
	}
	var mu sync.Mutex
	var times []time.Duration
	failed := 0
	b.ResetTimer()
	for n := 0; n < b.N; n += len(pairs) {
		var wg sync.WaitGroup
		for i, p := range pairs {
			if n+i >= b.N {
				break
			}
			wg.Go(func() {
				took, direct, err := attempt(p)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err != nil:
					b.Errorf("attempt to %s: %v", p.device, err)
				case direct:
					times = append(times, took)
				default:
					failed++
				}
			})
		}
		wg.Wait()
	}
	b.StopTimer()
	slices.Sort(times)
	pct := func(q float64) float64 {
		if len(times) == 0 {
			return 0
		}
		return float64(times[int(q*float64(len(times)-1))].Milliseconds())
	}
	sprays := probes.sprays()
	mean := 0.0
	for _, s := range sprays {
		mean += float64(s) / float64(len(sprays))
	}
	b.ReportMetric(100*float64(len(times))/float64(b.N), "direct_%")
	b.ReportMetric(pct(0.5), "ms_p50")
	b.ReportMetric(pct(0.9), "ms_p90")
	b.ReportMetric(mean, "sprayed_ports_mean")
	b.Logf("%d attempts: %d direct, %d on the relay; to direct p50 %.0f ms, p90 %.0f ms, max %.0f ms; ports sprayed per attempt: mean %.0f, max %d",
		b.N, len(times), failed, pct(0.5), pct(0.9), pct(1), mean, slices.Max(append(sprays, 0)))
}

// probeCounter is a zerolog writer that keeps, from the "birthday probing
// ended" lines of the side that sprayed, how many ports it sprayed.
type probeCounter struct {
	mu     sync.Mutex
	counts []int
}

func (p *probeCounter) Write(b []byte) (int, error) {
	var line struct {
		Message string `json:"message"`
		Role    string `json:"role"`
		Probes  int    `json:"probes"`
	}
	if json.Unmarshal(b, &line) == nil && line.Message == "birthday probing ended" && line.Role == "spray ports" {
		p.mu.Lock()
		p.counts = append(p.counts, line.Probes)
		p.mu.Unlock()
	}
	return len(b), nil
}

func (p *probeCounter) sprays() []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.counts)
}

package dnsserver

import (
	"context"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/rs/zerolog"
)

// BenchmarkAXFR transfers the 100,000-device zone (an A and an AAAA each)
// over TCP on loopback, as a secondary would, and reports the heap: live
// before (the store's index and the fixture), and the peak of the live heap
// during the transfer, sampled every 20 ms after a forced collection (so
// garbage the collector has not reached yet does not count: with GOGC=100 the
// heap in use may always grow to twice what is live). The transfer streams a
// store snapshot, so the live peak should exceed the baseline by a few
// messages, not by a copy of the zone. The client discards each message as
// it arrives. The forced collections slow the transfer a little; s/axfr is
// the time with them.
func BenchmarkAXFR(b *testing.B) {
	fx := newBenchFixture(b)
	s, err := New(Config{Addr: "127.0.0.1:0", Zone: benchZone, Source: fx.st, Logger: zerolog.Nop(),
		Transfer: TransferConfig{Secondaries: secondaryAt("127.0.0.1")}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx) //nolint:errcheck
	})
	b.Run("devices=100000", func(b *testing.B) {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		baseline := ms.HeapAlloc
		var peak atomic.Uint64
		stop := make(chan struct{})
		sampled := make(chan struct{})
		go func() {
			defer close(sampled)
			var m runtime.MemStats
			for {
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
				runtime.GC()
				runtime.ReadMemStats(&m)
				if m.HeapAlloc > peak.Load() {
					peak.Store(m.HeapAlloc)
				}
			}
		}()
		var records, messages int
		start := time.Now()
		for b.Loop() {
			tr := &dns.Transfer{ReadTimeout: 30 * time.Second}
			ch, err := tr.In(new(dns.Msg).SetAxfr(benchZone), s.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			records, messages = 0, 0
			for env := range ch {
				if env.Error != nil {
					b.Fatal(env.Error)
				}
				records += len(env.RR)
				messages++
			}
		}
		elapsed := time.Since(start) / time.Duration(b.N)
		close(stop)
		<-sampled
		if records < 2*benchDevices {
			b.Fatalf("%d records transferred, want at least %d", records, 2*benchDevices)
		}
		b.ReportMetric(elapsed.Seconds(), "s/axfr")
		b.ReportMetric(float64(records), "records")
		b.ReportMetric(float64(messages), "messages")
		b.ReportMetric(float64(baseline)/(1<<20), "live-before-MiB")
		b.ReportMetric(float64(max(peak.Load(), baseline))/(1<<20), "live-peak-MiB")
		b.Logf("AXFR of %d devices: %d records in %d messages, %s; live heap %.1f MiB before, at most %.1f MiB during",
			benchDevices, records, messages, elapsed.Round(time.Millisecond), float64(baseline)/(1<<20), float64(peak.Load())/(1<<20))
	})
}

package dnsserver

import (
	"encoding/binary"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"testing"
	"time"
)

// BenchmarkFastPathRRL is what rate limiting costs the fast path, against
// the whole of a UDP query's CPU on it, as a reader spends it: for three
// servers in turn (RRL off, exempt, on), clients put 32 bench-dns mix
// queries in a reader's socket, and the reader takes them with one
// recvmmsg, answers them and sends the replies with one sendmmsg, as run
// does. Only the reader's part is counted, in CPU time (user and system) of
// the one OS thread the loop is locked to, so that the other processes of
// a shared machine stay out of it; the clients' sending and reading is not.
// "exempt" is the daemon's default seen from loopback; "on" limits every
// answer at a rate none reaches, from 16 client networks.
//
// It reports per query, from the median batch of each server: cpu-ns (the
// whole batch: recvmmsg, answers, sendmmsg), answer-ns (the answers alone),
// rrl-ns (answer-ns over off's) and rrl-%-of-query: rrl-ns as a share of
// off's whole cpu-ns, the figure issue 13 bounds at 3 %; rrl-ns-mean is
// rrl-ns from the means, outliers included (a batch the thread was
// interrupted in, say). The time to read the thread's clock is measured and
// taken out.
func BenchmarkFastPathRRL(b *testing.B) {
	fx := newBenchFixture(b)
	qs := fx.queries(b, 1<<14, benchMix...)
	type variant struct {
		name        string
		r           *fastReader
		clients     []*net.UDPConn
		cpu, answer []time.Duration // per batch
		short       int
	}
	variants := []*variant{{name: "off"}, {name: "exempt"}, {name: "on"}}
	for i, rrl := range []RRL{{}, rrlExempt, rrlOn} {
		v := variants[i]
		s := newBenchServer(b, fx, rrl)
		for i := range s.rrl.sets {
			s.rrl.sets[i].tat[0] = 0 // in memory, as in a server that has run a while
		}
		if s.fast == nil {
			b.Skip("no fast path on this system")
		}
		conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { conn.Close() })
		if v.r, err = newFastReader(s, conn, nil); err != nil {
			b.Fatal(err)
		}
		for k := range 16 {
			c, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, byte(k + 1), 1}), 0)), conn.LocalAddr().(*net.UDPAddr))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { c.Close() })
			v.clients = append(v.clients, c)
		}
	}

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	clock := threadClockCost(b)
	reply := make([]byte, 1500)
	i, round := 0, 0
	for b.Loop() {
		// Each server answers its own queries and goes first in turn: the
		// one after another on the same queries would find them in the cache.
		for k := range variants {
			vi := (round + k) % len(variants)
			v := variants[vi]
			c := v.clients[round%len(v.clients)]
			start := i + vi*len(qs)/len(variants)
			for j := range fastBatch {
				q := qs[(start+j)%len(qs)].wire
				binary.BigEndian.PutUint16(q, uint16(j))
				if _, err := c.Write(q); err != nil {
					b.Fatal(err)
				}
			}
			t0 := threadCPU(b)
			if !v.r.recv() || v.r.errno != 0 {
				b.Fatalf("recvmmsg: %v", v.r.errno)
			}
			t1 := threadCPU(b)
			nw := v.r.answer()
			t2 := threadCPU(b)
			if !v.r.send(v.r.wh[:nw]) {
				b.Fatal("sendmmsg failed")
			}
			t3 := threadCPU(b)
			// Three clock reads inside the whole, one inside the answers.
			v.cpu = append(v.cpu, t3-t0-3*clock)
			v.answer = append(v.answer, t2-t1-clock)
			if v.r.n != fastBatch || nw != fastBatch {
				v.short++
			}
			for range nw {
				c.SetReadDeadline(time.Now().Add(time.Second))
				if n, err := c.Read(reply); err != nil || n < 12 {
					b.Fatalf("reply: %v", err)
				}
			}
		}
		i += fastBatch
		round++
	}
	perQuery := func(ds []time.Duration, median bool) float64 {
		if median {
			return float64(slices.Sorted(slices.Values(ds))[len(ds)/2]) / fastBatch
		}
		var sum time.Duration
		for _, d := range ds {
			sum += d
		}
		return float64(sum) / float64(len(ds)*fastBatch)
	}
	off := variants[0]
	for _, v := range variants {
		if v.short > 0 || v.r.handed.Load() > 0 {
			b.Errorf("%s: %d batches short of %d, %d queries handed over", v.name, v.short, fastBatch, v.r.handed.Load())
		}
		b.ReportMetric(perQuery(v.cpu, true), "cpu-ns/query-"+v.name)
		b.ReportMetric(perQuery(v.answer, true), "answer-ns/query-"+v.name)
		if v != off {
			rrl := perQuery(v.answer, true) - perQuery(off.answer, true)
			b.ReportMetric(rrl, "rrl-ns/query-"+v.name)
			b.ReportMetric(100*rrl/perQuery(off.cpu, true), "rrl-%-of-query-"+v.name)
			b.ReportMetric(perQuery(v.answer, false)-perQuery(off.answer, false), "rrl-ns-mean/query-"+v.name)
		}
	}
}

// threadClockCost is what one threadCPU call adds to an interval it ends.
func threadClockCost(b *testing.B) time.Duration {
	const n = 1000
	t0 := threadCPU(b)
	for range n {
		threadCPU(b)
	}
	return (threadCPU(b) - t0) / (n + 1)
}

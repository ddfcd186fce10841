package dnsserver

// Benchmarks of nasreach's own DNS costs against a real store holding
// benchDevices devices (make bench-dns compares the whole daemon with Knot and
// NSD; these say where nasreach's time goes):
//
//	go test -run '^$' -bench . -benchmem ./dnsserver
//
// BenchmarkServeDNSUDP is the server on a real loopback socket; BenchmarkAnswer
// is the per-query work without sockets. Both print figures; neither asserts a
// timing. Cases ending in +rrl-on run every answer through response rate
// limiting (rates no query reaches, nobody exempt): the cost of RRL on the
// ordinary answer path; +rrl-exempt is the daemon's default seen from
// loopback (what make bench-dns measures).

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/store"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

const (
	benchDevices = 100_000
	benchZone    = "myqnapcloud.com."
	// benchLoaders concurrent writers let bbolt put many devices in each
	// fsynced commit, so that building the store takes seconds, not minutes.
	benchLoaders = 512
)

// benchKind is one part of the query mix make bench-dns sends.
type benchKind int

const (
	benchA benchKind = iota
	benchAAAA
	benchNX
)

func (k benchKind) String() string { return [...]string{"A", "AAAA", "NXDOMAIN"}[k] }

// benchQuery is one query with its wire form and what it must get back.
type benchQuery struct {
	kind benchKind
	msg  *dns.Msg
	wire []byte
}

// benchFixture is a store with benchDevices devices, each with an IPv4 and an
// IPv6 address.
type benchFixture struct {
	st    *store.Store
	names []string
}

// newBenchFixture builds the store in b's temporary directory through the
// store's public write path, as the API does. The caller's benchmark must use
// sub-benchmarks so that this runs once, not once per b.N round.
func newBenchFixture(b *testing.B) *benchFixture {
	b.Helper()
	st, err := store.Open(store.Config{Dir: b.TempDir(), SweepEvery: -1, Logger: zerolog.Nop()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	fx := &benchFixture{st: st, names: make([]string, benchDevices)}
	r := rand.New(rand.NewPCG(1, 1))
	for i := range fx.names {
		// Unique by the index suffix; the random part keeps the map keys from
		// sharing long prefixes, as real names do not.
		fx.names[i] = fmt.Sprintf("nas-%x-%d", r.Uint32(), i)
	}
	t0 := time.Now()
	ctx := context.Background()
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	for range benchLoaders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= benchDevices {
					return
				}
				_, _, err := st.Create(ctx, fx.names[i], store.CreateOptions{})
				if err == nil {
					_, _, err = st.SetAddress(ctx, fx.names[i], store.AddressUpdate{IPv4: benchIPv4(i), IPv6: benchIPv6(i)})
				}
				if err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		b.Fatalf("build store: %v", firstErr)
	}
	b.Logf("store with %d devices built in %s", benchDevices, time.Since(t0).Round(time.Millisecond))
	runtime.GC() // the building's garbage is not the benchmark's
	return fx
}

// benchIPv4 counts up from 100.64.0.1 (shared address space, as a NAS behind
// CGNAT reports).
func benchIPv4(i int) netip.Addr {
	var a [4]byte
	binary.BigEndian.PutUint32(a[:], binary.BigEndian.Uint32([]byte{100, 64, 0, 0})+uint32(i)+1)
	return netip.AddrFrom4(a)
}

func benchIPv6(i int) netip.Addr {
	a := netip.MustParseAddr("2001:db8::").As16()
	binary.BigEndian.PutUint64(a[8:], uint64(i)+1)
	return netip.AddrFrom16(a)
}

// queries returns n queries of the given kinds in random order, for random
// devices (the working set is the whole table), each with EDNS0 as resolvers
// send it. Missing names are directly under the zone so that they are NXDOMAIN.
func (fx *benchFixture) queries(b *testing.B, n int, kinds ...benchKind) []benchQuery {
	b.Helper()
	r := rand.New(rand.NewPCG(2, uint64(len(kinds))))
	out := make([]benchQuery, n)
	for i := range out {
		k := kinds[i%len(kinds)]
		name, qtype := fx.names[r.IntN(len(fx.names))]+"."+benchZone, dns.TypeA
		switch k {
		case benchAAAA:
			qtype = dns.TypeAAAA
		case benchNX:
			name = fmt.Sprintf("nx-%x.%s", r.Uint64(), benchZone)
		}
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		m.RecursionDesired = false
		m.SetEdns0(1232, false)
		wire, err := m.Pack()
		if err != nil {
			b.Fatal(err)
		}
		out[i] = benchQuery{kind: k, msg: m, wire: wire}
	}
	r.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

// benchMix is make bench-dns's mix: 80 % A hits, 10 % AAAA hits, 10 % NXDOMAIN.
var benchMix = []benchKind{benchA, benchA, benchA, benchA, benchA, benchA, benchA, benchA, benchAAAA, benchNX}

// Rate limiting in the benchmarks: rrlOn limits every answer's class at a
// rate no query reaches, so each goes through the whole decision (hash, set,
// bucket) and is sent; rrlExempt is the daemon's default for a loopback client.
var (
	rrlOn     = RRL{Rate: rrlMaxRate, NXDomainRate: rrlMaxRate, ErrorRate: rrlMaxRate, Slip: DefaultRRLSlip}
	rrlExempt = RRL{Rate: DefaultRRLRate, NXDomainRate: DefaultRRLNXDomainRate, ErrorRate: DefaultRRLErrorRate, Slip: DefaultRRLSlip, Exempt: DefaultRRLExempt()}
)

func newBenchServer(b *testing.B, fx *benchFixture, rrl RRL) *Server {
	b.Helper()
	return newBenchServerPath(b, fx, rrl, false)
}

func newBenchServerPath(b *testing.B, fx *benchFixture, rrl RRL, noFastPath bool) *Server {
	b.Helper()
	s, err := New(Config{Addr: "127.0.0.1:0", Zone: benchZone, Source: fx.st, Logger: zerolog.Nop(), RRL: rrl, NoFastPath: noFastPath})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			b.Error(err)
		}
	})
	return s
}

// BenchmarkServeDNSUDP measures the server over real UDP on loopback:
// RunParallel clients (SetParallelism × GOMAXPROCS), each with its own socket
// and one query in flight, send the bench-dns mix. allocs/op are the server's:
// the client allocates nothing per query. Client and server share the CPUs, so
// queries/s is lower than the server alone reaches; make bench-dns pins them
// apart.
func BenchmarkServeDNSUDP(b *testing.B) {
	fx := newBenchFixture(b)
	qs := fx.queries(b, 1<<14, benchMix...)
	for _, c := range []struct {
		name   string
		rrl    RRL
		noFast bool
	}{{"mix", RRL{}, false}, {"mix+rrl-on", rrlOn, false}, {"mix-miekg", RRL{}, true}, {"mix+rrl-on-miekg", rrlOn, true}} {
		benchServeDNSUDP(b, c.name, newBenchServerPath(b, fx, c.rrl, c.noFast).Addr().String(), qs)
	}
}

// BenchmarkFastPathAnswer is the fast path's work per query without the
// socket calls: parse, lookup, answer, RRL, as a reader does for each
// datagram of a batch. allocs/op must be 0.
func BenchmarkFastPathAnswer(b *testing.B) {
	fx := newBenchFixture(b)
	servers := map[string]*Server{"off": newBenchServer(b, fx, RRL{}), "exempt": newBenchServer(b, fx, rrlExempt), "on": newBenchServer(b, fx, rrlOn)}
	if servers["off"].fast == nil {
		b.Skip("no fast path on this system")
	}
	src := netip.MustParseAddrPort("192.0.2.1:5300")
	for _, c := range []struct {
		name  string
		kinds []benchKind
		rrl   string
	}{
		{"A", []benchKind{benchA}, "off"},
		{"AAAA", []benchKind{benchAAAA}, "off"},
		{"NXDOMAIN", []benchKind{benchNX}, "off"},
		{"mix", benchMix, "off"},
		{"mix+rrl-on", benchMix, "on"},
	} {
		s := servers[c.rrl]
		qs := fx.queries(b, 1<<14, c.kinds...)
		b.Run(c.name, func(b *testing.B) {
			out := make([]byte, fastAnswerMax)
			var sc fastScratch
			var bytes int
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				q := qs[i%len(qs)]
				i++
				v, n := s.answerFast(q.wire, src, out, &sc)
				if v != fastSend {
					b.Fatalf("query %x: not answered by the fast path (%d)", q.wire, v)
				}
				bytes += n
			}
			b.ReportMetric(float64(bytes)/float64(i), "resp_bytes")
		})
	}
}

func benchServeDNSUDP(b *testing.B, name, addr string, qs []benchQuery) {
	b.Run(name, func(b *testing.B) {
		b.ReportAllocs()
		b.SetParallelism(8)
		var lost, worker atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			conn, err := net.Dial("udp", addr)
			if err != nil {
				b.Error(err)
				return
			}
			defer conn.Close()
			w := int(worker.Add(1))
			i := w * 7919 // each client walks the queries from its own place
			id := uint16(w << 10)
			req := make([]byte, 512)
			resp := make([]byte, 1500)
			for pb.Next() {
				q := qs[i%len(qs)]
				i++
				id++
				n := copy(req, q.wire)
				binary.BigEndian.PutUint16(req, id)
				if _, err := conn.Write(req[:n]); err != nil {
					b.Error(err)
					return
				}
				ok, err := readReply(conn, resp, id, q.kind)
				if err != nil {
					b.Error(err)
					return
				}
				if !ok {
					lost.Add(1)
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "queries/s")
		b.ReportMetric(float64(lost.Load())/float64(b.N), "lost/op")
	})
}

// readReply reads until the reply with id arrives and checks its rcode and
// answer count against kind; ok is false if it did not come within a second.
// Replies to earlier, timed-out queries are skipped.
func readReply(conn net.Conn, buf []byte, id uint16, kind benchKind) (ok bool, err error) {
	if err := conn.SetReadDeadline(time.Now().Add(time.Second)); err != nil {
		return false, err
	}
	for {
		n, err := conn.Read(buf)
		if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		if n < 12 || binary.BigEndian.Uint16(buf) != id {
			continue
		}
		rcode, ancount := int(buf[3]&0xF), binary.BigEndian.Uint16(buf[6:])
		want, wantAn := dns.RcodeSuccess, uint16(1)
		if kind == benchNX {
			want, wantAn = dns.RcodeNameError, 0
		}
		if rcode != want || ancount != wantAn {
			return false, fmt.Errorf("%s query: got %s with %d answers", kind, dns.RcodeToString[rcode], ancount)
		}
		return true, nil
	}
}

// discardWriter is the ResponseWriter of BenchmarkAnswer: it packs the reply,
// as miekg/dns's UDP writer does, counts its bytes and drops it.
// Its client is remote, or 127.0.0.1 when remote is nil.
type discardWriter struct {
	replies, bytes int
	remote         net.Addr
}

var benchLocal = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}

func (w *discardWriter) LocalAddr() net.Addr { return benchLocal }
func (w *discardWriter) RemoteAddr() net.Addr {
	if w.remote != nil {
		return w.remote
	}
	return benchLocal
}
func (w *discardWriter) WriteMsg(m *dns.Msg) error {
	data, err := m.Pack()
	w.replies++
	w.bytes += len(data)
	return err
}
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) Close() error                { return nil }
func (w *discardWriter) TsigStatus() error           { return nil }
func (w *discardWriter) TsigTimersOnly(bool)         {}
func (w *discardWriter) Hijack()                     {}

// BenchmarkAnswer measures one query's work without sockets: ServeDNS on a
// parsed query (answer, truncation check, packing the reply) per kind and for
// the mix, and "mix+unpack" adds parsing the query as the server does first.
// allocs/op is the garbage each query leaves for the collector.
func BenchmarkAnswer(b *testing.B) {
	fx := newBenchFixture(b)
	servers := map[string]*Server{"off": newBenchServer(b, fx, RRL{}), "exempt": newBenchServer(b, fx, rrlExempt), "on": newBenchServer(b, fx, rrlOn)}
	cases := []struct {
		name   string
		kinds  []benchKind
		unpack bool
		rrl    string
	}{
		{"A", []benchKind{benchA}, false, "off"},
		{"AAAA", []benchKind{benchAAAA}, false, "off"},
		{"NXDOMAIN", []benchKind{benchNX}, false, "off"},
		{"mix", benchMix, false, "off"},
		{"mix+unpack", benchMix, true, "off"},
		{"mix+rrl-exempt", benchMix, false, "exempt"},
		{"mix+rrl-on", benchMix, false, "on"},
	}
	for _, c := range cases {
		s := servers[c.rrl]
		qs := fx.queries(b, 1<<14, c.kinds...)
		b.Run(c.name, func(b *testing.B) {
			w := new(discardWriter)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				q := qs[i%len(qs)]
				i++
				m := q.msg
				if c.unpack {
					m = new(dns.Msg)
					if err := m.Unpack(q.wire); err != nil {
						b.Fatal(err)
					}
				}
				s.ServeDNS(w, m)
			}
			b.ReportMetric(float64(w.bytes)/float64(w.replies), "resp_bytes")
		})
	}
}

// BenchmarkRRLOverhead is what rate limiting costs the ordinary answer path,
// measured so that other processes on a shared machine stay out of it:
// ServeDNS answers the bench-dns mix on three servers in turn, 512 queries
// at a time, each its own queries and each first in turn, and each server's
// share is counted in CPU time of the one OS thread the loop is locked to
// (not wall time). "off" is the zero RRL,
// "exempt" the daemon's default seen from loopback (what make bench-dns
// measures), "on" limits every answer at a rate none reaches, from 256
// client networks. It reports CPU ns per query and each ratio to "off".
func BenchmarkRRLOverhead(b *testing.B) {
	fx := newBenchFixture(b)
	qs := fx.queries(b, 1<<14, benchMix...)
	remotes := make([]net.Addr, 256)
	for i := range remotes {
		remotes[i] = &net.UDPAddr{IP: net.IPv4(192, 0, byte(i), 1), Port: 5353}
	}
	variants := []struct {
		name    string
		s       *Server
		remotes []net.Addr
		cpu     time.Duration
		n       int
	}{
		{name: "off", s: newBenchServer(b, fx, RRL{}), remotes: remotes},
		{name: "exempt", s: newBenchServer(b, fx, rrlExempt), remotes: []net.Addr{benchLocal}},
		{name: "on", s: newBenchServer(b, fx, rrlOn), remotes: remotes},
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	const block = 512
	w := new(discardWriter)
	i, round := 0, 0
	for b.Loop() {
		// Each server answers its own block and goes first in turn: the one
		// after another on the same queries would find them in the cache.
		for k := range variants {
			v := (round + k) % len(variants)
			vr := &variants[v]
			start := i + v*len(qs)/len(variants)
			t0 := threadCPU(b)
			for j := range block {
				w.remote = vr.remotes[(start+j)%len(vr.remotes)]
				vr.s.ServeDNS(w, qs[(start+j)%len(qs)].msg)
			}
			vr.cpu += threadCPU(b) - t0
			vr.n += block
		}
		i += block
		round++
	}
	off := float64(variants[0].cpu) / float64(variants[0].n)
	for _, vr := range variants {
		perQuery := float64(vr.cpu) / float64(vr.n)
		b.ReportMetric(perQuery, "cpu-ns/query-"+vr.name)
		if vr.name != "off" {
			b.ReportMetric(perQuery/off, "ratio-"+vr.name)
		}
	}
}

// threadCPU is the CPU time of the calling OS thread.
func threadCPU(b *testing.B) time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ts.Nano())
}

package dnsserver

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/rs/zerolog"
)

// decisions runs n decisions for one key at now and counts them.
func decisions(l *limiter, src string, cls rrlClass, name uint64, now time.Time, n int) (sent, dropped, slipped int) {
	for range n {
		switch l.decide(netip.MustParseAddr(src), cls, name, now) {
		case rrlSend:
			sent++
		case rrlDrop:
			dropped++
		case rrlSlip:
			slipped++
		}
	}
	return sent, dropped, slipped
}

func TestRRLSendsTheRateThenSlipsEveryNthLimitedAnswer(t *testing.T) {
	t0 := time.Now()
	l := newLimiter(RRL{Rate: 10, Slip: 2}, t0, nil)
	name := l.nameHash("nas1.myqnapcloud.com.", dns.TypeA)

	// A full bucket: the rate at once, then every second limited answer slips.
	if s, d, sl := decisions(l, "192.0.2.1", rrlAnswer, name, t0, 30); s != 10 || d != 10 || sl != 10 {
		t.Errorf("30 answers at once: %d sent, %d dropped, %d slipped; want 10, 10, 10", s, d, sl)
	}
	// It refills at the rate: one answer per 100 ms.
	if s, _, _ := decisions(l, "192.0.2.1", rrlAnswer, name, t0.Add(250*time.Millisecond), 10); s != 2 {
		t.Errorf("250 ms later: %d sent, want 2", s)
	}
	// and holds at most one second's worth, however long it rested.
	if s, _, _ := decisions(l, "192.0.2.1", rrlAnswer, name, t0.Add(time.Hour), 30); s != 10 {
		t.Errorf("an hour later: %d sent, want 10", s)
	}
	if got := (RRLStats{Dropped: l.dropped.Load(), Slipped: l.slipped.Load()}); got.Dropped+got.Slipped != 20+8+20 || got.Slipped < 23 || got.Slipped > 25 {
		t.Errorf("counters %+v, want 48 limited, half of them slipped", got)
	}
}

func TestRRLCountsByNetworkClassAndName(t *testing.T) {
	t0 := time.Now()
	l := newLimiter(RRL{Rate: 5, NXDomainRate: 3, ErrorRate: 2}, t0, nil)
	nas1A := l.nameHash("nas1.myqnapcloud.com.", dns.TypeA)
	exhaust := func(src string, cls rrlClass, name uint64) {
		t.Helper()
		decisions(l, src, cls, name, t0, 50)
	}
	sent := func(src string, cls rrlClass, name uint64) int {
		s, _, _ := decisions(l, src, cls, name, t0, 50)
		return s
	}
	exhaust("192.0.2.1", rrlAnswer, nas1A)
	exhaust("2001:db8:aa:bb00::1", rrlAnswer, nas1A)
	exhaust("192.0.2.1", rrlNXDomain, l.nameHash("nx1.myqnapcloud.com.", dns.TypeA))
	exhaust("192.0.2.1", rrlError, l.nameHash("example.com.", dns.TypeA))
	for _, c := range []struct {
		what string
		src  string
		cls  rrlClass
		name uint64
		want int
	}{
		{"same /24", "192.0.2.200", rrlAnswer, nas1A, 0},
		{"same /24, name in another case", "192.0.2.7", rrlAnswer, l.nameHash("NAS1.MyQnapCloud.com.", dns.TypeA), 0},
		{"IPv4-mapped address of the same /24", "::ffff:192.0.2.9", rrlAnswer, nas1A, 0},
		{"next /24", "192.0.3.1", rrlAnswer, nas1A, 5},
		{"same /24, another name", "192.0.2.1", rrlAnswer, l.nameHash("nas2.myqnapcloud.com.", dns.TypeA), 5},
		{"same /24, another type", "192.0.2.1", rrlAnswer, l.nameHash("nas1.myqnapcloud.com.", dns.TypeAAAA), 5},
		{"same /24, NODATA is another class", "192.0.2.1", rrlNoData, nas1A, 5},
		{"same /56", "2001:db8:aa:bbff::2", rrlAnswer, nas1A, 0},
		{"next /56", "2001:db8:aa:bc00::1", rrlAnswer, nas1A, 5},
		{"NXDOMAIN counts the zone, not the name", "192.0.2.1", rrlNXDomain, l.nameHash("nx2.myqnapcloud.com.", dns.TypeA), 0},
		{"NXDOMAIN of another /24", "198.51.100.1", rrlNXDomain, 0, 3},
		{"errors count no name", "192.0.2.1", rrlError, l.nameHash("example.org.", dns.TypeNS), 0},
		{"errors of another /24", "198.51.100.1", rrlError, 0, 2},
	} {
		if got := sent(c.src, c.cls, c.name); got != c.want {
			t.Errorf("%s (%s): %d of 50 sent, want %d", c.what, c.src, got, c.want)
		}
	}
}

func TestRRLSlipZeroDropsAllAndOneTruncatesAll(t *testing.T) {
	t0 := time.Now()
	for _, c := range []struct{ slip, dropped, slipped int }{{0, 20, 0}, {1, 0, 20}, {3, 14, 6}} {
		l := newLimiter(RRL{Rate: 10, Slip: c.slip}, t0, nil)
		if s, d, sl := decisions(l, "192.0.2.1", rrlAnswer, 1, t0, 30); s != 10 || d != c.dropped || sl != c.slipped {
			t.Errorf("slip %d: %d sent, %d dropped, %d slipped; want 10, %d, %d", c.slip, s, d, sl, c.dropped, c.slipped)
		}
	}
}

func TestRRLExemptNetworksAndZeroRatesAreNotLimited(t *testing.T) {
	t0 := time.Now()
	l := newLimiter(RRL{Rate: 5, ErrorRate: 0, Exempt: append(DefaultRRLExempt(), netip.MustParsePrefix("::ffff:203.0.113.0/120"))}, t0, nil)
	for _, c := range []struct {
		src  string
		cls  rrlClass
		want int
	}{
		{"127.0.0.1", rrlAnswer, 50},
		{"127.9.9.9", rrlAnswer, 50},
		{"::1", rrlAnswer, 50},
		{"203.0.113.5", rrlAnswer, 50}, // exempt as a mapped prefix
		{"192.0.2.1", rrlAnswer, 5},
		{"192.0.2.1", rrlNXDomain, 50}, // rate 0: not limited
		{"192.0.2.1", rrlError, 50},
	} {
		if s, _, _ := decisions(l, c.src, c.cls, 1, t0, 50); s != c.want {
			t.Errorf("%s class %d: %d of 50 sent, want %d", c.src, c.cls, s, c.want)
		}
	}
}

func TestRRLChangedLiveKeepsTheBuckets(t *testing.T) {
	st := openStore(t)
	s := startServer(t, Config{Source: st, RRL: RRL{Rate: 5}})
	t0 := time.Now()
	if sent, _, _ := decisions(s.rrl, "192.0.2.1", rrlAnswer, 1, t0, 20); sent != 5 {
		t.Fatalf("rate 5: %d sent", sent)
	}
	if err := s.SetRRL(RRL{Rate: -1}); err == nil {
		t.Fatal("SetRRL took a negative rate")
	}
	if err := s.SetRRL(RRL{Rate: 10, Slip: 1}); err != nil {
		t.Fatal(err)
	}
	// The bucket is a second ahead at rate 5; at rate 10 it must wait for it.
	if sent, _, slipped := decisions(s.rrl, "192.0.2.1", rrlAnswer, 1, t0, 5); sent != 0 || slipped != 5 {
		t.Errorf("after the change, same instant: %d sent, %d slipped; want 0, 5", sent, slipped)
	}
	if sent, _, _ := decisions(s.rrl, "192.0.2.1", rrlAnswer, 1, t0.Add(2*time.Second), 20); sent != 10 {
		t.Errorf("after the change, 2 s later: %d sent, want the new rate 10", sent)
	}
	if err := s.SetRRL(RRL{}); err != nil {
		t.Fatal(err)
	}
	if sent, _, _ := decisions(s.rrl, "192.0.2.1", rrlAnswer, 1, t0.Add(2*time.Second), 50); sent != 50 {
		t.Errorf("off: %d of 50 sent", sent)
	}
}

// A spray of new keys must not reset a flooded bucket: the table forgets
// the buckets nearest to full first.
func TestRRLTableKeepsALimitedBucketUnderASprayOfNewKeys(t *testing.T) {
	t0 := time.Now()
	l := newLimiter(RRL{Rate: 10, TableSize: 4}, t0, nil) // one set of 4
	flood := l.nameHash("nas1.myqnapcloud.com.", dns.TypeA)
	decisions(l, "192.0.2.1", rrlAnswer, flood, t0, 30)
	for i := range 1000 {
		l.decide(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1}), rrlAnswer, flood, t0.Add(time.Millisecond))
	}
	if s, _, _ := decisions(l, "192.0.2.1", rrlAnswer, flood, t0.Add(2*time.Millisecond), 10); s != 0 {
		t.Errorf("the flooded bucket was forgotten: %d of 10 sent", s)
	}
	if got := len(l.sets); got != 1 {
		t.Errorf("table size 4 made %d sets, want 1", got)
	}
}

func TestRRLSetIsOneCacheLine(t *testing.T) {
	if size := unsafe.Sizeof(rrlSet{}); size != 64 {
		t.Errorf("an RRL set is %d bytes, want 64: a decision would touch two cache lines", size)
	}
}

func TestRRLDecisionAllocatesNothing(t *testing.T) {
	l := newLimiter(RRL{Rate: 100, NXDomainRate: 50, ErrorRate: 20, Slip: 2}, time.Now(), nil)
	src := netip.MustParseAddr("192.0.2.1")
	now := time.Now()
	if n := testing.AllocsPerRun(1000, func() {
		l.decide(src, rrlAnswer, l.nameHash("Nas1.MyQnapCloud.com.", dns.TypeA), now)
	}); n != 0 {
		t.Errorf("a decision allocates %.1f times", n)
	}
}

// udpClient sends queries to a server from a chosen loopback address and
// counts what comes back.
type udpClient struct {
	conn                     *net.UDPConn
	answered, slipped, other atomic.Int64
	wg                       sync.WaitGroup
}

func newUDPClient(t *testing.T, from string, srv *Server) *udpClient {
	t.Helper()
	conn, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(from+":0")), srv.Addr().(*net.UDPAddr))
	if err != nil {
		t.Fatalf("bind a client to %s: %v", from, err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &udpClient{conn: conn}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		buf := make([]byte, 1500)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			m := new(dns.Msg)
			switch {
			case m.Unpack(buf[:n]) != nil:
				c.other.Add(1)
			case m.Truncated && len(m.Answer)+len(m.Ns) == 0:
				c.slipped.Add(1)
			case !m.Truncated && (len(m.Answer) > 0 || m.Rcode == dns.RcodeNameError):
				c.answered.Add(1)
			default:
				c.other.Add(1)
			}
		}
	}()
	return c
}

// send sends one query.
func (c *udpClient) send(t *testing.T, name string, id uint16) {
	t.Helper()
	q := new(dns.Msg).SetQuestion(name, dns.TypeA).SetEdns0(1232, false)
	q.Id = id
	b, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.conn.Write(b); err != nil {
		t.Fatal(err)
	}
}

// finish waits for late replies and stops reading.
func (c *udpClient) finish() {
	time.Sleep(300 * time.Millisecond)
	c.conn.Close()
	c.wg.Wait()
}

// flood sends n queries for name(i) from c, paced evenly over d (the server
// must see them all: a burst would overflow its socket buffer and the
// kernel, not RRL, would drop them), and returns how long it took.
func flood(t *testing.T, c *udpClient, n int, d time.Duration, name func(i int) string) time.Duration {
	t.Helper()
	const batch = 10
	start := time.Now()
	for i := 0; i < n; i += batch {
		for j := i; j < min(i+batch, n); j++ {
			c.send(t, name(j), uint16(j))
		}
		if wait := time.Until(start.Add(d * time.Duration(i+batch) / time.Duration(n))); wait > 0 {
			time.Sleep(wait)
		}
	}
	return time.Since(start)
}

// The test: one name flooded from one network is capped at the rate,
// every second limited answer slips, and another network is answered
// throughout; an NXDOMAIN flood is capped at its own rate.
func TestRRLFloodIsCappedSlipsAndSparesOtherNetworks(t *testing.T) {
	st := openStore(t)
	addDevice(t, st, "nas1", "198.51.100.1", "")
	const rate, nxRate = 100, 50
	var log testutil.Buffer
	srv := startServer(t, Config{Source: st, Logger: zerolog.New(&log), RRL: RRL{Rate: rate, NXDomainRate: nxRate, ErrorRate: 20, Slip: 2}})

	attacker := newUDPClient(t, "127.1.0.1", srv)
	bystander := newUDPClient(t, "127.2.0.1", srv)
	const floodN, bystanderN = 2000, 40
	var took time.Duration
	done := make(chan struct{})
	go func() {
		defer close(done)
		took = flood(t, attacker, floodN, 1600*time.Millisecond, func(int) string { return "nas1.myqnapcloud.com." })
	}()
	for i := range bystanderN {
		bystander.send(t, "nas1.myqnapcloud.com.", uint16(i))
		time.Sleep(35 * time.Millisecond)
	}
	<-done
	attacker.finish()
	bystander.finish()

	answered, slipped := attacker.answered.Load(), attacker.slipped.Load()
	limited := floodN - answered
	maxAnswered := rate + int64(float64(rate)*(took+300*time.Millisecond).Seconds()) // burst + rate × time, drain included
	minAnswered := rate + int64(float64(rate)*took.Seconds()*0.8)
	t.Logf("flood of %d queries in %s from 127.1.0.1: %d answered (%d to %d expected), %d slipped, %d no reply; bystander 127.2.0.1: %d of %d answered",
		floodN, took.Round(time.Millisecond), answered, minAnswered, maxAnswered, slipped, limited-slipped, bystander.answered.Load(), bystanderN)
	if answered < minAnswered || answered > maxAnswered {
		t.Errorf("flooding network got %d answers in %s, want the burst plus the rate: %d to %d", answered, took, minAnswered, maxAnswered)
	}
	if ratio := float64(slipped) / float64(limited); ratio < 0.45 || ratio > 0.55 {
		t.Errorf("%d of %d limited answers slipped (%.2f), want one in 2", slipped, limited, ratio)
	}
	if other := attacker.other.Load(); other != 0 {
		t.Errorf("%d replies were neither answers nor slips", other)
	}
	if got := bystander.answered.Load(); got != bystanderN {
		t.Errorf("another network got %d of %d answers during the flood (%d slipped)", got, bystanderN, bystander.slipped.Load())
	}
	stats := srv.RRLStats()
	if int64(stats.Slipped) != slipped || int64(stats.Dropped+stats.Slipped) != limited {
		t.Errorf("server counted %+v, the client saw %d limited of which %d slipped", stats, limited, slipped)
	}

	// NXDOMAIN for ever new names: one bucket, its own rate.
	nx := newUDPClient(t, "127.3.0.1", srv)
	const nxN = 600
	took = flood(t, nx, nxN, 800*time.Millisecond, func(i int) string { return fmt.Sprintf("nx-%d.myqnapcloud.com.", i) })
	nx.finish()
	maxNX := nxRate + int64(float64(nxRate)*(took+300*time.Millisecond).Seconds())
	minNX := nxRate + int64(float64(nxRate)*took.Seconds()*0.8)
	t.Logf("NXDOMAIN flood of %d random names in %s from 127.3.0.1: %d answered (%d to %d expected), %d slipped",
		nxN, took.Round(time.Millisecond), nx.answered.Load(), minNX, maxNX, nx.slipped.Load())
	if got := nx.answered.Load(); got < minNX || got > maxNX {
		t.Errorf("NXDOMAIN flood got %d answers in %s, want %d to %d", got, took, minNX, maxNX)
	}
	if !strings.Contains(log.String(), "dns rate limiting udp answers") {
		t.Errorf("limiting was not logged:\n%s", log.String())
	}
}

// TCP proves the client's address: its answers are never limited.
func TestRRLLeavesTCPAlone(t *testing.T) {
	st := openStore(t)
	addDevice(t, st, "nas1", "198.51.100.1", "")
	srv := startServer(t, Config{Source: st, RRL: RRL{Rate: 1, Slip: 1}})
	c := &dns.Client{Net: "tcp", Timeout: 2 * time.Second}
	conn, err := c.Dial(srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for i := range 20 {
		q := new(dns.Msg).SetQuestion("nas1.myqnapcloud.com.", dns.TypeA)
		r, _, err := c.ExchangeWithConn(q, conn)
		if err != nil || r.Truncated || len(r.Answer) != 1 {
			t.Fatalf("TCP query %d: %v, %v", i, r, err)
		}
	}
}

// BenchmarkRRLLimit is what rate limiting adds to one UDP answer: the whole
// of Server.limit (class, name hash, clock, exemption check, bucket) for
// answers to 16,384 names from 256 client networks, on every core at once.
// "exempt" is the daemon's default seen from loopback, "off" the zero RRL.
func BenchmarkRRLLimit(b *testing.B) {
	st := openStore(b)
	const names = 1 << 14
	type pair struct{ r, m *dns.Msg }
	pairs := make([]pair, names)
	for i := range pairs {
		r := new(dns.Msg).SetQuestion(fmt.Sprintf("nas-%08x.myqnapcloud.com.", i*2654435761), dns.TypeA).SetEdns0(1232, false)
		m := new(dns.Msg).SetReply(r)
		m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(198, 51, 100, 1)}}
		pairs[i] = pair{r, m}
	}
	remotes := make([]net.Addr, 256)
	for i := range remotes {
		remotes[i] = &net.UDPAddr{IP: net.IPv4(192, 0, byte(i), 1), Port: 5353}
	}
	for _, c := range []struct {
		name   string
		rrl    RRL
		remote func(i int) net.Addr
	}{
		{"on", rrlOn, func(i int) net.Addr { return remotes[i&255] }},
		{"exempt", rrlExempt, func(int) net.Addr { return benchLocal }},
		{"off", RRL{}, func(i int) net.Addr { return remotes[i&255] }},
	} {
		s := startServer(b, Config{Source: st, RRL: c.rrl})
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			var worker atomic.Int64
			b.RunParallel(func(pb *testing.PB) {
				i := int(worker.Add(1)) * 7919
				for pb.Next() {
					p := pairs[i&(names-1)]
					if s.limit(c.remote(i), p.r, p.m) == nil {
						b.Error("an answer was limited")
						return
					}
					i++
				}
			})
		})
	}
}

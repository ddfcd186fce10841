package dnsserver

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/store"
)

// pathPair is two servers answering from one store, one with the UDP fast
// path and one without, and a client socket for each.
type pathPair struct {
	fast, slow         *Server
	fastConn, slowConn *net.UDPConn
	id                 uint16
	buf                []byte
}

func newPathPair(t testing.TB, st *store.Store) *pathPair {
	t.Helper()
	return newPathPairRRL(t, st, RRL{})
}

// newPathPairRRL is newPathPair with rate limiting rrl on both servers.
func newPathPairRRL(t testing.TB, st *store.Store, rrl RRL) *pathPair {
	t.Helper()
	if !fastPathSupported || noFastPath {
		t.Skip("compares both paths: once is enough")
	}
	p := &pathPair{buf: make([]byte, dns.MaxMsgSize)}
	cfg := Config{Source: st, CAA: []string{`0 issue "letsencrypt.org"`}, RRL: rrl}
	p.fast = startServer(t, cfg)
	cfg.NoFastPath = true
	p.slow = startServer(t, cfg)
	if p.fast.FastPathStats() == (FastPathStats{}) && len(p.fast.readers) == 0 {
		t.Fatal("the fast path is off on the server that should have it")
	}
	p.fastConn, p.slowConn = dialUDP(t, p.fast), dialUDP(t, p.slow)
	return p
}

func dialUDP(t testing.TB, s *Server) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", nil, s.Addr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// exchange sends pkt with a fresh ID over c and returns the reply with that
// ID; with wait false it does not wait for one (a packet no server answers).
func (p *pathPair) exchange(t testing.TB, c *net.UDPConn, pkt []byte, wait bool) []byte {
	t.Helper()
	p.id++
	if len(pkt) >= 2 {
		binary.BigEndian.PutUint16(pkt, p.id)
	}
	if _, err := c.Write(pkt); err != nil {
		t.Fatalf("send: %v", err)
	}
	if !wait {
		return nil
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		c.SetReadDeadline(deadline)
		n, err := c.Read(p.buf)
		if err != nil {
			t.Fatalf("no reply to %x: %v", pkt, err)
		}
		if n >= 2 && binary.BigEndian.Uint16(p.buf) == p.id {
			return append([]byte(nil), p.buf[:n]...)
		}
	}
}

// compare sends pkt to both servers and fails unless the replies are the
// same bytes, the ID aside. It reports whether the fast path answered it
// (for a packet answered at all).
func (p *pathPair) compare(t testing.TB, raw []byte) (fast bool) {
	t.Helper()
	pkt := append([]byte(nil), raw...)
	// miekg/dns answers every packet of a header or more but responses.
	wait := len(pkt) >= 12 && pkt[2]&0x80 == 0
	before := p.fast.FastPathStats().Answered
	slow := p.exchange(t, p.slowConn, pkt, wait)
	got := p.exchange(t, p.fastConn, pkt, wait)
	if !wait {
		return false
	}
	fast = p.fast.FastPathStats().Answered > before
	slow, got = slow[2:], got[2:]
	if !bytes.Equal(got, slow) {
		want, have := new(dns.Msg), new(dns.Msg)
		errW, errH := want.Unpack(append([]byte{0, 0}, slow...)), have.Unpack(append([]byte{0, 0}, got...))
		t.Fatalf("query %x (fast path's: %v):\nfast path  %x (%v)\n%v\nmiekg/dns  %x (%v)\n%v", raw, fast, got, errH, have, slow, errW, want)
	}
	return fast
}

// fastPathQueries are queries of every shape the fast path answers, and
// of the shapes next to it that it must hand over.
func fastPathQueries(t testing.TB) (answered, handed [][]byte) {
	t.Helper()
	q := func(name string, qtype uint16, edit func(*dns.Msg)) []byte {
		m := new(dns.Msg).SetQuestion(name, qtype)
		if edit != nil {
			edit(m)
		}
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	edns := func(size uint16, do bool, opts ...dns.EDNS0) func(*dns.Msg) {
		return func(m *dns.Msg) {
			m.SetEdns0(size, do)
			o := m.IsEdns0()
			o.Option = opts
		}
	}
	cookie := &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"}
	padding := &dns.EDNS0_PADDING{Padding: make([]byte, 40)}
	for _, name := range []string{"nas1.myqnapcloud.com.", "NaS1.MyQnApClOuD.CoM.", "cam.myqnapcloud.com.", "off.myqnapcloud.com.", "none.myqnapcloud.com.", "No-Such_1.MYQNAPCLOUD.COM."} {
		for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
			answered = append(answered,
				q(name, qtype, nil),
				q(name, qtype, edns(1232, false)),
				q(name, qtype, edns(4096, true, cookie)),
				q(name, qtype, edns(100, false, padding)),
				q(name, qtype, func(m *dns.Msg) { m.RecursionDesired, m.CheckingDisabled, m.AuthenticatedData = false, true, true }),
			)
		}
	}
	nsid := &dns.EDNS0_NSID{Code: dns.EDNS0NSID}
	handed = [][]byte{
		q("myqnapcloud.com.", dns.TypeSOA, nil),
		q("myqnapcloud.com.", dns.TypeA, nil),
		q("ns1.myqnapcloud.com.", dns.TypeA, nil),
		q("_acme-challenge.nas1.myqnapcloud.com.", dns.TypeTXT, nil),
		q("_link.nas1.myqnapcloud.com.", dns.TypeA, nil),
		q("www.nas1.myqnapcloud.com.", dns.TypeA, nil),
		q("nas1.myqnapcloud.com.", dns.TypeANY, nil),
		q("nas1.myqnapcloud.com.", dns.TypeTXT, nil),
		q("nas1.myqnapcloud.com.", dns.TypeA, func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassCHAOS }),
		q("nas1.example.com.", dns.TypeA, edns(1232, false)),
		q("nas1.myqnapcloud.com.", dns.TypeA, edns(1232, false, nsid)),
		q("nas1.myqnapcloud.com.", dns.TypeA, func(m *dns.Msg) { m.SetEdns0(1232, false); m.IsEdns0().SetVersion(1) }),
		q("nas1.myqnapcloud.com.", dns.TypeA, func(m *dns.Msg) { m.Opcode = dns.OpcodeNotify }),
		q("nas1.myqnapcloud.com.", dns.TypeA, func(m *dns.Msg) { m.Question = append(m.Question, m.Question[0]) }),
		q("nas1.myqnapcloud.com.", dns.TypeA, func(m *dns.Msg) {
			m.Extra = append(m.Extra, &dns.A{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeA, Class: dns.ClassINET}})
		}),
		q(`n\.as1.myqnapcloud.com.`, dns.TypeA, nil),
		append(q("nas1.myqnapcloud.com.", dns.TypeA, nil), 0), // a byte after the question
		q("nas1.myqnapcloud.com.", dns.TypeA, nil)[:20],       // cut short
		q("nas1.myqnapcloud.com.", dns.TypeA, nil)[:12],       // no question
	}
	return answered, handed
}

func fastPathStore(t testing.TB) *store.Store {
	st := openStore(t)
	addDevice(t, st, "nas1", "198.51.100.1", "2001:db8:1::1")
	addDevice(t, st, "cam", "198.51.100.2", "")
	addDevice(t, st, "off", "198.51.100.3", "")
	setDDNS(t, st, "off", false)
	if err := setChallenges(context.Background(), st, "nas1", store.ChallengeUpdate{Add: []string{valA}}); err != nil {
		t.Fatal(err)
	}
	return st
}

// Every query the fast path answers gets the very bytes miekg/dns sends
// (0x20 letter case, EDNS, flags, NODATA and NXDOMAIN with the SOA), and
// the queries next to its shape are handed over and answered as before.
func TestFastPathAnswersAsMiekg(t *testing.T) {
	p := newPathPair(t, fastPathStore(t))
	answered, handed := fastPathQueries(t)
	for _, pkt := range answered {
		if !p.compare(t, pkt) {
			t.Errorf("query %x: the fast path does not take it", pkt)
		}
	}
	for _, pkt := range handed {
		if p.compare(t, pkt) {
			t.Errorf("query %x: the fast path takes it, it should hand it over", pkt)
		}
	}
	st := p.fast.FastPathStats()
	if st.Answered != uint64(len(answered)) {
		t.Errorf("fast path answered %d queries, want %d", st.Answered, len(answered))
	}
	// Handed over: all but those without a question (dropped before).
	if st.HandedOver < uint64(len(handed)-2) {
		t.Errorf("fast path handed over %d queries, want %d", st.HandedOver, len(handed)-2)
	}
}

// Rate limiting on the fast path sends, drops and slips as ServeDNS does:
// at one answer a second for each name, class and network, and Slip 1, the
// first answer of each kind goes out whole and every later one empty with
// TC set, the same bytes from both paths.
func TestFastPathRateLimitsAsMiekg(t *testing.T) {
	p := newPathPairRRL(t, fastPathStore(t), RRL{Rate: 1, NXDomainRate: 1, ErrorRate: 1, Slip: 1})
	answered, _ := fastPathQueries(t)
	for _, pkt := range answered {
		p.compare(t, pkt)
	}
	if st := p.fast.RRLStats(); st.Slipped == 0 || st != p.slow.RRLStats() {
		t.Errorf("rate limiting: fast path %+v, miekg/dns %+v; want the same, with slips", st, p.slow.RRLStats())
	}
}

// A negative answer's SOA carries the serial of now: each change is in the
// next NXDOMAIN.
func TestFastPathNegativeAnswerHasTheCurrentSerial(t *testing.T) {
	st := fastPathStore(t)
	p := newPathPair(t, st)
	pkt, _ := new(dns.Msg).SetQuestion("none.myqnapcloud.com.", dns.TypeA).Pack()
	for i := range 3 {
		p.compare(t, pkt)
		got := new(dns.Msg)
		if err := got.Unpack(p.exchange(t, p.fastConn, pkt, true)); err != nil {
			t.Fatal(err)
		}
		if soa, ok := got.Ns[0].(*dns.SOA); !ok || soa.Serial != st.Serial() {
			t.Fatalf("change %d: authority %v, want the SOA with serial %d", i, got.Ns, st.Serial())
		}
		addDevice(t, st, "new"+string(rune('a'+i)), "198.51.100.9", "")
	}
}

// FuzzFastPathSameAsMiekg sends the same packet to a server with the fast
// path and to one without: the replies must be the same bytes but for the
// ID, and neither may crash on any input.
func FuzzFastPathSameAsMiekg(f *testing.F) {
	p := newPathPair(f, fastPathStore(f))
	answered, handed := fastPathQueries(f)
	for _, pkt := range append(answered, handed...) {
		f.Add(pkt)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if len(raw) > maxQuerySize {
			return // miekg/dns reads 4096 bytes of a datagram; so does the fast path
		}
		p.compare(t, raw)
	})
}

// Answering allocates nothing: the query, the lookup, the answer, rate
// limiting's decision and OnQuery.
func TestFastPathAnswerAllocatesNothing(t *testing.T) {
	s := startServer(t, Config{Source: fastPathStore(t), RRL: RRL{Rate: 1000}, OnQuery: func(Query) {}})
	if s.fast == nil {
		t.Skip("no fast path")
	}
	answered, _ := fastPathQueries(t)
	out := make([]byte, fastAnswerMax)
	var sc fastScratch
	src := netip.MustParseAddrPort("192.0.2.1:5300")
	for _, pkt := range answered {
		if n := testing.AllocsPerRun(100, func() { s.answerFast(pkt, src, out, &sc) }); n != 0 {
			t.Errorf("query %x: %.1f allocations per answer", pkt, n)
		}
	}
}

// An acknowledged address update is in the very next answer, on either
// path: the answer is written from the index the commit updated before
// SetAddress returned. The time from the acknowledgement to that answer is
// logged (its p99 is the figure, under 1 ms), not asserted.
func TestUpdateVisibleInNextAnswer(t *testing.T) {
	st := fastPathStore(t)
	s := startServer(t, Config{Source: st})
	c := dialUDP(t, s)
	p := &pathPair{buf: make([]byte, dns.MaxMsgSize)}
	pkt, _ := new(dns.Msg).SetQuestion("nas1.myqnapcloud.com.", dns.TypeA).Pack()
	const n = 200
	lat := make([]time.Duration, 0, n)
	for i := range n {
		want := netip.AddrFrom4([4]byte{198, 51, 100, byte(10 + i%200)})
		if _, _, err := st.SetAddress(context.Background(), "nas1", store.AddressUpdate{IPv4: want}); err != nil {
			t.Fatal(err)
		}
		acked := time.Now()
		reply := new(dns.Msg)
		if err := reply.Unpack(p.exchange(t, c, pkt, true)); err != nil {
			t.Fatal(err)
		}
		lat = append(lat, time.Since(acked))
		if len(reply.Answer) != 1 || reply.Answer[0].(*dns.A).A.String() != want.String() {
			t.Fatalf("update %d: answer %v, want %s", i, reply.Answer, want)
		}
	}
	slices.Sort(lat)
	t.Logf("acknowledged update to the answer that has it: p50 %v, p99 %v (%d updates, fast path %v)", lat[n/2], lat[n*99/100], n, s.fast != nil && len(s.readers) > 0)
}

// With several UDP sockets on one port (SO_REUSEPORT) every socket is
// served: the kernel spreads clients by their address and port.
func TestEveryReusePortSocketAnswers(t *testing.T) {
	s := startServer(t, Config{Source: fastPathStore(t), UDPSockets: 2})
	if len(s.readers) != 2 {
		t.Skipf("%d fast-path sockets: the fast path is off", len(s.readers))
	}
	pkt, _ := new(dns.Msg).SetQuestion("nas1.myqnapcloud.com.", dns.TypeA).Pack()
	p := &pathPair{buf: make([]byte, dns.MaxMsgSize)}
	both := func() bool { return s.readers[0].answered.Load() > 0 && s.readers[1].answered.Load() > 0 }
	// A new client port each time; 64 ports all hashing to one socket
	// would be a 2^-63 chance.
	for i := 0; i < 64 && !both(); i++ {
		p.exchange(t, dialUDP(t, s), pkt, true)
	}
	if !both() {
		t.Errorf("answers per socket: %d and %d; want both serving", s.readers[0].answered.Load(), s.readers[1].answered.Load())
	}
}

// A second server on the address of a running one fails to start, though
// the first one's UDP sockets share their port (SO_REUSEPORT): it must not
// take part of the first one's queries unnoticed.
func TestSecondServerOnTheSamePortFails(t *testing.T) {
	st := openStore(t)
	first := startServer(t, Config{Source: st, UDPSockets: 2})
	second, err := newTestServer(Config{Addr: first.Addr().String(), Source: st, UDPSockets: 2})
	if err == nil {
		second.Shutdown(context.Background()) //nolint:errcheck // the test failed already
		t.Fatalf("a second server started on %s beside the first", first.Addr())
	}
	if !strings.Contains(err.Error(), first.Addr().String()) {
		t.Errorf("error %q does not name the address %s", err, first.Addr())
	}
}

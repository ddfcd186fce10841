package dnsserver

// The UDP fast path answers the common query straight from its wire bytes:
// no dns.Msg, no goroutine and no allocation per packet. It understands
// exactly one shape of query and hands every other packet, unchanged, to
// the miekg/dns path (handover.go), which stays the reference: for every
// query the fast path answers, the bytes it sends are the ones ServeDNS
// would send (fastpath_test.go and FuzzFastPathSameAsMiekg check it).
//
// The shape (anything else is handed over):
//   - header: QR=0, opcode QUERY, no flag but RD, AD and CD, rcode 0;
//     QDCOUNT=1, ANCOUNT=NSCOUNT=0, ARCOUNT 0 or 1;
//   - question: class IN, type A or AAAA, a name of exactly one label of
//     letters, digits, '-' and '_' below the zone (the zone itself, names
//     two labels down such as _acme-challenge.<device> and _link.<device>,
//     and the in-zone nameservers' names go to miekg/dns);
//   - additional: nothing, or one OPT owned by the root with version 0, no
//     extended rcode and only COOKIE or PADDING options (both ignored, as
//     ServeDNS ignores them);
//   - nothing after the last record.
//
// The answer is written from the store's index at the time of the query, so
// an acknowledged update is in the very next answer: the question bytes
// copied as they came (0x20 letter case echoed), an A or AAAA record whose
// owner points at the question, or NODATA or NXDOMAIN with the zone's SOA
// (the serial and TTLs of now), names compressed as miekg/dns compresses
// them, and the OPT ServeDNS would add. An answer over the size the client
// may take, or over 3 times the query (amplification.go), is handed over
// so that ServeDNS truncates it; response rate limiting (rrl.go) is decided
// here with the same table and the same keys.

import (
	"encoding/binary"
	"net/netip"

	"github.com/nasreach/nasreach/store"
)

// DNS header flag bits (RFC 1035 4.1.1, RFC 4035 3.2).
const (
	flagQR = 1 << 15
	flagAA = 1 << 10
	flagTC = 1 << 9
	flagRD = 1 << 8
	flagAD = 1 << 5
	flagCD = 1 << 4

	typeA    = 1
	typeAAAA = 28
	typeSOA  = 6
	typeOPT  = 41
	classIN  = 1

	optCookie  = 10
	optPadding = 12

	rcodeNXDomain = 3

	// fastAnswerMax bounds what the fast path writes: header, question
	// (at most 4+255 bytes), two address records or the SOA (two names of
	// at most 255 bytes) and the OPT.
	fastAnswerMax = 1024
)

// fastVerdict is what the fast path did with a packet.
type fastVerdict uint8

const (
	fastHandOver fastVerdict = iota // miekg/dns answers it
	fastSend                        // the answer is in out
	fastDrop                        // rate limiting dropped the answer
)

// FastPathStats counts the UDP queries since New that the fast path
// answered itself (rate limiting's drops included) and those it handed to
// miekg/dns.
type FastPathStats struct {
	Answered, HandedOver uint64
}

// FastPathStats returns what the fast path did; all zero when it is off.
func (s *Server) FastPathStats() FastPathStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	var st FastPathStats
	for _, r := range s.readers {
		st.Answered += r.answered.Load()
		st.HandedOver += r.handed.Load()
	}
	return st
}

// fastQuery is what parseFast found in a query.
type fastQuery struct {
	id, flags uint16
	qEnd      int    // end of the question
	label     []byte // the device label as it came (in the packet)
	qtype     uint16
	edns, do  bool
	udpSize   uint16
}

// fastZone is the zone as the fast path compares and writes it.
type fastZone struct {
	wire  []byte // the zone's name in wire form, lower case
	mname []byte // the SOA MNAME (the first nameserver) in wire form
	rname []byte // the SOA RNAME (hostmaster) in wire form
}

// newFastZone returns the fast path's view of the zone, or nil (the fast
// path stays off) when one of the names it writes has a character the
// fast path does not handle.
func newFastZone(zone, mname, rname string) *fastZone {
	for _, name := range []string{zone, mname, rname} {
		for i := 0; i < len(name); i++ {
			if name[i] != '.' && !isFastLabelByte(name[i]) {
				return nil
			}
		}
	}
	return &fastZone{wire: wireName(zone), mname: wireName(mname), rname: wireName(rname)}
}

// wireName is name (a lower-case FQDN in presentation form, without
// escapes: Validate admits only domain names) in wire form.
func wireName(name string) []byte {
	out := make([]byte, 0, len(name)+1)
	start := 0
	for i := 0; i < len(name); i++ {
		if name[i] == '.' {
			if i > start {
				out = append(out, byte(i-start))
				out = append(out, name[start:i]...)
			}
			start = i + 1
		}
	}
	return append(out, 0)
}

// isFastLabelByte reports whether c may be in a label the fast path
// answers: one whose presentation form needs no escape.
func isFastLabelByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_'
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// parseFast reports whether pkt is a query of the fast path's shape (see
// the top of this file) and what it asks.
func parseFast(pkt []byte, z *fastZone) (q fastQuery, ok bool) {
	if len(pkt) < 12 {
		return q, false
	}
	q.id = binary.BigEndian.Uint16(pkt)
	q.flags = binary.BigEndian.Uint16(pkt[2:])
	if q.flags&^(flagRD|flagAD|flagCD) != 0 {
		return q, false
	}
	if binary.BigEndian.Uint16(pkt[4:]) != 1 || binary.BigEndian.Uint16(pkt[6:]) != 0 ||
		binary.BigEndian.Uint16(pkt[8:]) != 0 {
		return q, false
	}
	arcount := binary.BigEndian.Uint16(pkt[10:])
	if arcount > 1 {
		return q, false
	}
	// One label, then the zone.
	off := 12
	if len(pkt) < off+1 {
		return q, false
	}
	l := int(pkt[off])
	if l == 0 || l > 63 || off+1+l+len(z.wire)+4 > len(pkt) {
		return q, false
	}
	q.label = pkt[off+1 : off+1+l]
	for _, c := range q.label {
		if !isFastLabelByte(c) {
			return q, false
		}
	}
	off += 1 + l
	for i, c := range z.wire {
		d := pkt[off+i]
		// Folding changes no length byte (below 64): equal after folding
		// is the same labels, letter case aside.
		if lower(d) != c {
			return q, false
		}
	}
	off += len(z.wire)
	q.qtype = binary.BigEndian.Uint16(pkt[off:])
	if (q.qtype != typeA && q.qtype != typeAAAA) || binary.BigEndian.Uint16(pkt[off+2:]) != classIN {
		return q, false
	}
	off += 4
	q.qEnd = off
	if arcount == 1 {
		// OPT: root owner, type, class (payload size), TTL (extended
		// rcode, version, flags), RDLENGTH, options.
		if off+11 > len(pkt) || pkt[off] != 0 || binary.BigEndian.Uint16(pkt[off+1:]) != typeOPT ||
			pkt[off+5] != 0 || pkt[off+6] != 0 {
			return q, false
		}
		q.edns = true
		q.udpSize = binary.BigEndian.Uint16(pkt[off+3:])
		q.do = pkt[off+7]&0x80 != 0
		rdlen := int(binary.BigEndian.Uint16(pkt[off+9:]))
		off += 11
		if off+rdlen != len(pkt) {
			return q, false
		}
		for o := off; o < len(pkt); {
			if o+4 > len(pkt) {
				return q, false
			}
			code, n := binary.BigEndian.Uint16(pkt[o:]), int(binary.BigEndian.Uint16(pkt[o+2:]))
			if code != optCookie && code != optPadding || o+4+n > len(pkt) {
				return q, false
			}
			o += 4 + n
		}
		off = len(pkt)
	}
	return q, off == len(pkt)
}

// fastScratch is one reader's working memory, so that answering allocates
// nothing.
type fastScratch struct {
	lower [63]byte
	name  [256]byte // the question name in presentation form (RRL, OnQuery)
	comp  compressor
}

// fastPrep is what the fast path learns of a query before the lookup: the
// parse, and where rate limiting's bucket for an answer with records or
// NODATA is. A reader prepares a whole batch of queries, loads their
// buckets' sets together, and then answers them (fastReader.answer): the
// sets' cache misses overlap instead of coming one after another.
type fastPrep struct {
	q     fastQuery
	ok    bool   // q is of the fast path's shape
	limit bool   // rate limiting counts answers to this client
	place uint64 // the place of the bucket of an answer or NODATA (limiter.place)
}

// fastRRL is rate limiting as a batch of fast-path answers sees it: the
// policy, and the limiter's clock read once (the batch came in at one
// instant; buckets count in seconds).
type fastRRL struct {
	p  *rrlPolicy
	on bool  // some class of answers is limited
	t  int64 // limiter.now, when on
}

// fastRRL reads the policy and, when it limits anything, the clock.
func (s *Server) fastRRL() fastRRL {
	rl := fastRRL{p: s.rrl.policy.Load()}
	if rl.on = rl.p.interval != [rrlClasses]int64{}; rl.on {
		rl.t = s.rrl.now()
	}
	return rl
}

// answerFast answers pkt from src into out (at least fastAnswerMax bytes)
// and returns what to do; for fastSend, out[:n] is the answer. It is one
// query of a reader's batch on its own: prepareFast, then answerPrepared.
func (s *Server) answerFast(pkt []byte, src netip.AddrPort, out []byte, sc *fastScratch) (fastVerdict, int) {
	rl := s.fastRRL()
	var fp fastPrep
	s.prepareFast(&fp, pkt, src.Addr(), rl, sc)
	return s.answerPrepared(&fp, pkt, src, out, sc, rl)
}

// prepareFast parses pkt into fp and, when rate limiting counts answers to
// src, hashes the question and places its bucket.
func (s *Server) prepareFast(fp *fastPrep, pkt []byte, src netip.Addr, rl fastRRL, sc *fastScratch) {
	fp.q, fp.ok = parseFast(pkt, s.fast)
	fp.limit = false
	if !fp.ok || !rl.on {
		return
	}
	src = src.Unmap().WithZone("")
	if rl.p.exempts(src) {
		return
	}
	n := presentation(sc.name[:], pkt[12:fp.q.qEnd-4], true)
	fp.limit = true
	fp.place = s.rrl.place(src, rrlAnswer, s.rrl.foldedHash(sc.name[:], n, fp.q.qtype))
}

// answerPrepared answers the query prepareFast prepared in fp, as
// answerFast says.
func (s *Server) answerPrepared(fp *fastPrep, pkt []byte, src netip.AddrPort, out []byte, sc *fastScratch, rl fastRRL) (v fastVerdict, n int) {
	q := &fp.q
	if !fp.ok {
		return fastHandOver, 0
	}
	label := sc.lower[:len(q.label)]
	for i, c := range q.label {
		label[i] = lower(c)
	}
	if _, ok := s.glue[string(label)]; ok {
		return fastHandOver, 0 // an in-zone nameserver: its glue addresses
	}
	rec, found := s.lookupFast(label)

	// Header, question as it came.
	binary.BigEndian.PutUint16(out, q.id)
	flags := uint16(flagQR|flagAA) | q.flags&(flagRD|flagCD)
	copy(out[4:], []byte{0, 1, 0, 0, 0, 0, 0, 0})
	n = copy(out[12:], pkt[12:q.qEnd]) + 12
	ttl := s.ttl.Load()
	answers := 0
	if found {
		for _, a := range [2]netip.Addr{rec.IPv4, rec.IPv6} {
			switch {
			case a.Is4() && q.qtype == typeA:
				n = putAddrRR(out, n, typeA, ttl, a.AsSlice())
			case a.Is6() && q.qtype == typeAAAA:
				b := a.As16()
				n = putAddrRR(out, n, typeAAAA, ttl, b[:])
			default:
				continue
			}
			answers++
		}
	}
	cls := rrlAnswer
	if answers > 0 {
		binary.BigEndian.PutUint16(out[6:], uint16(answers))
	} else {
		cls = rrlNoData
		if !found {
			cls = rrlNXDomain
			flags |= rcodeNXDomain
		}
		binary.BigEndian.PutUint16(out[8:], 1)
		n = s.putNegativeSOA(out, n, pkt[12:q.qEnd-4], &sc.comp)
		if n < 0 {
			return fastHandOver, 0
		}
	}

	// fit's limits, checked before rate limiting so that a query handed
	// over is charged once, by ServeDNS: what the client takes, and 3
	// times the query (queryLen).
	maxSize, optLen := 512, 0 // dns.MinMsgSize
	if q.edns {
		maxSize, optLen = min(max(int(q.udpSize), 512), int(s.udpSize)), 11
	}
	if n+optLen > maxSize || n+optLen > maxAmplification*(q.qEnd+optLen) || n+optLen > len(out) {
		return fastHandOver, 0 // ServeDNS truncates it
	}

	// Rate limiting, as limit does it: a dropped answer is not told to
	// OnQuery, a slipped one is emptied (emptyTruncated) and sent.
	switch s.rrlFast(fp, src.Addr(), cls, rl) {
	case rrlDrop:
		return fastDrop, 0
	case rrlSlip:
		flags |= flagTC
		clear(out[6:10])
		n = q.qEnd
	}
	binary.BigEndian.PutUint16(out[2:], flags)
	if q.edns {
		binary.BigEndian.PutUint16(out[10:], 1)
		var do byte
		if q.do {
			do = 0x80
		}
		out[n] = 0
		binary.BigEndian.PutUint16(out[n+1:], typeOPT)
		binary.BigEndian.PutUint16(out[n+3:], s.udpSize)
		copy(out[n+5:n+11], []byte{0, 0, do, 0, 0, 0})
		n += 11
	}
	if s.onQuery != nil {
		s.queried(src, sc.name[:presentation(sc.name[:], pkt[12:q.qEnd-4], false)], q.qtype, int(flags&0xF))
	}
	return fastSend, n
}

// lookupFast finds a device by its lower-case label without allocating
// when the Source can (the store's index can).
func (s *Server) lookupFast(label []byte) (store.Record, bool) {
	if bl, ok := s.src.(interface {
		LookupBytes([]byte) (store.Record, bool)
	}); ok {
		return bl.LookupBytes(label)
	}
	return s.src.Lookup(string(label))
}

// putAddrRR writes an A or AAAA record owned by the question's name (a
// pointer to offset 12) at out[n:].
func putAddrRR(out []byte, n int, rrtype uint16, ttl uint32, addr []byte) int {
	binary.BigEndian.PutUint16(out[n:], 0xC00C)
	binary.BigEndian.PutUint16(out[n+2:], rrtype)
	binary.BigEndian.PutUint16(out[n+4:], classIN)
	binary.BigEndian.PutUint32(out[n+6:], ttl)
	binary.BigEndian.PutUint16(out[n+10:], uint16(len(addr)))
	return n + 12 + copy(out[n+12:], addr)
}

// putNegativeSOA writes negativeSOA's record at out[n:] (the question's
// name, in wire form, is at offset 12) and returns the new end, or -1 when
// it does not fit.
func (s *Server) putNegativeSOA(out []byte, n int, qname []byte, c *compressor) int {
	ttl := s.ttl.Load()
	c.reset()
	c.add(qname, 12)
	z := s.fast
	if n = c.put(out, n, z.wire); n < 0 || n+10 > len(out) {
		return -1
	}
	binary.BigEndian.PutUint16(out[n:], typeSOA)
	binary.BigEndian.PutUint16(out[n+2:], classIN)
	binary.BigEndian.PutUint32(out[n+4:], min(s.soaTTL, ttl))
	rdlen := n + 8
	start := n + 10
	if n = c.put(out, start, z.mname); n < 0 {
		return -1
	}
	if n = c.put(out, n, z.rname); n < 0 || n+20 > len(out) {
		return -1
	}
	binary.BigEndian.PutUint32(out[n:], s.src.Serial())
	binary.BigEndian.PutUint32(out[n+4:], 1800)
	binary.BigEndian.PutUint32(out[n+8:], 300)
	binary.BigEndian.PutUint32(out[n+12:], 1209600)
	binary.BigEndian.PutUint32(out[n+16:], ttl)
	n += 20
	binary.BigEndian.PutUint16(out[rdlen:], uint16(n-start))
	return n
}

// presentation writes the wire name w (no pointers, letters, digits, '-'
// and '_' only) in presentation form, with the final dot, to buf, in lower
// case if fold, and returns its length (at most 254).
func presentation(buf, w []byte, fold bool) int {
	n := 0
	for i := 0; w[i] != 0; i += 1 + int(w[i]) {
		label := w[i+1 : i+1+int(w[i])]
		if fold {
			for _, c := range label {
				buf[n] = lower(c)
				n++
			}
		} else {
			n += copy(buf[n:], label)
		}
		buf[n] = '.'
		n++
	}
	return n
}

// rrlFast is limit's decision for the fast-path answer of class cls to
// the query prepared in fp.
func (s *Server) rrlFast(fp *fastPrep, src netip.Addr, cls rrlClass, rl fastRRL) rrlAction {
	if !fp.limit || rl.p.interval[cls] == 0 {
		return rrlSend
	}
	place := fp.place
	if cls != rrlAnswer && cls != rrlNoData {
		place = s.rrl.place(src.Unmap(), cls, 0)
	}
	return s.rrl.charge(rl.p, place, cls, rl.t)
}

// queried tells OnQuery about a fast-path answer.
func (s *Server) queried(src netip.AddrPort, name []byte, qtype uint16, rcode int) {
	q := Query{Remote: src, Type: qtype, Rcode: rcode}
	q.wire.n = uint8(copy(q.wire.b[:], name))
	s.onQuery(q)
}

// compressor writes names compressed exactly as miekg/dns's packer does:
// each suffix of a name at a label boundary is remembered with the offset
// it is written at (below 2^14), compared byte for byte (so
// case-sensitively), and a later name's longest remembered suffix becomes a
// pointer.
type compressor struct {
	n    int
	suff [24]struct {
		name []byte // wire form, up to the root
		off  int
	}
}

func (c *compressor) reset() { c.n = 0 }

// remember notes that the suffix w was written at off.
func (c *compressor) remember(w []byte, off int) {
	if c.n < len(c.suff) && off < 1<<14 {
		c.suff[c.n].name, c.suff[c.n].off = w, off
		c.n++
	}
}

// add remembers the suffixes of the wire name w written whole at off.
func (c *compressor) add(w []byte, off int) {
	for i := 0; w[i] != 0; i += 1 + int(w[i]) {
		c.remember(w[i:], off+i)
	}
}

func (c *compressor) find(w []byte) (int, bool) {
	for _, s := range c.suff[:c.n] {
		if string(s.name) == string(w) {
			return s.off, true
		}
	}
	return 0, false
}

// put writes the wire name w at out[n:], compressed, and returns the new
// end or -1 when it does not fit.
func (c *compressor) put(out []byte, n int, w []byte) int {
	for i := 0; ; i += 1 + int(w[i]) {
		if w[i] == 0 {
			if n >= len(out) {
				return -1
			}
			out[n] = 0
			return n + 1
		}
		if off, ok := c.find(w[i:]); ok {
			if n+2 > len(out) {
				return -1
			}
			binary.BigEndian.PutUint16(out[n:], uint16(0xC000|off))
			return n + 2
		}
		l := 1 + int(w[i])
		if n+l > len(out) {
			return -1
		}
		c.remember(w[i:], n)
		n += copy(out[n:], w[i:i+l])
	}
}

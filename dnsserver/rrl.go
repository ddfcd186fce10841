package dnsserver

// Response rate limiting (RRL), as Knot and BIND do it. A UDP query's source
// address is not proven: an attacker can send queries in a victim's name and
// have us flood the victim with answers. RRL caps how many answers of one kind
// go to one client network per second; TCP answers are never limited (the
// handshake proves the address), and every Slip-th limited answer is sent as
// an empty truncated one (TC) instead of being dropped, so that a real
// resolver behind a limited network retries over TCP and still gets its
// answer, while the victim of a reflection gets nothing bigger than the
// query.
//
// What is counted together (the key of a bucket):
//   - the client network: its IPv4 /24 or its IPv6 /56 (Knot's and BIND's
//     prefixes; a mapped IPv4 address counts as IPv4);
//   - the class of the answer: answer (NOERROR with records), nodata (NOERROR
//     without), nxdomain, or error (REFUSED, FORMERR, NOTIMP, BADVERS);
//   - for answer and nodata, the query name (case-folded) and type; NXDOMAIN
//     counts the whole zone as one name (BIND's "imputed name", Knot's zone
//     name), so random names do not get a bucket each; errors count no name.
//
// Each bucket is a token bucket that holds one second of answers: Rate
// answers at once, then Rate per second (kept as GCRA's theoretical arrival
// time: one integer per bucket, no floating point, and a rate changed by a
// reload applies at once). A limited answer takes no token, so a flood gets
// exactly the rate, not less: unlike BIND's 15-second window, a busy resolver
// that overshoots keeps getting its rate rather than nothing for 15 s.
//
// The table is a fixed array of 4-way sets, each a cache line with its own
// mutex (2^15 locks, so two queries rarely contend), hashed with a
// per-server random seed so that nobody can aim keys at one set. A new key takes a free bucket of its
// set, else the one nearest to full: forgetting a full bucket changes no
// answer, and a bucket that is being limited (one second ahead) is the last
// to go, so a spray of new keys does not reset a flood's bucket. Nothing is
// allocated per query.
//
// A decision is one hash of the name (seeded maphash) and two multiplies
// that mix it with the network into the set and, with the class, into the
// bucket's tag. The set does not depend on whether the answer has records
// or is NODATA, so the fast path (fastpath.go) knows it before the lookup
// and loads the sets of a whole batch of queries at once: their cache
// misses overlap instead of coming one after another.

import (
	"errors"
	"fmt"
	"hash/maphash"
	"math/bits"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/internal/netaddr"
)

// Defaults of the daemon's RRL settings (the zero RRL is off). They are far
// above what a real resolver sends: answers are cached for the TTL (60 s), so
// even a thousand caches behind one /24 ask for one name about 17 times a
// second; a flood from one network gets 100 answers a second for one name,
// 50 NXDOMAIN and 20 errors for the whole zone.
const (
	DefaultRRLRate         = 100
	DefaultRRLNXDomainRate = 50
	DefaultRRLErrorRate    = 20
	DefaultRRLSlip         = 2
	// DefaultRRLTableSize is the number of buckets: 2 MiB. Only buckets
	// being limited need to stay (a bucket idle for a second is full, and
	// free to be taken), and at most answers per second / lowest rate keys
	// can be over their rate at once: 5,000 at 100,000 answers a second.
	DefaultRRLTableSize = 1 << 17

	rrlIPv4Bits = 24
	rrlIPv6Bits = 56
	rrlMaxRate  = 1_000_000
	rrlMaxSlip  = 100 // Knot's limit; BIND's is 10
	rrlWays     = 4
	// rrlBurst is what one bucket holds: one second of answers, as BIND's
	// credit is.
	rrlBurst = int64(time.Second)
	// rrlLogEvery bounds the log: one line a minute while limiting.
	rrlLogEvery = int64(time.Minute)
)

// DefaultRRLExempt are the networks the daemon exempts unless told
// otherwise: loopback, so that benchmarks and local tools measure the server.
func DefaultRRLExempt() []netip.Prefix {
	return []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
}

// RRL configures response rate limiting of UDP answers. The zero value is
// off. A rate of 0 leaves its class of answers unlimited.
type RRL struct {
	// Rate is the answers per second (and at once) to one client network for
	// one name and type: answers with records and NODATA.
	Rate int
	// NXDomainRate is the NXDOMAIN answers per second to one client network,
	// all names of the zone together.
	NXDomainRate int
	// ErrorRate is the error answers per second (REFUSED, FORMERR, NOTIMP,
	// BADVERS) to one client network, whatever the name.
	ErrorRate int
	// Slip: every Slip-th limited answer is sent empty with TC set instead
	// of being dropped. 0 drops every limited answer, 1 truncates every one.
	Slip int
	// Exempt are client networks whose answers are never limited.
	Exempt []netip.Prefix
	// TableSize is the number of buckets; 0 means DefaultRRLTableSize.
	// Only New reads it.
	TableSize int
}

// Validate checks r and returns every problem at once, worded for the
// operator.
func (r RRL) Validate() error {
	var errs []error
	for _, v := range []struct {
		name string
		rate int
	}{{"rate", r.Rate}, {"NXDOMAIN rate", r.NXDomainRate}, {"error rate", r.ErrorRate}} {
		if v.rate < 0 || v.rate > rrlMaxRate {
			errs = append(errs, fmt.Errorf("RRL %s %d out of range (0 to %d answers per second; 0 is no limit)", v.name, v.rate, rrlMaxRate))
		}
	}
	if r.Slip < 0 || r.Slip > rrlMaxSlip {
		errs = append(errs, fmt.Errorf("RRL slip %d out of range (0 to %d)", r.Slip, rrlMaxSlip))
	}
	for _, p := range r.Exempt {
		if !p.IsValid() {
			errs = append(errs, errors.New("RRL exempt network is empty"))
		}
	}
	if r.TableSize < 0 {
		errs = append(errs, fmt.Errorf("RRL table size %d is negative", r.TableSize))
	}
	return errors.Join(errs...)
}

// RRLStats counts the UDP answers rate limiting held back since New.
type RRLStats struct {
	Dropped uint64 // not sent at all
	Slipped uint64 // sent empty with TC set
}

// rrlClass is what kind of answer a bucket counts.
type rrlClass uint8

const (
	rrlAnswer   rrlClass = iota // NOERROR with records
	rrlNoData                   // NOERROR without
	rrlNXDomain                 // NXDOMAIN
	rrlError                    // every other rcode
	rrlClasses
)

// rrlAction is what to do with one answer.
type rrlAction uint8

const (
	rrlSend rrlAction = iota
	rrlDrop
	rrlSlip
)

// rrlPolicy is the part of RRL a reload swaps whole.
type rrlPolicy struct {
	interval [rrlClasses]int64 // nanoseconds per answer; 0: not limited
	slip     uint32
	exempt   []netip.Prefix
}

func newRRLPolicy(r RRL) *rrlPolicy {
	p := &rrlPolicy{slip: uint32(r.Slip), exempt: make([]netip.Prefix, 0, len(r.Exempt))}
	for cls, rate := range [rrlClasses]int{rrlAnswer: r.Rate, rrlNoData: r.Rate, rrlNXDomain: r.NXDomainRate, rrlError: r.ErrorRate} {
		if rate > 0 {
			p.interval[cls] = rrlBurst / int64(rate)
		}
	}
	for _, e := range r.Exempt {
		if e.Addr().Is4In6() && e.Bits() >= 96 { // ::ffff:192.0.2.0/120 is 192.0.2.0/24
			e = netip.PrefixFrom(e.Addr().Unmap(), e.Bits()-96)
		}
		p.exempt = append(p.exempt, e.Masked())
	}
	return p
}

// limits reports whether p limits answers of class cls to src (unmapped,
// without a zone).
func (p *rrlPolicy) limits(src netip.Addr, cls rrlClass) bool {
	return p.interval[cls] != 0 && !p.exempts(src)
}

// exempts reports whether src (unmapped, without a zone) is exempt.
func (p *rrlPolicy) exempts(src netip.Addr) bool {
	for _, e := range p.exempt {
		if e.Contains(src) {
			return true
		}
	}
	return false
}

// limiter is the RRL table of one server.
type limiter struct {
	policy  atomic.Pointer[rrlPolicy]
	seed    maphash.Seed // of the name hash
	secret  [4]uint64    // of place and tag: random, so that nobody can aim keys at one set
	epoch   time.Time    // bucket times are nanoseconds since epoch (monotonic)
	sets    []rrlSet
	mask    uint64
	dropped atomic.Uint64
	slipped atomic.Uint64
	logged  atomic.Int64 // time of the last log line, as bucket times
	onLimit func(dropped, slipped uint64)
}

// rrlSet is rrlWays buckets behind one mutex, in one 64-byte cache line
// (a test checks): a decision costs one cache miss, not two.
type rrlSet struct {
	mu sync.Mutex
	// key is each bucket's tag; 0: empty. Read and written under mu, but
	// atomically, so that load may read one without it.
	key [rrlWays]atomic.Uint32
	// tat is the theoretical arrival time: when the bucket is full again, in
	// nanoseconds since the limiter's epoch.
	tat     [rrlWays]int64
	limited [rrlWays]uint16 // limited answers so far, for slip (wraps)
}

func newLimiter(r RRL, now time.Time, onLimit func(dropped, slipped uint64)) *limiter {
	size := max(r.TableSize, rrlWays)
	if r.TableSize == 0 {
		size = DefaultRRLTableSize
	}
	sets := 1
	for sets*rrlWays < size {
		sets <<= 1
	}
	l := &limiter{seed: maphash.MakeSeed(), epoch: now, sets: make([]rrlSet, sets), mask: uint64(sets - 1), onLimit: onLimit}
	for i := range l.secret {
		l.secret[i] = rand.Uint64() // math/rand/v2's generator is seeded from the system's randomness
	}
	l.logged.Store(-rrlLogEvery)
	l.policy.Store(newRRLPolicy(r))
	return l
}

// nameHash hashes a query name, case-folded, and type for decide.
func (l *limiter) nameHash(name string, qtype uint16) uint64 {
	var buf [256]byte
	if len(name) > len(buf)-2 {
		name = name[len(name)-(len(buf)-2):] // presentation form with escapes; the tail is plenty
	}
	for i := 0; i < len(name); i++ {
		buf[i] = lower(name[i])
	}
	return l.foldedHash(buf[:], len(name), qtype)
}

// foldedHash is nameHash of the name in buf[:n], case-folded already; it
// writes the type in the two bytes after it.
func (l *limiter) foldedHash(buf []byte, n int, qtype uint16) uint64 {
	buf[n], buf[n+1] = byte(qtype>>8), byte(qtype)
	return maphash.Bytes(l.seed, buf[:n+2])
}

// now is the limiter's clock: nanoseconds since its epoch (monotonic).
func (l *limiter) now() int64 { return int64(time.Since(l.epoch)) }

// decide is the RRL decision for one UDP answer of class cls to src, name
// being nameHash's for classes that count names (ignored for others). It is
// safe for concurrent use and allocates nothing.
func (l *limiter) decide(src netip.Addr, cls rrlClass, name uint64, now time.Time) rrlAction {
	p := l.policy.Load()
	src = src.Unmap().WithZone("") // a prefix never contains an address with a zone
	if !p.limits(src, cls) {
		return rrlSend
	}
	return l.charge(p, l.place(src, cls, name), cls, int64(now.Sub(l.epoch)))
}

// charge is decide once p.limits said yes, for the bucket of class cls at
// place (place's), at time t (now's): it spends a token of the bucket or
// counts a limited answer.
func (l *limiter) charge(p *rrlPolicy, place uint64, cls rrlClass, t int64) rrlAction {
	interval := p.interval[cls]
	set := l.set(place)
	tag := uint32(mix(place^l.secret[2], uint64(cls)^l.secret[3])>>32) | 1 // never 0, which marks an empty bucket
	set.mu.Lock()
	i := set.bucket(tag)
	tat := max(set.tat[i], t) + interval
	if tat-t <= rrlBurst {
		set.tat[i] = tat
		set.mu.Unlock()
		return rrlSend
	}
	set.limited[i]++
	n := uint32(set.limited[i])
	set.mu.Unlock()
	action := rrlDrop
	if p.slip != 0 && n%p.slip == 0 {
		action = rrlSlip
	}
	l.count(action, t)
	return action
}

// place hashes where the bucket of an answer of class cls to src is: the
// client network and, for answers and NODATA, the name (nameHash's). The
// set of the bucket is set(place); its tag in the set adds the class.
func (l *limiter) place(src netip.Addr, cls rrlClass, name uint64) uint64 {
	if cls == rrlNXDomain || cls == rrlError {
		name = 0
	}
	var network uint64 // the /24 or /56, and which
	if src.Is4() {
		a := src.As4()
		for _, b := range a[:rrlIPv4Bits/8] {
			network = network<<8 | uint64(b)
		}
	} else {
		a := src.As16()
		for _, b := range a[:rrlIPv6Bits/8] {
			network = network<<8 | uint64(b)
		}
		network |= 1 << 63
	}
	return mix(network^l.secret[0], name^l.secret[1])
}

// set is the set of the buckets at place.
func (l *limiter) set(place uint64) *rrlSet { return &l.sets[place&l.mask] }

// mix is wyhash's mixing step: the 128-bit product of a and b folded to 64
// bits. With secret inputs it is a keyed hash good enough for a table
// (every bit of a and b moves the result) at the cost of one multiply.
func mix(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}

// bucket returns the index of key's bucket, taking one for a new key: an
// empty one, else the one nearest to full (the lowest theoretical arrival
// time).
func (s *rrlSet) bucket(key uint32) int {
	victim := 0
	for i := range s.key {
		k := s.key[i].Load()
		if k == key {
			return i
		}
		if s.tat[i] < s.tat[victim] || k == 0 && s.key[victim].Load() != 0 {
			victim = i
		}
	}
	s.key[victim].Store(key)
	s.tat[victim], s.limited[victim] = 0, 0
	return victim
}

// load reads a word of the set at place without waiting for its lock, so
// that its cache line is on its way: the processor goes on to the next
// load meanwhile, and the misses of a reader's batch (fastpath.go) overlap.
func (l *limiter) load(place uint64) { l.set(place).key[0].Load() }

// count counts a limited answer and tells the operator, at most once a
// minute, that limiting is going on.
func (l *limiter) count(a rrlAction, t int64) {
	var dropped, slipped uint64
	if a == rrlSlip {
		slipped = l.slipped.Add(1)
		dropped = l.dropped.Load()
	} else {
		dropped = l.dropped.Add(1)
		slipped = l.slipped.Load()
	}
	if last := l.logged.Load(); t-last >= rrlLogEvery && l.logged.CompareAndSwap(last, t) && l.onLimit != nil {
		l.onLimit(dropped, slipped)
	}
}

// rrlClassOf classifies an answer.
func rrlClassOf(m *dns.Msg) rrlClass {
	switch m.Rcode {
	case dns.RcodeSuccess:
		if len(m.Answer) > 0 {
			return rrlAnswer
		}
		return rrlNoData
	case dns.RcodeNameError:
		return rrlNXDomain
	}
	return rrlError
}

// limit applies RRL to m, the answer to r for the UDP client remote: it
// returns m, m emptied with TC set (slipped), or nil (dropped).
func (s *Server) limit(remote net.Addr, r, m *dns.Msg) *dns.Msg {
	l := s.rrl
	p := l.policy.Load()
	if p.interval == [rrlClasses]int64{} {
		return m // off
	}
	// decide's checks first: an exempt client costs no hash and no clock.
	cls, src := rrlClassOf(m), netaddr.Addr(remote).WithZone("")
	if !p.limits(src, cls) {
		return m
	}
	var name uint64
	if (cls == rrlAnswer || cls == rrlNoData) && len(r.Question) == 1 {
		name = l.nameHash(r.Question[0].Name, r.Question[0].Qtype)
	}
	switch l.charge(p, l.place(src, cls, name), cls, l.now()) {
	case rrlDrop:
		return nil
	case rrlSlip:
		emptyTruncated(m)
	}
	return m
}

// SetRRL changes rate limiting from the next answer on (a reload); the
// table and its counts stay. TableSize is not changed.
func (s *Server) SetRRL(r RRL) error {
	if err := r.Validate(); err != nil {
		return err
	}
	s.rrl.policy.Store(newRRLPolicy(r))
	return nil
}

// RRLStats returns what rate limiting held back since New.
func (s *Server) RRLStats() RRLStats {
	return RRLStats{Dropped: s.rrl.dropped.Load(), Slipped: s.rrl.slipped.Load()}
}

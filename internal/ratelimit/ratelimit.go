// Package ratelimit bounds how often one source network may do something: a
// token bucket per client network in a table of bounded size, so that a
// spray of addresses costs the relay a fixed amount of memory.
package ratelimit

import (
	"cmp"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// DefaultMaxEntries is the table size New uses when given zero.
const DefaultMaxEntries = 65536

// Network returns the source network a Limiter counts a against: an IPv4
// address on its own, an IPv6 address's /64. One IPv6 subscriber usually
// holds a whole /64, so counting single IPv6 addresses would let one client
// pose as 2^64 of them. An IPv4-mapped IPv6 address counts as its IPv4
// address; the zone is dropped.
func Network(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	bits := 32
	if a.Is6() {
		bits = 64
	}
	p, _ := a.Prefix(bits)
	return p
}

// Limiter is a token bucket per source network (see Network): each holds up
// to burst tokens, refills at rate tokens per second, and Allow spends one.
// The table holds at most maxEntries buckets. A bucket that has refilled to
// its burst says nothing a new one would not, so those go first when the
// table is full; if it is still full, the fuller half goes, keeping the
// sources that are closest to their limit. A Limiter is safe for concurrent
// use.
type Limiter struct {
	mu    sync.Mutex
	rate  float64
	burst float64
	max   int
	b     map[netip.Prefix]bucket
}

// bucket is one source network's tokens as of last. One mutex for the whole
// table guards every bucket, which is why this is not an x/time/rate.Limiter:
// that carries its own mutex and reservation state (80 bytes where this needs
// 32), and a live Set would have to visit every one of them.
type bucket struct {
	tokens float64
	last   time.Time
}

// New returns a Limiter that lets each source network do burst things at once
// and rate per second after that. A rate of zero never refills; a burst of
// zero allows nothing. maxEntries bounds the table; zero means
// DefaultMaxEntries.
func New(rate float64, burst int, maxEntries int) *Limiter {
	l := &Limiter{max: cmp.Or(maxEntries, DefaultMaxEntries), b: map[netip.Prefix]bucket{}}
	l.max = max(l.max, 2) // pruning keeps half
	l.Set(rate, burst)
	return l
}

// Set changes the rate and burst of every source network, as a configuration
// reload does. Buckets keep their tokens, capped at the new burst on their
// next use, so a change neither forgives nor punishes recent use.
func (l *Limiter) Set(rate float64, burst int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rate, l.burst = max(rate, 0), float64(max(burst, 0))
}

// Allow spends one token of a's source network at time now and reports
// whether there was one. A network not seen before starts with a full bucket.
func (l *Limiter) Allow(a netip.Addr, now time.Time) bool {
	k := Network(a)
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.b[k]
	if !ok {
		if len(l.b) >= l.max {
			l.prune(now, l.max/2)
		}
		b = bucket{tokens: l.burst, last: now}
	}
	b.tokens = l.tokensAt(b, now)
	b.last = later(b.last, now)
	allowed := b.tokens >= 1
	if allowed {
		b.tokens--
	}
	l.b[k] = b
	return allowed
}

// Prune forgets the buckets that have refilled to their burst by now, which
// frees their memory without changing any answer Allow gives.
func (l *Limiter) Prune(now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.prune(now, l.max)
}

// Len returns how many source networks the table holds.
func (l *Limiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.b)
}

// prune forgets full buckets, then, while more than keep remain, the fullest
// ones: forgetting a bucket refills it, and a nearly full one loses least.
func (l *Limiter) prune(now time.Time, keep int) {
	for k, b := range l.b {
		if l.tokensAt(b, now) >= l.burst {
			delete(l.b, k)
		}
	}
	if len(l.b) <= keep {
		return
	}
	type entry struct {
		k      netip.Prefix
		tokens float64
	}
	all := make([]entry, 0, len(l.b))
	for k, b := range l.b {
		all = append(all, entry{k, l.tokensAt(b, now)})
	}
	slices.SortFunc(all, func(x, y entry) int { return cmp.Compare(y.tokens, x.tokens) })
	for _, e := range all[:len(all)-keep] {
		delete(l.b, e.k)
	}
}

// tokensAt is b's tokens at now. A clock that steps back refills nothing
// rather than taking tokens away.
func (l *Limiter) tokensAt(b bucket, now time.Time) float64 {
	if d := now.Sub(b.last); d > 0 && l.rate > 0 {
		return min(l.burst, b.tokens+d.Seconds()*l.rate)
	}
	return min(l.burst, b.tokens)
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

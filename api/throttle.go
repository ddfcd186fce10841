package api

import (
	"net/netip"
	"sync"
	"time"

	"github.com/nasreach/nasreach/internal/ratelimit"
)

// Throttle bounds what one source address may do.
type Throttle struct {
	// FailedLogins failures within FailedLoginsWindow block the source for
	// Block. The window slides: a source regains FailedLogins-1 failures
	// over each FailedLoginsWindow, so a steady trickle below that never
	// blocks and a burst of FailedLogins always does.
	FailedLogins       int
	FailedLoginsWindow time.Duration
	Block              time.Duration
	// Registrations open registrations are allowed per source per
	// RegistrationsWindow, counted like FailedLogins; the one that reaches
	// the limit blocks the source's next ones for RegistrationsWindow.
	Registrations       int
	RegistrationsWindow time.Duration
}

// DefaultThrottle is what a zero Throttle means.
var DefaultThrottle = Throttle{
	FailedLogins: 10, FailedLoginsWindow: time.Minute, Block: 5 * time.Minute,
	Registrations: 5, RegistrationsWindow: time.Hour,
}

func (t Throttle) withDefaults() Throttle {
	d := DefaultThrottle
	if t.FailedLogins > 0 {
		d.FailedLogins = t.FailedLogins
	}
	if t.FailedLoginsWindow > 0 {
		d.FailedLoginsWindow = t.FailedLoginsWindow
	}
	if t.Block > 0 {
		d.Block = t.Block
	}
	if t.Registrations > 0 {
		d.Registrations = t.Registrations
	}
	if t.RegistrationsWindow > 0 {
		d.RegistrationsWindow = t.RegistrationsWindow
	}
	return d
}

// maxTracked bounds each of the limiter's two tables, the event buckets and
// the blocks. A full block table keeps the blocks it holds rather than make
// room, so that a spray from many sources cannot unblock an earlier offender.
const maxTracked = 100_000

// limiter throttles events per source network (an IPv4 address, an IPv6 /64;
// see ratelimit.Network). Its token bucket holds limit-1 events and regains
// them over one window, so the limit-th event in a burst is the one that
// finds it empty: that event blocks the source until block has passed. The
// block is what callers see; the bucket only decides when one starts.
type limiter struct {
	events *ratelimit.Limiter
	block  time.Duration
	now    func() time.Time

	mu     sync.Mutex
	blocks map[netip.Prefix]time.Time // the source network is blocked until then
}

func newLimiter(limit int, win, block time.Duration, now func() time.Time) *limiter {
	n := limit - 1
	return &limiter{
		events: ratelimit.New(float64(n)/win.Seconds(), n, maxTracked),
		block:  block, now: now,
		blocks: map[netip.Prefix]time.Time{},
	}
}

// blocked reports whether src is blocked now.
func (l *limiter) blocked(src netip.Addr) bool {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	return now.Before(l.blocks[ratelimit.Network(src)])
}

// add records one event for src and reports whether src is now blocked.
func (l *limiter) add(src netip.Addr) bool {
	now := l.now()
	k := ratelimit.Network(src)
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Before(l.blocks[k]) {
		return true
	}
	if l.events.Allow(src, now) {
		return false
	}
	if len(l.blocks) >= maxTracked {
		l.forgetEndedBlocks(now)
	}
	if len(l.blocks) < maxTracked {
		l.blocks[k] = now.Add(l.block)
	}
	return true
}

// allow records an event and reports whether it stays within the limit.
func (l *limiter) allow(src netip.Addr) bool {
	if l.blocked(src) {
		return false
	}
	l.add(src)
	return true
}

// sweep forgets the blocks that have ended and the buckets that have refilled.
func (l *limiter) sweep() {
	now := l.now()
	l.events.Prune(now)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.forgetEndedBlocks(now)
}

func (l *limiter) forgetEndedBlocks(now time.Time) {
	for k, until := range l.blocks {
		if !now.Before(until) {
			delete(l.blocks, k)
		}
	}
}

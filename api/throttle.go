package api

import (
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Throttle bounds what one source address may do.
type Throttle struct {
	// FailedLogins failures within FailedLoginsWindow block the source for Block.
	FailedLogins       int
	FailedLoginsWindow time.Duration
	Block              time.Duration
	// Registrations open registrations are allowed per source per RegistrationsWindow.
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

// maxTracked bounds the limiter's memory: past it the sweep forgets the
// windows that do not block, then the newest blocks, so a spray from many
// sources cannot push an earlier, blocked source out.
const maxTracked = 100_000

// limiter counts events per source network (an IPv4 address, an IPv6 /64) in
// a fixed window; a source that reaches the limit is blocked until its block
// time passes.
type limiter struct {
	limit  int
	window time.Duration
	block  time.Duration
	now    func() time.Time

	mu   sync.Mutex
	seen map[netip.Prefix]*window
}

type window struct {
	start   time.Time
	count   int
	blocked time.Time // zero unless blocked until then
}

func newLimiter(limit int, win, block time.Duration, now func() time.Time) *limiter {
	return &limiter{limit: limit, window: win, block: block, now: now, seen: map[netip.Prefix]*window{}}
}

func sourceKey(a netip.Addr) netip.Prefix {
	bits := 32
	if a.Is6() {
		bits = 64
	}
	p, _ := a.Prefix(bits)
	return p
}

// blocked reports whether src is blocked now.
func (l *limiter) blocked(src netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	w := l.seen[sourceKey(src)]
	return w != nil && l.now().Before(w.blocked)
}

// add records one event for src and reports whether src is now over the limit.
func (l *limiter) add(src netip.Addr) bool {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	k := sourceKey(src)
	w := l.seen[k]
	if w == nil || now.Sub(w.start) >= l.window {
		if w != nil && now.Before(w.blocked) {
			return true
		}
		w = &window{start: now}
		l.seen[k] = w
	}
	w.count++
	if w.count >= l.limit {
		w.blocked = now.Add(l.block)
		return true
	}
	return false
}

// allow records an event and reports whether it stays within the limit.
func (l *limiter) allow(src netip.Addr) bool {
	if l.blocked(src) {
		return false
	}
	l.add(src)
	return true
}

// sweep forgets windows that have expired and are not blocking.
func (l *limiter) sweep() {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, w := range l.seen {
		if now.Sub(w.start) >= l.window && !now.Before(w.blocked) {
			delete(l.seen, k)
		}
	}
	if len(l.seen) <= maxTracked {
		return
	}
	// Many sources at once: forget windows that do not block, then the
	// newest blocks, so that a spray cannot push out an earlier offender.
	var blocks []netip.Prefix
	for k, w := range l.seen {
		if now.Before(w.blocked) {
			blocks = append(blocks, k)
		} else {
			delete(l.seen, k)
		}
	}
	if excess := len(blocks) - maxTracked; excess > 0 {
		slices.SortFunc(blocks, func(a, b netip.Prefix) int { return l.seen[b].start.Compare(l.seen[a].start) })
		for _, k := range blocks[:excess] {
			delete(l.seen, k)
		}
	}
}

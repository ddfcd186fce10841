// Package connlimit caps the connections one listener holds at once, in
// total and per source network, so that neither one listener nor one source
// can take the file descriptors (or, for QUIC, the memory) the others need.
//
// A Limiter counts live connections: Admit takes a slot for a source or
// refuses it, and the slot is given back when the connection ends. Listener
// wraps a net.Listener with it: a connection over a cap is closed as soon as
// it is accepted, before anything is read from it, and Accept goes on to the
// next one; an admitted connection gives its slot back when it is closed.
// The wrapped Accept also rides out the errors a busy server meets
// (EMFILE, ENFILE, ENOBUFS) with a growing pause instead of spinning or
// stopping the server.
package connlimit

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nasreach/nasreach/internal/netaddr"
	"github.com/nasreach/nasreach/internal/ratelimit"
)

// Defaults and bounds of Config.
const (
	// DefaultMax is the total cap when Config.Max is zero.
	DefaultMax = 1024
	// PerSourceShare is the share of the total cap one source network may
	// hold when Config.MaxPerSource is zero: one hundredth.
	PerSourceShare = 100
	// MinPerSource is the least default per-source cap, so that a source
	// behind a shared address (a carrier-grade NAT, an office) still gets
	// a few connections under a small total cap.
	MinPerSource = 8
)

// Sentinel errors of Admit, one per cap.
var (
	// ErrTotal refuses a connection because the listener holds its cap.
	ErrTotal = errors.New("connection refused: the listener holds its maximum of connections")
	// ErrSource refuses a connection because its source network holds its
	// cap.
	ErrSource = errors.New("connection refused: too many connections from this source")
)

// Config sets a Limiter's caps.
type Config struct {
	// Max bounds the connections held at once; zero means DefaultMax.
	Max int
	// MaxPerSource bounds the connections one source network (an IPv4
	// address, an IPv6 /64: see ratelimit.Network) holds at once; zero
	// means PerSource(Max).
	MaxPerSource int
	// Exempt, when set, names the sources that are not capped per source,
	// e.g. a trusted reverse proxy that carries many clients' connections:
	// they count toward Max only. It is asked once per connection, when it
	// is admitted. A connection without an IP source (a Unix socket) is
	// never capped per source.
	Exempt func(netip.Addr) bool
}

// PerSource is the default per-source cap for a total cap: a
// PerSourceShare-th of it, at least MinPerSource, at most total.
func PerSource(total int) int {
	return min(total, max(total/PerSourceShare, MinPerSource))
}

// caps returns cfg's caps with the defaults filled in.
func (cfg Config) caps() (total, perSource int) {
	total = cfg.Max
	if total <= 0 {
		total = DefaultMax
	}
	perSource = cfg.MaxPerSource
	if perSource <= 0 {
		perSource = PerSource(total)
	}
	return total, min(perSource, total)
}

// Limiter counts the live connections of one listener (or of several that
// share its caps, such as SO_REUSEPORT copies) in total and per source
// network. Its table holds only sources with a live connection, so it is
// never larger than the total cap. It is safe for concurrent use.
type Limiter struct {
	exempt func(netip.Addr) bool

	mu        sync.Mutex
	max       int
	perSource int
	live      int
	bySource  map[netip.Prefix]int

	refusedTotal, refusedSource atomic.Uint64
}

// Stats are a Limiter's counters.
type Stats struct {
	// Live is the number of connections held now.
	Live int
	// RefusedTotal counts connections refused because the total cap was
	// reached; RefusedSource those refused because their source network's
	// cap was.
	RefusedTotal, RefusedSource uint64
}

// New returns a Limiter with cfg's caps.
func New(cfg Config) *Limiter {
	l := &Limiter{exempt: cfg.Exempt, bySource: map[netip.Prefix]int{}}
	l.max, l.perSource = cfg.caps()
	return l
}

// SetCaps changes the caps, as a configuration reload does; Exempt stays.
// Nothing admitted is closed: a source over a lowered cap keeps its
// connections and is refused new ones until it is under the cap again.
func (l *Limiter) SetCaps(cfg Config) {
	total, perSource := cfg.caps()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.max, l.perSource = total, perSource
}

// Caps returns the caps in force.
func (l *Limiter) Caps() (total, perSource int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.max, l.perSource
}

// Stats returns the counters so far.
func (l *Limiter) Stats() Stats {
	l.mu.Lock()
	live := l.live
	l.mu.Unlock()
	return Stats{Live: live, RefusedTotal: l.refusedTotal.Load(), RefusedSource: l.refusedSource.Load()}
}

// Slot is one admitted connection's place in a Limiter.
type Slot struct {
	l        *Limiter
	source   netip.Prefix // the zero Prefix when not counted per source
	released atomic.Bool
}

// Admit takes a slot for a connection from src, or refuses it with ErrTotal
// or ErrSource and counts the refusal. The caller gives the slot back with
// Release when the connection ends.
func (l *Limiter) Admit(src netip.Addr) (*Slot, error) {
	s := &Slot{l: l}
	if src.IsValid() && (l.exempt == nil || !l.exempt(src.Unmap())) {
		s.source = ratelimit.Network(src)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.live >= l.max {
		l.refusedTotal.Add(1)
		return nil, ErrTotal
	}
	if s.source.IsValid() {
		if l.bySource[s.source] >= l.perSource {
			l.refusedSource.Add(1)
			return nil, ErrSource
		}
		l.bySource[s.source]++
	}
	l.live++
	return s, nil
}

// Crowded reports whether a new connection from src would take the last
// half of its source network's slots or of the total: the moment to ask a
// source whose address is not proven (QUIC's Retry) to prove it first.
func (l *Limiter) Crowded(src netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if 2*l.live >= l.max {
		return true
	}
	return src.IsValid() && 2*l.bySource[ratelimit.Network(src)] >= l.perSource
}

// Release gives the slot back; calling it again does nothing.
func (s *Slot) Release() {
	if s.released.Swap(true) {
		return
	}
	l := s.l
	l.mu.Lock()
	defer l.mu.Unlock()
	l.live--
	if s.source.IsValid() {
		if n := l.bySource[s.source] - 1; n > 0 {
			l.bySource[s.source] = n
		} else {
			delete(l.bySource, s.source)
		}
	}
}

// Accept pauses after a failed accept, firstBackoff at first and twice as
// long after each further failure, up to maxBackoff. Out of descriptors, the
// kernel keeps the connection in the backlog and the listener stays
// readable, so an accept loop that retried at once would spin (miekg/dns's
// does); net/http pauses the same way.
const (
	firstBackoff = 5 * time.Millisecond
	maxBackoff   = time.Second
)

// Listener returns ln with l's caps applied at Accept. Closing it closes ln.
func (l *Limiter) Listener(ln net.Listener) net.Listener {
	return &listener{Listener: ln, l: l, closed: make(chan struct{})}
}

type listener struct {
	net.Listener
	l         *Limiter
	closed    chan struct{}
	closeOnce sync.Once
}

// Accept returns the next admitted connection. Connections over a cap are
// closed at once (with a reset, so that neither side keeps the socket in
// TIME_WAIT) and never returned. Every error but a closed listener's is
// retried after a pause that doubles up to a second, so a server behind
// this listener sees no error until it is closed.
func (ln *listener) Accept() (net.Conn, error) {
	var pause time.Duration
	for {
		c, err := ln.Listener.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil, err
			}
			pause = min(max(2*pause, firstBackoff), maxBackoff)
			t := time.NewTimer(pause)
			select {
			case <-t.C:
			case <-ln.closed:
				t.Stop()
			}
			continue
		}
		pause = 0
		slot, err := ln.l.Admit(netaddr.Addr(c.RemoteAddr()))
		if err != nil {
			if tc, ok := c.(*net.TCPConn); ok {
				tc.SetLinger(0) //nolint:errcheck // a plain close is the fallback
			}
			c.Close()
			continue
		}
		return &conn{Conn: c, slot: slot}, nil
	}
}

// Close closes the listener and ends a pause of Accept.
func (ln *listener) Close() error {
	ln.closeOnce.Do(func() { close(ln.closed) })
	return ln.Listener.Close()
}

// conn is an admitted connection; closing it gives its slot back.
type conn struct {
	net.Conn
	slot *Slot
}

// Close closes the connection and gives its slot back (once).
func (c *conn) Close() error {
	err := c.Conn.Close()
	c.slot.Release()
	return err
}

// CloseWrite shuts down the writing side, as net.TCPConn's does; net/http
// uses it to let a last response reach the client before the close.
func (c *conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

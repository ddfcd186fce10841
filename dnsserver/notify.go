package dnsserver

import (
	"cmp"
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/internal/netaddr"
)

// NOTIFY (RFC 1996): after each change to the zone every listed secondary
// is told, so that it transfers at once instead of at its next refresh.
// Each secondary has one sender goroutine and at most one NOTIFY in flight:
// changes made while one is in flight, or less than NotifyInterval after it
// was sent, mark it dirty and cause exactly one more, once the interval is
// over. The first change after a quiet spell is notified at once; a burst of
// a thousand updates costs a handful of NOTIFYs and transfers. A NOTIFY is sent over UDP with our SOA in the answer section
// (§3.7), signed when the secondary has a key, and sent again after
// NotifyTimeout with the wait doubling, up to NotifyTries times, while no
// answer comes; an answer other than NOERROR is logged and not retried.
// One NOTIFY goes out at start too, as Knot sends one when it loads a zone.
//
// An answered NOTIFY is not yet a transfer: Knot, for one, answers but
// drops a NOTIFY that arrives while it is still transferring the serial
// before. So once answered, the sender watches the transfers served to the
// secondary's address: if none reaches the notified serial within
// notifyConfirmWait, or one ends short of it, the NOTIFY is sent again (at
// most notifyResends times; a secondary that transfers from another address
// with a key is not seen, and then costs those resends).

// NOTIFY defaults.
const (
	DefaultNotifyTimeout  = 2 * time.Second
	DefaultNotifyTries    = 5
	DefaultNotifyInterval = 250 * time.Millisecond

	notifyConfirmWait = 250 * time.Millisecond
	notifyResends     = 2
)

// NotifyEvent describes one NOTIFY sent, for OnNotify.
type NotifyEvent struct {
	// Outcome is "ok", "timeout" (no answer in time; sent again unless it
	// was the last try), "error" (not sent, or a bad answer) or the answer's
	// rcode in lower case ("refused", "notauth", …).
	Outcome string
}

// notifiers are the NOTIFY senders, one per secondary.
type notifiers struct {
	cfg     TransferConfig
	list    atomic.Pointer[[]*notifier] // the senders in force; notifyAll reads it
	restart sync.Mutex                  // serialises starting and stopping senders
	cancel  context.CancelFunc          // stops the senders in force
	stopped bool                        // Shutdown has run: no more senders
	wg      sync.WaitGroup              // every sender ever started
	once    sync.Once

	mu       sync.Mutex
	have     map[netip.Addr]transferred // the last transfer served to each address
	progress chan struct{}              // closed and replaced when have changes
}

// transferred is the serial a transfer left a client at, and when it ended.
type transferred struct {
	serial uint32
	at     time.Time
}

// recordTransfer notes that ip now has serial (a transfer or an up-to-date
// answer), for the NOTIFY senders waiting for it.
func (s *Server) recordTransfer(ip netip.Addr, serial uint32) {
	n := &s.notify
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.have == nil {
		n.have = map[netip.Addr]transferred{}
	}
	n.have[ip] = transferred{serial: serial, at: time.Now()}
	if n.progress != nil {
		close(n.progress)
	}
	n.progress = make(chan struct{})
}

// awaitTransfer waits up to wait for ip to transfer serial (or later) after
// since. It returns false when the time runs out, or when a transfer ends
// short of serial: the secondary refreshed without hearing of it.
func (s *Server) awaitTransfer(ctx context.Context, ip netip.Addr, serial uint32, since time.Time, wait time.Duration) bool {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		n := &s.notify
		n.mu.Lock()
		got, ok := n.have[ip]
		if n.progress == nil {
			n.progress = make(chan struct{})
		}
		progress := n.progress
		n.mu.Unlock()
		switch {
		case ok && !serialNewer(serial, got.serial):
			return true
		case ok && got.at.After(since):
			return false
		}
		select {
		case <-progress:
		case <-timer.C:
			return false
		case <-ctx.Done():
			return true
		}
	}
}

type notifier struct {
	sec  Secondary
	wake chan struct{} // one buffered token: "the zone changed since the last NOTIFY began"
}

// startNotifiers starts one sender per secondary, each with a NOTIFY due.
func (s *Server) startNotifiers() {
	s.notify.restart.Lock()
	defer s.notify.restart.Unlock()
	s.startNotifiersLocked()
}

// restartNotifiers stops the senders in force, waiting for them, and starts
// one for each secondary now configured.
func (s *Server) restartNotifiers() {
	s.notify.restart.Lock()
	defer s.notify.restart.Unlock()
	if s.notify.stopped {
		return
	}
	s.notify.cancel()
	s.startNotifiersLocked()
}

func (s *Server) startNotifiersLocked() {
	ctx, cancel := context.WithCancel(context.Background())
	s.notify.cancel = cancel
	interval := cmp.Or(s.notify.cfg.NotifyInterval, DefaultNotifyInterval)
	var list []*notifier
	defer func() { s.notify.list.Store(&list) }()
	for _, sec := range *s.secondaries.Load() {
		n := &notifier{sec: sec, wake: make(chan struct{}, 1)}
		n.wake <- struct{}{}
		list = append(list, n)
		s.notify.wg.Add(1)
		go func() {
			defer s.notify.wg.Done()
			for {
				select {
				case <-ctx.Done():
					return
				case <-n.wake:
				}
				began := time.Now()
				s.sendNotify(ctx, n)
				select {
				case <-ctx.Done():
					return
				case <-time.After(interval - time.Since(began)):
				}
			}
		}()
	}
}

// notifyAll marks every secondary dirty; it never blocks.
func (s *Server) notifyAll() {
	list := s.notify.list.Load()
	if list == nil {
		return
	}
	for _, n := range *list {
		select {
		case n.wake <- struct{}{}:
		default: // one is due already
		}
	}
}

// stopTransfers ends transfers in progress (between messages) and the
// NOTIFY senders, and waits for the senders up to ctx's end.
func (s *Server) stopTransfers(ctx context.Context) error {
	s.notify.once.Do(func() {
		close(s.stopXFR)
		s.notify.restart.Lock()
		defer s.notify.restart.Unlock()
		s.notify.stopped = true
		if s.notify.cancel != nil {
			s.notify.cancel()
		}
	})
	done := make(chan struct{})
	go func() {
		s.notify.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// sendNotify sends one NOTIFY to n's secondary until it is answered or the
// tries run out.
func (s *Server) sendNotify(ctx context.Context, n *notifier) {
	cfg := s.notify.cfg
	tries := cmp.Or(cfg.NotifyTries, DefaultNotifyTries)
	timeout := cmp.Or(cfg.NotifyTimeout, DefaultNotifyTimeout)
	log := s.log.With().Str("secondary", n.sec.Addr.String()).Logger()
	resends := 0
	for try := 1; try <= tries; try++ {
		serial, ok := s.journal.current()
		if !ok {
			serial = s.src.Serial()
		}
		m := new(dns.Msg)
		m.SetNotify(s.zone)
		m.Authoritative = true
		m.Answer = []dns.RR{s.soaAt(serial)}
		if n.sec.Key != "" {
			k, ok := s.keys().Key(dns.CanonicalName(n.sec.Key))
			if !ok {
				log.Error().Str("key", n.sec.Key).Msg("notify not sent: its tsig key is gone")
				s.notifyEvent("error")
				return
			}
			m.SetTsig(k.Name, k.Algorithm, tsigFudge, time.Now().Unix())
		}
		c := &dns.Client{Net: "udp", Timeout: timeout, TsigProvider: tsigProvider{s.keys()},
			Dialer: &net.Dialer{Timeout: timeout, LocalAddr: s.notifySource(n.sec.Addr.Addr())}}
		sent := time.Now()
		r, _, err := c.ExchangeContext(ctx, m, n.sec.Addr.String())
		switch {
		case ctx.Err() != nil:
			return
		case err == nil && r.Rcode == dns.RcodeSuccess:
			s.notifyEvent("ok")
			log.Debug().Uint32("serial", serial).Int("try", try).Msg("notify answered")
			if resends == notifyResends || s.awaitTransfer(ctx, n.sec.Addr.Addr(), serial, sent, notifyConfirmWait) {
				return
			}
			resends++
			try--
			log.Debug().Uint32("serial", serial).Msg("secondary did not transfer after notify; sending it again")
			continue
		case err == nil:
			outcome := strings.ToLower(dns.RcodeToString[r.Rcode])
			s.notifyEvent(cmp.Or(outcome, "error"))
			log.Warn().Uint32("serial", serial).Str("rcode", dns.RcodeToString[r.Rcode]).Msg("secondary refused the notify; it transfers at its next refresh")
			return
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			s.notifyEvent("error")
			log.Debug().Err(err).Int("try", try).Msg("notify failed")
		} else {
			s.notifyEvent("timeout")
		}
		if try == tries {
			log.Warn().Err(err).Uint32("serial", serial).Int("tries", tries).Msg("secondary does not answer notify; it transfers at its next refresh")
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(timeout << (try - 1) / 2): // the wait doubles: 1 s, 2 s, 4 s …
		case <-n.wake:
			// A new change: a fresh NOTIFY for it now, with all its tries
			// (a secondary that was down may just have come up).
			try, resends = 0, 0
		}
	}
}

// notifySource is the address NOTIFYs to dst are sent from: the address the
// server listens on, when it is one address of dst's kind (secondaries
// check that a NOTIFY comes from their primary), else the kernel's choice.
func (s *Server) notifySource(dst netip.Addr) net.Addr {
	ip := netaddr.Addr(s.Addr())
	if !ip.IsValid() || ip.IsUnspecified() || ip.Is4() != dst.Is4() || ip.IsLoopback() != dst.IsLoopback() {
		return nil
	}
	return &net.UDPAddr{IP: ip.AsSlice()}
}

func (s *Server) notifyEvent(outcome string) {
	if f := s.notify.cfg.OnNotify; f != nil {
		f(NotifyEvent{Outcome: outcome})
	}
}

// current is the serial the journal's history ends at; false after a reset
// until the next change.
func (j *journal) current() (uint32, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.head(), !j.fresh
}

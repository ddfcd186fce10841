package link

import (
	"context"
	"crypto/rand"
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Hole punching defaults (the probes are specified in wire.go).
const (
	// ProbeInterval is how often each candidate of the other end is pinged
	// while an exchange probes.
	ProbeInterval = 200 * time.Millisecond
	// ProbeTimeout is how long an exchange probes before it gives up.
	ProbeTimeout = 3 * time.Second
	// ExchangeTTL is how long an agent keeps an exchange: the addresses its
	// valid pings came from may start a direct handshake, and its
	// DirectHello is accepted, within it.
	ExchangeTTL = 30 * time.Second
	// maxSentPings bounds the pings an exchange remembers awaiting a pong:
	// room for birthday probing's (BirthdayProbes, or four rounds of
	// BirthdaySockets) beside the candidates'.
	maxSentPings = 4096
)

// errNoAnswer means no candidate of the other end answered a ping.
var errNoAnswer = errors.New("no candidate pair answered")

// exchange is one end of an introduction through the relay: its id and key,
// the pings it sent and what answered.
type exchange struct {
	id      [ExchangeIDLen]byte
	key     [KeyLen]byte
	self    byte // ProbeFromClient or ProbeFromAgent: who this end is
	ep      *endpoint
	expires time.Time

	// pinged, when set, is called with the source of every valid ping
	// (the agent authorizes that address for a direct handshake).
	pinged func(from netip.AddrPort)

	mu       sync.Mutex
	sent     map[[probeTxLen]byte]netip.AddrPort
	answered chan pong // valid pongs, in order of arrival
	// pingedFrom are the sources of valid pings: a mapping of the other
	// end's NAT that is none of its candidates (peer-reflexive), e.g. a
	// symmetric NAT's new port, which probe tries too.
	pingedFrom chan netip.AddrPort
	// used is closed when the agent's DirectHello uses the exchange up:
	// its probing, birthday probing included, has done its job.
	used chan struct{}
}

// pong is a valid answer to one of our pings: who answered and where it
// saw the ping come from.
type pong struct {
	from, observed netip.AddrPort
}

// newExchange is a client's new exchange: a fresh id and key.
func newExchange(ep *endpoint) *exchange {
	x := &exchange{self: ProbeFromClient, ep: ep}
	rand.Read(x.id[:])
	rand.Read(x.key[:])
	x.init()
	return x
}

func (x *exchange) init() {
	x.sent = map[[probeTxLen]byte]netip.AddrPort{}
	x.answered = make(chan pong, MaxCandidates)
	x.pingedFrom = make(chan netip.AddrPort, MaxCandidates)
	x.used = make(chan struct{})
}

// onProbe answers a valid ping with a pong, through via (the endpoint it
// came in on), and passes on a valid pong to one of our pings. Everything
// else, a probe this end sent reflected back included, is dropped.
func (x *exchange) onProbe(p Probe, raw []byte, from netip.AddrPort, via *endpoint) {
	if p.Sender == x.self || !VerifyProbe(raw, &x.key) {
		return
	}
	switch p.Type {
	case ProbePing:
		if x.pinged != nil { // before the pong: a handshake may follow it at once
			x.pinged(from)
		}
		via.writeTo(x.pongFor(p, from), from)
		select {
		case x.pingedFrom <- from:
		default:
		}
	case ProbePong:
		if x.pingedTo(p.Tx) == from {
			select {
			case x.answered <- pong{from: from, observed: p.Observed}:
			default:
			}
		}
	}
}

// pongFor is the answer to the valid ping p from from.
func (x *exchange) pongFor(p Probe, from netip.AddrPort) []byte {
	return AppendProbe(make([]byte, 0, ProbeLen), Probe{Type: ProbePong, Sender: x.self, Exchange: x.id, Tx: p.Tx, Observed: from}, &x.key)
}

// pingedTo returns where the ping with transaction tx went, if this
// exchange sent it.
func (x *exchange) pingedTo(tx [probeTxLen]byte) netip.AddrPort {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.sent[tx]
}

// newPing returns a new ping to to, remembered for its pong.
func (x *exchange) newPing(to netip.AddrPort) []byte {
	p := Probe{Type: ProbePing, Sender: x.self, Exchange: x.id}
	rand.Read(p.Tx[:])
	x.mu.Lock()
	if len(x.sent) < maxSentPings {
		x.sent[p.Tx] = to
	}
	x.mu.Unlock()
	return AppendProbe(make([]byte, 0, ProbeLen), p, &x.key)
}

// ping sends one ping to every candidate.
func (x *exchange) ping(cands []Candidate) {
	for _, c := range cands {
		x.ep.writeTo(x.newPing(c.Addr), c.Addr)
	}
}

// probeResult is the pair that answered first: the other end's address,
// where it saw this end, and the birthday socket the pong reached (nil
// when it was the endpoint's own).
type probeResult struct {
	win      Candidate
	observed netip.AddrPort
	sock     *net.UDPConn
}

// probe pings every candidate each ProbeInterval until one answers with a
// pong (returned), ctx ends or ProbeTimeout passes. A valid ping from an
// address that is no candidate adds it (peer-reflexive). With b, birthday
// probing starts after BirthdayAfter without an answer, and the exchange
// probes for BirthdayWindow more. With wait false it only pings (and plays
// its part in b), for the agent, which opens its NAT's mappings toward the
// client this way; it returns when the time is up or the exchange is used.
func (x *exchange) probe(ctx context.Context, cands []Candidate, wait bool, b *birthday) (probeResult, error) {
	if len(cands) == 0 && b == nil {
		return probeResult{}, errNoAnswer
	}
	timeout := ProbeTimeout
	var start <-chan time.Time
	if b != nil {
		timeout = BirthdayAfter + BirthdayWindow
		t := time.NewTimer(BirthdayAfter)
		defer t.Stop()
		start = t.C
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(ProbeInterval)
	defer tick.Stop()
	x.ping(cands)
	learned := 0
	won := make(chan probeResult, 1)
	var keep *net.UDPConn
	if b != nil {
		defer func() {
			sent, adopted := b.stop(x, keep)
			x.ep.log.Debug().Stringer("role", b.role).Int("probes", sent).Bool("won", keep != nil || adopted > 0).
				Msg("birthday probing ended")
		}()
	}
	bctx, bcancel := context.WithCancel(ctx)
	defer bcancel()
	for {
		select {
		case <-start:
			x.ep.log.Debug().Stringer("role", b.role).Msg("no answer yet: birthday probing")
			b.wg.Go(func() { b.run(bctx, x, won) })
		case r := <-won:
			// The pong came from the other end's mapped address: its
			// srflx candidate.
			keep, r.win = r.sock, candidateAt(cands, r.win.Addr)
			return r, nil
		case from := <-x.pingedFrom:
			if learned < MaxCandidates && !slices.ContainsFunc(cands, func(c Candidate) bool { return c.Addr == from }) {
				learned++
				c := Candidate{Kind: CandidatePrflx, Addr: from}
				cands = append(slices.Clip(cands), c)
				x.ping([]Candidate{c})
			}
		case p := <-x.answered:
			if !wait {
				continue
			}
			// A candidate, a learned address, or a port birthday
			// probing sprayed.
			return probeResult{win: candidateAt(cands, p.from), observed: p.observed}, nil
		case <-tick.C:
			x.ping(cands)
		case <-x.used:
			return probeResult{}, nil
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return probeResult{}, errNoAnswer
			}
			return probeResult{}, ctx.Err()
		}
	}
}

// candidateAt is the candidate at addr, or a peer-reflexive one when none
// is (a port birthday probing sprayed).
func candidateAt(cands []Candidate, addr netip.AddrPort) Candidate {
	if i := slices.IndexFunc(cands, func(c Candidate) bool { return c.Addr == addr }); i >= 0 {
		return cands[i]
	}
	return Candidate{Kind: CandidatePrflx, Addr: addr}
}

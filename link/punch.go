package link

import (
	"context"
	"crypto/rand"
	"errors"
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
	// maxSentPings bounds the pings an exchange remembers awaiting a pong.
	maxSentPings = 512
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
}

// onProbe answers a valid ping with a pong and passes on a valid pong to
// one of our pings. Everything else, a probe this end sent reflected back
// included, is dropped.
func (x *exchange) onProbe(p Probe, raw []byte, from netip.AddrPort) {
	if p.Sender == x.self || !VerifyProbe(raw, &x.key) {
		return
	}
	switch p.Type {
	case ProbePing:
		if x.pinged != nil { // before the pong: a handshake may follow it at once
			x.pinged(from)
		}
		b := AppendProbe(make([]byte, 0, ProbeLen), Probe{Type: ProbePong, Sender: x.self, Exchange: x.id, Tx: p.Tx, Observed: from}, &x.key)
		x.ep.writeTo(b, from)
		select {
		case x.pingedFrom <- from:
		default:
		}
	case ProbePong:
		x.mu.Lock()
		to, ok := x.sent[p.Tx]
		x.mu.Unlock()
		if ok && to == from {
			select {
			case x.answered <- pong{from: from, observed: p.Observed}:
			default:
			}
		}
	}
}

// ping sends one ping to every candidate.
func (x *exchange) ping(cands []Candidate) {
	for _, c := range cands {
		p := Probe{Type: ProbePing, Sender: x.self, Exchange: x.id}
		rand.Read(p.Tx[:])
		x.mu.Lock()
		if len(x.sent) < maxSentPings {
			x.sent[p.Tx] = c.Addr
		}
		x.mu.Unlock()
		x.ep.writeTo(AppendProbe(make([]byte, 0, ProbeLen), p, &x.key), c.Addr)
	}
}

// probe pings every candidate each ProbeInterval until one answers with a
// pong (returned: the candidate, and where it saw this end), ctx ends or
// ProbeTimeout passes. A valid ping from an address that is no candidate
// adds it (peer-reflexive). With wait false it only pings, for the agent,
// which opens its NAT's mappings toward the client this way.
func (x *exchange) probe(ctx context.Context, cands []Candidate, wait bool) (Candidate, netip.AddrPort, error) {
	if len(cands) == 0 {
		return Candidate{}, netip.AddrPort{}, errNoAnswer
	}
	ctx, cancel := context.WithTimeout(ctx, ProbeTimeout)
	defer cancel()
	tick := time.NewTicker(ProbeInterval)
	defer tick.Stop()
	x.ping(cands)
	learned := 0
	for {
		select {
		case from := <-x.pingedFrom:
			if learned < MaxCandidates && !slices.ContainsFunc(cands, func(c Candidate) bool { return c.Addr == from }) {
				learned++
				c := Candidate{Kind: CandidatePrflx, Addr: from}
				cands = append(slices.Clip(cands), c)
				x.ping([]Candidate{c})
			}
		case p := <-x.answered:
			for _, c := range cands {
				if wait && c.Addr == p.from {
					return c, p.observed, nil
				}
			}
		case <-tick.C:
			x.ping(cands)
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return Candidate{}, netip.AddrPort{}, errNoAnswer
			}
			return Candidate{}, netip.AddrPort{}, ctx.Err()
		}
	}
}

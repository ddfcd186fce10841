package link

import (
	"context"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Port prediction for a symmetric NAT (wire.go, "NAT mapping and birthday
// probing"): each end classifies its NAT's mapping from two STUN answers,
// says so in its candidates, and when one end maps endpoint-independently
// and the other does not, the two probe until a port matches.

// Birthday probing defaults. With BirthdaySockets mappings on the symmetric
// side among the 64,512 ports a NAT draws from (1024–65535), each of the
// other side's probes finds one with probability 256/64512; BirthdayProbes
// of them miss all with probability (1-256/64512)^2048 ≈ 0.03%. Half the
// attempts find one within the first 175 probes.
const (
	// BirthdaySockets is how many sockets the symmetric side opens, each
	// pinging the other side's one mapped address: as many mappings, at
	// ports its NAT draws at random.
	BirthdaySockets = 256
	// BirthdayProbes bounds the pings the endpoint-independent side sends
	// to distinct random ports of the symmetric side's public address.
	BirthdayProbes = 2048
	// BirthdayRate is how many probes per second either side sends at most
	// while it opens sockets or sprays ports.
	BirthdayRate = 1000
	// BirthdayAfter is how long an exchange probes the candidates alone
	// before birthday probing starts: plain probing needs only a round
	// trip when it works (a full cone against a symmetric NAT), and then
	// no socket is opened and no port sprayed.
	BirthdayAfter = time.Second
	// BirthdayWindow bounds birthday probing; the exchange then gives up.
	BirthdayWindow = 4 * time.Second
	// birthdayRepeat is how often each of the symmetric side's sockets
	// pings again, in case a ping was lost.
	birthdayRepeat = time.Second
	// birthdayBurst probes go out together, birthdayBurst/BirthdayRate
	// apart: timers of a few milliseconds stay accurate on a busy machine.
	birthdayBurst = 10
	// Ports a NAT maps to (Linux: 1024–65535 for a source port above 1023).
	minMappedPort = 1024
	// maxBirthdays bounds the birthday probing an agent or a Dialer does
	// at once: each holds up to BirthdaySockets sockets or sends up to
	// BirthdayProbes probes, and a client may ask for exchanges at the
	// relay's stream rate. Over it, an exchange probes its candidates only.
	maxBirthdays = 2
)

// mappingKind is how a NAT maps a socket (RFC 4787 §4.1), as two STUN
// servers saw it.
type mappingKind uint8

const (
	mappingUnknown     mappingKind = iota // fewer than two answers, or two addresses
	mappingIndependent                    // both saw one address and port
	mappingVaries                         // one address, two ports: symmetric
)

// natMapping is a NAT's mapping of one socket: its kind and the public
// address (with the port both servers saw, when independent).
type natMapping struct {
	kind mappingKind
	addr netip.AddrPort
}

// String is what the logs say (nat=...).
func (m natMapping) String() string {
	switch m.kind {
	case mappingIndependent:
		return "endpoint-independent"
	case mappingVaries:
		return "symmetric"
	}
	return "unknown"
}

// classifyMapping compares the mapped addresses two STUN servers reported
// for one socket.
func classifyMapping(a, b netip.AddrPort) natMapping {
	switch {
	case !a.IsValid() || !b.IsValid() || a.Addr() != b.Addr():
		return natMapping{}
	case a == b:
		return natMapping{kind: mappingIndependent, addr: a}
	}
	return natMapping{kind: mappingVaries, addr: netip.AddrPortFrom(a.Addr(), 0)}
}

// withMapping appends the candidate that tells the other end how this end's
// NAT maps (CandidateNAT), when known and there is room.
func withMapping(cs []Candidate, m natMapping, relay netip.Addr) []Candidate {
	if m.kind == mappingUnknown || !offerable(m.addr.Addr(), relay) || len(cs) >= MaxCandidates {
		return cs
	}
	return append(cs, Candidate{Kind: CandidateNAT, Addr: m.addr})
}

// peerMapping reads the other end's NAT mapping from its candidates.
func peerMapping(cs []Candidate) natMapping {
	for _, c := range cs {
		if c.Kind != CandidateNAT || !c.Addr.Addr().IsValid() {
			continue
		}
		a := netip.AddrPortFrom(c.Addr.Addr().Unmap(), c.Addr.Port())
		if a.Port() == 0 {
			return natMapping{kind: mappingVaries, addr: a}
		}
		return natMapping{kind: mappingIndependent, addr: a}
	}
	return natMapping{}
}

// birthdayRole is an end's part in birthday probing.
type birthdayRole uint8

const (
	birthdayNone  birthdayRole = iota
	birthdayOpen               // symmetric: many sockets ping the other end's one address
	birthdaySpray              // endpoint-independent: ping random ports of the other end's NAT
)

func (r birthdayRole) String() string {
	switch r {
	case birthdayOpen:
		return "open sockets"
	case birthdaySpray:
		return "spray ports"
	}
	return "none"
}

// birthday is an exchange's birthday probing, set up when the two ends'
// mappings call for it (planBirthday). The symmetric side opens
// BirthdaySockets sockets, each pinging the other side's mapped address:
// each gets a random port of its NAT, open only to that address. The other
// side, whose one mapping is known and stays, pings random ports of the
// symmetric NAT's address: each ping opens its own NAT's filter to that
// port, and reaches a socket when the port is one of its mappings. One
// match is enough: the ping gets through, or that socket's next ping does.
type birthday struct {
	role birthdayRole
	// target is, for birthdayOpen, the other end's mapped address; for
	// birthdaySpray, its NAT's address (the port is what is sprayed).
	target netip.AddrPort
	// listen and local open the symmetric side's sockets.
	listen listenUDP
	local  netip.Addr
	// adopt, on the agent, turns a socket that a valid ping reached into
	// an endpoint accepting the direct handshake there; nil on the client,
	// which dials from the socket that a pong reached.
	adopt func(*net.UDPConn) (*endpoint, error)

	wg      sync.WaitGroup
	mu      sync.Mutex
	stopped bool
	socks   []*net.UDPConn
	winner  *net.UDPConn               // the client's: the first socket a pong reached
	adopted map[*net.UDPConn]*endpoint // the agent's: sockets a ping reached
	sent    int                        // probes sent, for the logs
}

// listenUDP opens a UDP socket, as net.ListenUDP does.
type listenUDP func(network string, laddr *net.UDPAddr) (*net.UDPConn, error)

// planBirthday returns the birthday probing an exchange calls for, or nil:
// only when both ends' mappings are known, one symmetric and the other
// endpoint-independent (two symmetric NATs would need some 65,000 probes a
// side: that pair keeps the relay), and the socket can reach the address.
func planBirthday(self, peer natMapping, local netip.AddrPort, relay netip.Addr) *birthday {
	b := &birthday{local: local.Addr(), adopted: map[*net.UDPConn]*endpoint{}}
	switch {
	case self.kind == mappingVaries && peer.kind == mappingIndependent:
		b.role, b.target = birthdayOpen, peer.addr
	case self.kind == mappingIndependent && peer.kind == mappingVaries:
		b.role, b.target = birthdaySpray, peer.addr
	default:
		return nil
	}
	if !offerable(b.target.Addr(), relay) || (local.Addr().Is4() && !b.target.Addr().Is4()) {
		return nil
	}
	return b
}

// run plays the end's part until ctx ends; a socket of the symmetric side
// that wins (a pong on the client) is sent on won.
func (b *birthday) run(ctx context.Context, x *exchange, won chan<- probeResult) {
	if b.role == birthdaySpray {
		b.spray(ctx, x)
		return
	}
	b.open(ctx, x, won)
}

// pace waits between bursts of probes; false when ctx ended.
func pace(ctx context.Context, t *time.Ticker, sent int) bool {
	if sent%birthdayBurst != 0 {
		return true
	}
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// spray pings up to BirthdayProbes distinct random ports of the target's
// address from the endpoint's socket.
func (b *birthday) spray(ctx context.Context, x *exchange) {
	t := time.NewTicker(birthdayBurst * time.Second / BirthdayRate)
	defer t.Stop()
	seen := make(map[uint16]bool, BirthdayProbes)
	for len(seen) < BirthdayProbes {
		port := uint16(minMappedPort + rand.IntN(1<<16-minMappedPort))
		if seen[port] {
			continue
		}
		seen[port] = true
		to := netip.AddrPortFrom(b.target.Addr(), port)
		x.ep.writeTo(x.newPing(to), to)
		b.count()
		if !pace(ctx, t, len(seen)) {
			return
		}
	}
}

// open opens BirthdaySockets sockets, each pinging the target and reading
// what comes back, then pings from each again every birthdayRepeat.
func (b *birthday) open(ctx context.Context, x *exchange, won chan<- probeResult) {
	t := time.NewTicker(birthdayBurst * time.Second / BirthdayRate)
	defer t.Stop()
	listen := b.listen
	if listen == nil {
		listen = net.ListenUDP
	}
	for round := 0; ; round++ {
		start := time.Now()
		for i := range BirthdaySockets {
			var s *net.UDPConn
			if round == 0 {
				var err error
				if s, err = listen("udp", &net.UDPAddr{IP: b.local.AsSlice()}); err != nil {
					x.ep.log.Debug().Err(err).Int("sockets", i).Msg("birthday probing: cannot open more sockets")
					return
				}
				if !b.track(s) {
					return
				}
				b.wg.Go(func() { b.read(x, s, won) })
			} else if s = b.socket(i); s == nil {
				continue
			}
			s.WriteToUDPAddrPort(x.newPing(b.target), b.target)
			b.count()
			if !pace(ctx, t, i+1) {
				return
			}
		}
		select {
		case <-time.After(time.Until(start.Add(birthdayRepeat))):
		case <-ctx.Done():
			return
		}
	}
}

func (b *birthday) count() {
	b.mu.Lock()
	b.sent++
	b.mu.Unlock()
}

// track adds s to the sockets stop closes; false (and s closed) once
// stopped.
func (b *birthday) track(s *net.UDPConn) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopped {
		s.Close()
		return false
	}
	b.socks = append(b.socks, s)
	return true
}

// socket returns the i-th socket while it is this birthday's to ping
// from: not the winner, not adopted.
func (b *birthday) socket(i int) *net.UDPConn {
	b.mu.Lock()
	defer b.mu.Unlock()
	if i >= len(b.socks) || b.socks[i] == b.winner || b.adopted[b.socks[i]] != nil {
		return nil
	}
	return b.socks[i]
}

// read handles the probes that reach one of the symmetric side's sockets,
// from the target only. A valid ping is answered (and, on the agent, makes
// the socket an endpoint that accepts the direct handshake: the client
// dials the socket its pong came from); on the client it is also pinged
// back, so that the agent, which picks nothing, hears from this mapping and
// answers. A valid pong to one of this exchange's pings makes the socket
// the client's winner.
func (b *birthday) read(x *exchange, s *net.UDPConn, won chan<- probeResult) {
	buf := make([]byte, ProbeLen+1)
	for {
		n, from, err := s.ReadFromUDPAddrPort(buf)
		if err != nil {
			return // closed by stop
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		raw := buf[:n]
		if from != b.target || !IsProbe(raw) {
			continue
		}
		p, err := ParseProbe(raw)
		if err != nil || p.Exchange != x.id || p.Sender == x.self || !VerifyProbe(raw, &x.key) {
			continue
		}
		switch {
		case p.Type == ProbePing && b.adopt != nil:
			if x.pinged != nil { // before the pong: the handshake follows it at once
				x.pinged(from)
			}
			ep := b.adoptSocket(x, s)
			if ep != nil {
				ep.writeTo(x.pongFor(p, from), from)
			}
			return // the endpoint reads the socket from now on
		case p.Type == ProbePing:
			s.WriteToUDPAddrPort(x.pongFor(p, from), from)
			s.WriteToUDPAddrPort(x.newPing(from), from)
		case p.Type == ProbePong && b.adopt == nil && x.pingedTo(p.Tx) == from:
			b.mu.Lock()
			first := !b.stopped && b.winner == nil
			if first {
				b.winner = s
				won <- probeResult{win: Candidate{Addr: from}, observed: p.Observed, sock: s} // room for one
			}
			b.mu.Unlock()
			return
		}
	}
}

// adoptSocket hands s to an endpoint of the agent's (adopt), which reads it
// from then on with the exchange registered; nil once stopped or when adopt
// fails.
func (b *birthday) adoptSocket(x *exchange, s *net.UDPConn) *endpoint {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopped {
		return nil
	}
	ep, err := b.adopt(s)
	if err != nil {
		x.ep.log.Debug().Err(err).Msg("birthday probing: cannot accept on the socket that was reached")
		return nil
	}
	ep.register(x)
	b.adopted[s] = ep
	return ep
}

// stop ends the birthday: it closes every socket but keep and the adopted
// ones, waits for their readers and forgets the exchange on the adopted
// endpoints (they accept the handshake for ExchangeTTL all the same). It
// returns how many probes were sent and how many sockets were adopted.
func (b *birthday) stop(x *exchange, keep *net.UDPConn) (sent, adopted int) {
	b.mu.Lock()
	b.stopped = true
	for _, s := range b.socks {
		if s != keep && b.adopted[s] == nil {
			s.Close()
		}
	}
	b.mu.Unlock()
	b.wg.Wait()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, ep := range b.adopted {
		ep.unregister(x)
	}
	return b.sent, len(b.adopted)
}

// relaySTUNTimeout bounds the Binding to the relay's own port, asked after
// the STUN server's: a relay that predates it does not answer, and the
// mapping then stays unknown.
const relaySTUNTimeout = time.Second

// discoverMapping asks the STUN server for the socket's mapped address and
// the relay's own port for another, and classifies the NAT's mapping from
// the two. Only the first failing is an error.
func (e *endpoint) discoverMapping(ctx context.Context, server, relay netip.AddrPort) (netip.AddrPort, natMapping, error) {
	mapped, err := e.discover(ctx, server, stunTimeout)
	if err != nil || !relay.IsValid() || relay == server {
		return mapped, natMapping{}, err
	}
	other, err := e.discover(ctx, relay, relaySTUNTimeout)
	if err != nil {
		e.log.Debug().Err(err).Msg("the relay does not answer stun binding: nat mapping unknown")
		return mapped, natMapping{}, nil
	}
	return mapped, classifyMapping(mapped, other), nil
}

// closeIfSet closes e unless it is nil: a direct connection's own
// endpoint, which only birthday probing gives it.
func (e *endpoint) closeIfSet() {
	if e != nil {
		e.close()
	}
}

// adoptSocket is the agent's birthday.adopt: the socket a client's valid
// ping reached becomes an endpoint that accepts one direct connection from
// an address a valid ping came from, within ExchangeTTL, and serves it as
// the main socket's listener would; the endpoint closes with it.
func (a *Agent) adoptSocket(conn *net.UDPConn) (*endpoint, error) {
	ep := endpointOn(conn, a.allowSource, a.log)
	ln, err := ep.tr.Listen(a.direct.tls, directQUIC(a.cfg.HandshakeTimeout))
	if err != nil {
		ep.close()
		return nil, err
	}
	serve := func() {
		defer ep.close()
		ctx, cancel := context.WithTimeout(a.ctx, ExchangeTTL)
		c, err := ln.Accept(ctx)
		cancel()
		ln.Close() // the connection, if any, stays
		if err != nil {
			return
		}
		if dc := a.trackDirect(c); dc != nil {
			a.serveDirect(dc)
		}
	}
	if !a.wg.Go(serve) {
		ep.close()
		return nil, net.ErrClosed
	}
	return ep, nil
}

// takeSlot takes a slot of slots if one is free.
func takeSlot(slots chan struct{}) bool {
	select {
	case slots <- struct{}{}:
		return true
	default:
		return false
	}
}

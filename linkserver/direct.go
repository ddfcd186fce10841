package linkserver

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/nasreach/nasreach/anonymize"
	"github.com/nasreach/nasreach/connlog"
	"github.com/nasreach/nasreach/internal/netaddr"
	"github.com/nasreach/nasreach/link"
)

// The relay's part in direct paths (link/wire.go, "Direct paths"): it tells
// agents and clients where its STUN server is and whether it introduces
// them (Info), passes candidates between the two authenticated ends of an
// exchange (Direct, Punch, Candidates), and counts how attempts end
// (Report). It never sees a probe or a byte of a direct session.

// infoWriteTimeout bounds writing a RelayInfo to a peer that does not read.
const infoWriteTimeout = 5 * time.Second

// infoStream is an open Info stream.
type infoStream struct {
	s  link.Stream
	mu sync.Mutex // one RelayInfo written at a time
}

// SetDirect turns the introduction of clients to agents on or off while the
// relay runs, as a configuration reload does, and tells every agent and
// client holding an Info stream. Agents close their direct connections
// when it goes off.
func (l *Server) SetDirect(on bool) {
	if l.direct.Swap(on) == on {
		return
	}
	l.mu.Lock()
	subs := make([]*infoStream, 0, len(l.infos))
	for _, is := range l.infos {
		subs = append(subs, is)
	}
	l.mu.Unlock()
	for _, is := range subs {
		l.wg.Go(func() { l.sendInfo(is) })
	}
}

// relayInfo is what Info streams are told.
func (l *Server) relayInfo() link.RelayInfo {
	return link.RelayInfo{Direct: l.direct.Load(), STUN: l.cfg.STUN}
}

func (l *Server) sendInfo(is *infoStream) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.s.SetWriteDeadline(l.cfg.Now().Add(infoWriteTimeout))
	if err := link.WriteFrame(is.s, l.relayInfo()); err != nil {
		is.s.CancelWrite(link.StreamAborted)
	}
	is.s.SetWriteDeadline(time.Time{})
}

// serveInfo answers an Info request with RelayInfo, now and at every
// change until c ends (dropInfo). It starts no goroutine: the stream is
// kept with its connection, one per connection, a newer one replacing it.
func (l *Server) serveInfo(c link.Carrier, s link.Stream) {
	is := &infoStream{s: s}
	l.mu.Lock()
	old := l.infos[c]
	l.infos[c] = is
	l.mu.Unlock()
	if old != nil {
		old.s.CancelRead(link.StreamAborted)
		old.s.CancelWrite(link.StreamAborted)
	}
	if c.Context().Err() != nil { // c ended, and its dropInfo may have run already
		l.dropInfo(c)
		return
	}
	l.sendInfo(is)
}

// dropInfo forgets c's Info stream when c has ended.
func (l *Server) dropInfo(c link.Carrier) {
	l.mu.Lock()
	delete(l.infos, c)
	l.mu.Unlock()
}

// serveAgentStream serves a stream an agent opened: Info only.
func (l *Server) serveAgentStream(c link.Carrier, s link.Stream) {
	s.SetReadDeadline(l.cfg.Now().Add(l.cfg.HandshakeTimeout))
	fr, err := link.ReadFrame(s, l.cfg.MaxHeaderBytes)
	s.SetReadDeadline(time.Time{})
	if _, ok := fr.(link.Info); err != nil || !ok {
		s.CancelRead(link.StreamRefused)
		s.CancelWrite(link.StreamRefused)
		return
	}
	l.serveInfo(c, s)
}

// exchange introduces a client to a device's agent: it authorizes the
// request as a session, passes the client's candidates to the agent and the
// agent's answer back, and logs the exchange with every address masked.
func (l *Server) exchange(cs link.Stream, req link.Direct, src netip.AddrPort) {
	start := l.cfg.Now()
	device := strings.ToLower(req.Device)
	kind := "exchange"
	if len(req.Candidates) == 0 {
		kind = "renew" // an authorization renewed: no probes follow
	}
	ev := connlog.Event{Kind: kind, Device: device, Client: src.Addr(), Start: start}
	refuse := func(st link.Status, msg string) { l.refuse(cs, ev, st, msg, link.TransportQUIC) }
	if !l.direct.Load() {
		refuse(link.StatusNoDirect, "direct paths are off on this relay")
		return
	}
	a, st, msg := l.authorize(src.Addr(), device, req.AccessCode, start)
	if st != link.StatusOK {
		refuse(st, msg)
		return
	}
	defer a.streams.Add(-1)
	// Remembered before the agent hears of it, and checked again after: a
	// revocation in between is seen by one or the other (revoke.go).
	l.remember(device, req.Exchange, req.AccessCode)
	if d, err := l.cfg.Store.Get(device); err != nil || !admits(d, req.AccessCode, l.cfg.Store) {
		refuse(link.StatusAccessDenied, fmt.Sprintf("the access code is not valid for device %s", device))
		return
	}
	agentAddr := netaddr.AddrPort(a.conn.RemoteAddr())
	as, fr, err := l.ask(a, link.Punch{Exchange: req.Exchange, Key: req.Key, Candidates: offerable(req.Candidates, src.Addr(), agentAddr.Addr())})
	if err != nil {
		refuse(link.StatusOffline, fmt.Sprintf("device %s did not answer", device))
		return
	}
	as.CancelRead(link.StreamAborted)
	as.Close()
	var answer link.Candidates
	switch f := fr.(type) {
	case link.Candidates:
		answer = link.Candidates{Candidates: offerable(f.Candidates, agentAddr.Addr(), src.Addr())}
	case link.Result:
		st := f.Status
		if st == link.StatusOK || st == link.StatusBadRequest { // an agent that predates direct paths
			st, f.Message = link.StatusNoDirect, fmt.Sprintf("device %s does not take direct paths", device)
		}
		refuse(st, f.Message)
		return
	default:
		refuse(link.StatusOffline, fmt.Sprintf("device %s did not answer", device))
		return
	}
	if err := link.WriteFrame(cs, answer); err != nil {
		ev.Outcome, ev.Detail = "error", "client went away"
		l.event(ev)
		return
	}
	cs.Close()
	cs.CancelRead(link.StreamAborted)
	ev.Outcome, ev.Time = "ok", l.cfg.Now()
	if kind == "exchange" {
		ev.Detail = "client " + maskedCandidates(req.Candidates) + "; agent " + maskedCandidates(answer.Candidates)
	}
	l.event(ev)
}

// offerable keeps the candidates from the peer at address from that may
// go to the peer at address to: never a link-local one, a loopback one only
// to a peer that reaches the relay over loopback (on the relay's machine,
// as the sender then is too), and a NAT mapping (link.CandidateNAT) only
// when its address is from, the one the relay sees: the other end sprays
// up to link.BirthdayProbes pings at it, which must not be aimed at a third
// party. The ends filter what they offer and probe the same way; the relay
// makes sure of it.
func offerable(cs []link.Candidate, from, to netip.Addr) []link.Candidate {
	var out []link.Candidate
	for _, c := range cs {
		a := c.Addr.Addr().Unmap()
		if a.IsLinkLocalUnicast() || (a.IsLoopback() && !to.Unmap().IsLoopback()) ||
			(c.Kind == link.CandidateNAT && a != from.Unmap()) {
			continue
		}
		out = append(out, c)
	}
	return out
}

// maskedCandidates lists candidates for the connection log, each address
// masked (connlog masks Detail again): "host 192.168.1.0 srflx 203.0.113.0".
func maskedCandidates(cs []link.Candidate) string {
	if len(cs) == 0 {
		return "none"
	}
	parts := make([]string, 0, len(cs))
	for _, c := range cs {
		parts = append(parts, c.Kind.String()+" "+anonymize.Addr(c.Addr.Addr()).String())
	}
	return strings.Join(parts, " ")
}

// report counts how a client's attempt at a direct path ended: one
// connection-log event (Kind "punch", the outcome, the pair's kinds; for a
// direct path Start is when the client started, so that the metrics see
// the time to direct).
func (l *Server) report(s link.Stream, r link.Report, src netip.AddrPort) {
	defer func() {
		s.Close()
		s.CancelRead(link.StreamAborted)
	}()
	now := l.cfg.Now()
	if !l.limiter.Allow(src.Addr(), now) {
		link.WriteFrame(s, link.Result{Status: link.StatusRateLimited, Message: "too many requests from your address; slow down"})
		return
	}
	if r.Outcome.String() == "unknown" {
		link.WriteFrame(s, link.Result{Status: link.StatusBadRequest, Message: fmt.Sprintf("unknown outcome %d", r.Outcome)})
		return
	}
	device := strings.ToLower(r.Device)
	if _, err := l.cfg.Store.Get(device); err != nil {
		link.WriteFrame(s, link.Result{Status: link.StatusUnknownDevice, Message: fmt.Sprintf("no device %q on this relay", device)})
		return
	}
	ev := connlog.Event{Kind: "punch", Outcome: r.Outcome.String(), Device: device, Client: src.Addr(), Time: now}
	if r.Local != 0 {
		ev.Detail = r.Local.String() + ">" + r.Remote.String()
	}
	if r.Outcome == link.PunchDirect {
		ev.Start = now.Add(-time.Duration(r.Millis) * time.Millisecond)
	}
	l.event(ev)
	link.WriteFrame(s, link.Result{Status: link.StatusOK})
}

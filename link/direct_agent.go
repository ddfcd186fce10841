package link

import (
	"context"
	"crypto/hmac"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// The agent's side of direct paths (wire.go, "Direct paths"): it asks the
// relay for its STUN server, keeps its server-reflexive address fresh,
// answers Punch with its candidates and probes, and accepts direct QUIC
// connections on its one socket from the addresses a valid ping came from,
// serving them for DirectLifetime after a DirectHello.

// Agent direct-path defaults.
const (
	// DefaultDirectLifetime is how long a DirectHello authorizes new
	// sessions on a direct connection; the client renews it through the
	// relay, which checks the device and the access code again.
	DefaultDirectLifetime = 10 * time.Minute
	// DirectGrantTTL is how long the relay remembers the access code of an
	// exchange it introduced, to revoke its direct connection at once when
	// the code is revoked (wire.go): a DirectHello within ExchangeTTL,
	// then DefaultDirectLifetime.
	DirectGrantTTL = DefaultDirectLifetime + ExchangeTTL
	// DefaultSTUNEvery is how often the agent refreshes its
	// server-reflexive address: a NAT may rebind it, and the DDNS address
	// follows it.
	DefaultSTUNEvery = time.Minute
	// maxExchanges bounds an agent's exchanges in progress.
	maxExchanges = 256
	// maxDirectConns bounds an agent's direct connections.
	maxDirectConns = 256
	// maxAllowed bounds the source addresses an agent remembers from pings.
	maxAllowed = 1024
	// directKeepAlive and directIdleTimeout detect a dead direct path
	// sooner than the relay's timers do: its sessions go back to the relay.
	directKeepAlive   = 5 * time.Second
	directIdleTimeout = 15 * time.Second
	// punchFresh is the age beyond which the agent asks STUN again before
	// answering a Punch with its candidates: in effect at every exchange
	// (one round trip to the STUN server more), since a mapping may have
	// moved at any moment, and a client repairing a silent direct path
	// needs the current one.
	punchFresh = time.Second
	// stunTimeout bounds one STUN Binding (with its retransmissions).
	stunTimeout = 3 * time.Second
	// maxDirectStreams is how many sessions a direct connection may have open.
	maxDirectStreams = 256
)

// agentDirect is the agent's direct-path state.
type agentDirect struct {
	ln  *quic.Listener // nil with direct paths off
	tls *tls.Config    // of ln, and of the sockets birthday probing adopts

	mu        sync.Mutex
	info      RelayInfo
	relayAddr netip.AddrPort // the relay's address as dialed
	overTCP   bool           // the relay is reached over TCP: UDP is blocked
	srflx     netip.AddrPort // the NAT mapping STUN last reported
	mapping   natMapping     // how the NAT maps (srflx compared with the relay's answer)
	srflxAt   time.Time
	grants    map[[ExchangeIDLen]byte]*exchange // exchanges awaiting their DirectHello
	allowed   map[netip.AddrPort]time.Time      // sources of valid pings, until when
	conns     map[*quic.Conn]*directConn
	stunKick  chan struct{}
	birthdays chan struct{} // a slot per birthday probing in progress (maxBirthdays)
}

// directConn is a direct connection from a client.
type directConn struct {
	conn *quic.Conn
	mu   sync.Mutex
	// until is when its authorization to open sessions ends; zero before
	// the first DirectHello.
	until time.Time
	// exchange is the one its latest DirectHello used: the relay names it
	// in Revoke.
	exchange [ExchangeIDLen]byte
}

func (dc *directConn) authorizedAt(t time.Time) bool {
	dc.mu.Lock()
	defer dc.mu.Unlock()
	return t.Before(dc.until)
}

// directServerTLS is the agent's TLS config for direct connections: the device
// certificate, the key clients pin.
func directServerTLS(cert tls.Certificate) *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{DirectALPN}, Certificates: []tls.Certificate{cert}}
}

// directQUIC is the QUIC configuration of direct connections, both ends.
func directQUIC(handshake time.Duration) *quic.Config {
	return &quic.Config{
		HandshakeIdleTimeout: handshake, MaxIdleTimeout: directIdleTimeout, KeepAlivePeriod: directKeepAlive,
		MaxIncomingStreams: maxDirectStreams, MaxIncomingUniStreams: -1,
	}
}

// allowSource is the endpoint's question for each new direct connection:
// did a valid ping come from that address lately?
func (a *Agent) allowSource(from netip.AddrPort) bool {
	a.direct.mu.Lock()
	defer a.direct.mu.Unlock()
	until, ok := a.direct.allowed[from]
	return ok && time.Now().Before(until)
}

// allow lets from start a direct handshake for ExchangeTTL.
func (a *Agent) allow(from netip.AddrPort) {
	now := time.Now()
	ad := &a.direct
	ad.mu.Lock()
	defer ad.mu.Unlock()
	if _, ok := ad.allowed[from]; !ok && len(ad.allowed) >= maxAllowed {
		for k, until := range ad.allowed {
			if !now.Before(until) {
				delete(ad.allowed, k)
			}
		}
		if len(ad.allowed) >= maxAllowed {
			return
		}
	}
	ad.allowed[from] = now.Add(ExchangeTTL)
}

// watchInfo asks the relay for its RelayInfo on a stream of c and follows
// its changes until the stream or c ends. A relay that predates direct
// paths resets the stream: then there is no STUN and no direct path.
func (a *Agent) watchInfo(c Carrier) {
	s, err := c.OpenStreamSync(a.ctx)
	if err != nil {
		return
	}
	sc := newStreamConn(s, c)
	defer sc.Close()
	if err := WriteFrame(sc, Info{}); err != nil {
		return
	}
	followRelayInfo(sc, func(info RelayInfo, first bool) {
		ad := &a.direct
		ad.mu.Lock()
		was := ad.info
		ad.info = info
		ad.mu.Unlock()
		if was.Direct && !info.Direct {
			a.closeDirect(CloseNormal, "the relay's operator turned direct paths off")
		}
		// A new relay connection may come from a new mapping: ask STUN at once.
		if info.STUN.Port() != 0 && (first || was.STUN != info.STUN) {
			select {
			case ad.stunKick <- struct{}{}:
			default:
			}
		}
	})
}

// followRelayInfo hands f every RelayInfo read from an Info stream until
// the stream ends (first: the answer to Info).
func followRelayInfo(sc *streamConn, f func(info RelayInfo, first bool)) {
	for first := true; ; first = false {
		fr, err := ReadFrame(sc, 0)
		if err != nil {
			return
		}
		info, ok := fr.(RelayInfo)
		if !ok {
			return
		}
		f(info, first)
	}
}

// stunServer is where the relay's STUN server is, if it runs one.
func stunServer(info RelayInfo, relay netip.AddrPort) (netip.AddrPort, bool) {
	if info.STUN.Port() == 0 || !relay.IsValid() {
		return netip.AddrPort{}, false
	}
	if info.STUN.Addr().IsUnspecified() {
		return netip.AddrPortFrom(relay.Addr(), info.STUN.Port()), true
	}
	return info.STUN, true
}

// stunLoop keeps the agent's server-reflexive address fresh: at once when
// the relay names its STUN server, then every STUNEvery. A new address
// nudges the API loop, which publishes it as the DDNS address.
func (a *Agent) stunLoop() {
	t := time.NewTicker(a.cfg.STUNEvery)
	defer t.Stop()
	for {
		select {
		case <-a.ctx.Done():
			return
		case <-t.C:
		case <-a.direct.stunKick:
		}
		a.refreshSTUN()
	}
}

// refreshSTUN asks the STUN server (and the relay) for the agent's
// server-reflexive address and NAT mapping now.
func (a *Agent) refreshSTUN() {
	ad := &a.direct
	ad.mu.Lock()
	server, ok := stunServer(ad.info, ad.relayAddr)
	relay := ad.relayAddr
	ad.mu.Unlock()
	if !ok {
		return
	}
	mapped, m, err := a.ep.discoverMapping(a.ctx, server, relay)
	if err != nil {
		a.log.Debug().Err(err).Msg("stun binding failed")
		return
	}
	ad.mu.Lock()
	changed := ad.srflx.Addr() != mapped.Addr()
	classified := ad.mapping.kind != m.kind
	ad.srflx, ad.mapping, ad.srflxAt = mapped, m, time.Now()
	ad.mu.Unlock()
	if classified {
		a.log.Info().Str("nat", m.String()).Msg("nat mapping classified")
	}
	if changed {
		a.log.Debug().Stringer("srflx", mapped).Msg("server-reflexive address learned")
		select {
		case a.kick <- struct{}{}:
		default:
		}
	}
}

// wanAddress is the server-reflexive address if STUN reported it lately.
func (a *Agent) wanAddress() (netip.Addr, bool) {
	ad := &a.direct
	ad.mu.Lock()
	defer ad.mu.Unlock()
	if ad.srflx.IsValid() && time.Since(ad.srflxAt) < 3*a.cfg.STUNEvery {
		return ad.srflx.Addr(), true
	}
	return netip.Addr{}, false
}

// candidates are the agent's host and server-reflexive candidates.
func (a *Agent) candidates() []Candidate {
	ad := &a.direct
	ad.mu.Lock()
	relay, srflx, m := ad.relayAddr.Addr(), ad.srflx, ad.mapping
	ad.mu.Unlock()
	ifaces, _ := net.InterfaceAddrs()
	return withMapping(withSrflx(hostCandidates(a.ep.local, relay, ifaces), srflx, relay), m, relay)
}

// punch answers the relay's Punch: the agent's candidates, then pings to
// the client's while it keeps the exchange for its DirectHello.
func (a *Agent) punch(sc *streamConn, p Punch) {
	if a.direct.ln == nil {
		WriteFrame(sc, Result{Status: StatusNoDirect, Message: fmt.Sprintf("device %s has direct paths off", a.cfg.Device)})
		return
	}
	a.direct.mu.Lock()
	overTCP := a.direct.overTCP
	a.direct.mu.Unlock()
	if overTCP {
		WriteFrame(sc, Result{Status: StatusNoDirect, Message: fmt.Sprintf("device %s reaches the relay over TCP: no UDP for a direct path", a.cfg.Device)})
		return
	}
	// A mapping learned a while ago may have changed (a new address from
	// the provider, a NAT that rebound): the candidates must be current.
	a.direct.mu.Lock()
	stale := time.Since(a.direct.srflxAt) > punchFresh
	a.direct.mu.Unlock()
	if stale && len(p.Candidates) > 0 {
		a.refreshSTUN()
	}
	x := &exchange{id: p.Exchange, key: p.Key, self: ProbeFromAgent, ep: a.ep, expires: time.Now().Add(ExchangeTTL), pinged: a.allow}
	x.init()
	ad := &a.direct
	ad.mu.Lock()
	if len(ad.grants) >= maxExchanges {
		ad.mu.Unlock()
		WriteFrame(sc, Result{Status: StatusUnavailable, Message: "too many direct-path exchanges in progress; try later"})
		return
	}
	if _, dup := ad.grants[x.id]; dup {
		ad.mu.Unlock()
		WriteFrame(sc, Result{Status: StatusBadRequest, Message: "exchange id in use"})
		return
	}
	ad.grants[x.id] = x
	relay, self := ad.relayAddr.Addr(), ad.mapping
	ad.mu.Unlock()
	a.ep.register(x)
	defer func() {
		a.ep.unregister(x)
		ad.mu.Lock()
		if ad.grants[x.id] == x {
			delete(ad.grants, x.id)
		}
		ad.mu.Unlock()
	}()
	if err := WriteFrame(sc, Candidates{Candidates: a.candidates()}); err != nil {
		return
	}
	sc.Close()
	// The exchange is kept until it expires (or the agent stops): pongs
	// are answered, and its DirectHello accepted, until then.
	ctx, cancel := context.WithDeadline(a.ctx, x.expires)
	defer cancel()
	remote := reachable(p.Candidates, a.ep.local, relay)
	b := planBirthday(self, peerMapping(p.Candidates), a.ep.local, relay)
	if b != nil && !takeSlot(ad.birthdays) {
		a.log.Info().Msg("too many birthday probings at once; probing the candidates only")
		b = nil
	}
	if b != nil {
		b.listen, b.adopt = a.cfg.ListenUDP, a.adoptSocket
	}
	if len(remote) > 0 || b != nil {
		x.probe(ctx, remote, false, b)
	}
	if b != nil {
		<-ad.birthdays
	}
	<-ctx.Done()
}

// acceptDirect accepts direct connections until the agent closes.
func (a *Agent) acceptDirect() {
	for {
		c, err := a.direct.ln.Accept(a.ctx)
		if err != nil {
			return
		}
		dc := a.trackDirect(c)
		if dc == nil {
			continue
		}
		if !a.wg.Go(func() { a.serveDirect(dc) }) {
			c.CloseWithError(CloseNormal, "agent stopped")
			return
		}
	}
}

// trackDirect counts c among the agent's direct connections, or closes it
// over maxDirectConns and returns nil.
func (a *Agent) trackDirect(c *quic.Conn) *directConn {
	dc := &directConn{conn: c}
	ad := &a.direct
	ad.mu.Lock()
	full := len(ad.conns) >= maxDirectConns
	if !full {
		ad.conns[c] = dc
	}
	ad.mu.Unlock()
	if full {
		c.CloseWithError(CloseRefused, "too many direct connections")
		return nil
	}
	return dc
}

// serveDirect serves a direct connection's streams: DirectHello, then
// sessions. A connection not authorized within the handshake timeout is
// closed.
func (a *Agent) serveDirect(dc *directConn) {
	c := dc.conn
	defer func() {
		a.direct.mu.Lock()
		delete(a.direct.conns, c)
		a.direct.mu.Unlock()
	}()
	t := time.AfterFunc(a.cfg.HandshakeTimeout, func() {
		if !dc.authorizedAt(time.Now()) {
			c.CloseWithError(CloseRefused, "no valid direct hello")
		}
	})
	defer t.Stop()
	a.log.Debug().Msg("direct connection from a client")
	for {
		s, err := c.AcceptStream(a.ctx)
		if err != nil {
			c.CloseWithError(CloseNormal, "")
			return
		}
		if !a.wg.Go(func() { a.serveStream(c, s, dc) }) {
			s.CancelRead(StreamShutdown)
			s.CancelWrite(StreamShutdown)
			c.CloseWithError(CloseNormal, "agent stopped")
			return
		}
	}
}

// hello authorizes dc with an exchange the relay introduced; the exchange
// is used up.
func (a *Agent) hello(sc *streamConn, dc *directConn, h DirectHello) {
	ad := &a.direct
	ad.mu.Lock()
	x := ad.grants[h.Exchange]
	valid := x != nil && time.Now().Before(x.expires)
	if valid {
		want := DirectProof(x.id, &x.key)
		valid = hmac.Equal(want[:], h.Proof[:])
	}
	if valid {
		delete(ad.grants, h.Exchange)
		close(x.used) // its probing is done
	}
	ad.mu.Unlock()
	if !valid {
		WriteFrame(sc, Result{Status: StatusAccessDenied, Message: "unknown or expired exchange"})
		return
	}
	dc.mu.Lock()
	dc.until = time.Now().Add(a.cfg.DirectLifetime)
	dc.exchange = h.Exchange
	dc.mu.Unlock()
	WriteFrame(sc, Result{Status: StatusOK})
	a.log.Debug().Msg("direct connection authorized")
}

// closeDirect ends every direct connection and forgets every exchange:
// Link off, the device deleted, or direct paths turned off.
func (a *Agent) closeDirect(code quic.ApplicationErrorCode, msg string) {
	ad := &a.direct
	ad.mu.Lock()
	conns := make([]*quic.Conn, 0, len(ad.conns))
	for c := range ad.conns {
		conns = append(conns, c)
	}
	clear(ad.grants)
	clear(ad.allowed)
	ad.mu.Unlock()
	if len(conns) > 0 {
		a.log.Info().Int("connections", len(conns)).Str("reason", msg).Msg("closing direct connections")
	}
	for _, c := range conns {
		c.CloseWithError(code, msg)
	}
}

// revoke closes the direct connections whose latest DirectHello used one
// of ids, and forgets those exchanges: the relay no longer admits their
// clients (an access code revoked).
func (a *Agent) revoke(ids [][ExchangeIDLen]byte) {
	ad := &a.direct
	ad.mu.Lock()
	for _, id := range ids {
		delete(ad.grants, id)
	}
	var conns []*quic.Conn
	hit := map[*directConn]bool{}
	for c, dc := range ad.conns {
		dc.mu.Lock()
		revoked := slices.Contains(ids, dc.exchange) && !dc.until.IsZero()
		dc.mu.Unlock()
		if revoked {
			conns = append(conns, c)
			hit[dc] = true
		}
	}
	ad.mu.Unlock()
	ended := a.endSessions(errors.New("the device's owner revoked the access code of this session"), func(s *session) bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.dc != nil && hit[s.dc]
	})
	a.log.Info().Int("exchanges", len(ids)).Int("connections", len(conns)).Int("sessions", ended).
		Msg("the relay revoked direct paths (access code revoked); closing their connections and sessions")
	for _, c := range conns {
		c.CloseWithError(CloseRevoked, "access revoked")
	}
}

// closeDirectFor closes the direct connections and ends the resumable
// sessions (suspended ones too) when err says that the relay ended or
// refused the agent for a reason the owner gave: Link off or the device
// gone (the same reasons end its relayed sessions).
func (a *Agent) closeDirectFor(err error) {
	var ae *quic.ApplicationError
	var re *RefusedError
	switch {
	case errors.As(err, &ae) && ae.Remote && ae.ErrorCode == CloseLinkDisabled,
		errors.As(err, &re) && re.Status == StatusLinkDisabled:
		a.endSessions(ErrLinkDisabled, nil)
		a.closeDirect(CloseLinkDisabled, "link was switched off for this device")
	case errors.As(err, &ae) && ae.Remote && ae.ErrorCode == CloseDeviceGone,
		errors.As(err, &re) && re.Status == StatusBadCredentials:
		a.endSessions(errors.New("the device was deleted"), nil)
		a.closeDirect(CloseDeviceGone, "the device was deleted")
	}
}

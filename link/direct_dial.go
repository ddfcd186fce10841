package link

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/nasreach/nasreach/internal/netaddr"
	"github.com/quic-go/quic-go"
)

// The client's side of direct paths (wire.go, "Direct paths"). After a
// device's first session through the relay, the Dialer learns the relay's
// STUN server (Info), its own server-reflexive address, asks the relay to
// introduce it (Direct), probes the agent's candidates, dials the first one
// that answers with the device key pinned, and authorizes the connection
// (DirectHello). New sessions then go direct; a direct path that fails
// sends them back to the relay within the same Dial, and punching is tried
// again later.

// Dialer direct-path defaults.
const (
	// DirectTimeout bounds opening a session on a direct path: a path that
	// does not answer by then counts as lost, and the session goes through
	// the relay.
	DirectTimeout = 3 * time.Second
	// DirectRetryMin and DirectRetryMax bound the wait before punching
	// again after a failure or a lost path; it doubles each time.
	DirectRetryMin = 30 * time.Second
	DirectRetryMax = 10 * time.Minute
	// DirectRenewAfter is how often a client renews the authorization of
	// a direct path it uses, well within the agent's DefaultDirectLifetime,
	// so that its sessions never meet an expired one.
	DirectRenewAfter = DefaultDirectLifetime / 2
	// srflxFresh is how long the client reuses a server-reflexive address.
	srflxFresh = time.Minute
	// directSilence is how long a direct connection may receive nothing
	// before the client takes it for broken by an address change and
	// repairs it: more than directKeepAlive, whose pings the peer
	// acknowledges, and well within directIdleTimeout.
	directSilence = directKeepAlive + 2*time.Second
	// silenceCheck is how often the client looks at a direct
	// connection's received packets.
	silenceCheck = time.Second
)

// errFallback means the direct path could not take the session: the relay
// will.
var errFallback = errors.New("direct path unavailable")

// dialerDirect is the Dialer's direct-path state, under Dialer.mu.
type dialerDirect struct {
	paths    map[string]*directPath // by device
	info     RelayInfo
	infoConn Carrier // the relay connection info came from
	srflx    netip.AddrPort
	mapping  natMapping // of srflx's socket, from the STUN server's and the relay's answers
	srflxAt  time.Time
	infoMu   sync.Mutex // one Info request at a time
	// birthdays holds a slot per birthday probing in progress (maxBirthdays).
	birthdays chan struct{}
}

// directPath is the direct path to one device.
type directPath struct {
	device   string
	key      string     // the device key's fingerprint, pinned in the direct handshake
	conn     *quic.Conn // nil unless up
	path     Path
	punching bool // an attempt is in progress
	retrying bool // punchLater waits for the next attempt
	// repairing is set while the connection is being repaired: new
	// sessions take the relay meanwhile.
	repairing bool
	// broken is signalled when a session found the connection silent.
	broken   chan struct{}
	used     bool // a session went direct since the last authorization
	renewMu  sync.Mutex
	failures int
	nextTry  time.Time
}

// directPath returns the device's direct path and its connection, nil when
// it is not up.
func (d *Dialer) directPath(device string) (*directPath, *quic.Conn) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.direct.paths[device]
	if p == nil || p.conn == nil || p.repairing || p.conn.Context().Err() != nil {
		return p, nil
	}
	return p, p.conn
}

// PathTo returns the path a new session to device takes now: direct when a
// direct path is up, else the relay.
func (d *Dialer) PathTo(device string) Path {
	p, conn := d.directPath(device)
	if conn == nil {
		return Path{}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return p.path
}

// directStream opens a session stream on the direct connection conn (an
// Open answered OK) and returns it with the path's Path. It returns an
// error wrapping errFallback when the relay should take the session; a
// refusal the relay would give just the same (the port, the local service)
// is returned as it is.
func (d *Dialer) directStream(ctx context.Context, p *directPath, conn *quic.Conn, device string, port uint16) (*streamConn, Path, error) {
	d.mu.Lock()
	path := p.path
	d.mu.Unlock()
	sc, err := d.openDirect(ctx, p, conn, device, port)
	if errors.Is(err, errExpired) {
		// The authorization ran out (the path was idle): renew it through
		// the relay, which checks the device and access code again.
		if err := d.renew(ctx, p, conn); err != nil {
			d.log.Info().Str("device", device).AnErr("reason", err).Msg("direct path not renewed; sessions go through the relay")
			d.lose(conn, "not renewed")
			return nil, path, fmt.Errorf("%w: %v", errFallback, err)
		}
		sc, err = d.openDirect(ctx, p, conn, device, port)
	}
	if err != nil {
		return nil, path, err
	}
	d.mu.Lock()
	p.used = true
	d.mu.Unlock()
	return sc, path, nil
}

// errExpired means the agent refused a session on a direct path whose
// authorization ran out.
var errExpired = fmt.Errorf("%w: its authorization expired", errFallback)

// openDirect opens one session stream on the direct connection.
func (d *Dialer) openDirect(ctx context.Context, p *directPath, conn *quic.Conn, device string, port uint16) (*streamConn, error) {
	sctx, cancel := context.WithTimeout(ctx, DirectTimeout)
	defer cancel()
	s, err := conn.OpenStream()
	var limit *quic.StreamLimitReachedError
	if errors.As(err, &limit) { // the direct connection is full: this one goes through the relay
		return nil, fmt.Errorf("%w: %v", errFallback, err)
	}
	if err != nil {
		d.lose(conn, "cannot open a stream")
		return nil, fmt.Errorf("%w: %v", errFallback, err)
	}
	sc := newStreamConn(s, conn)
	res, err := request(sctx, sc, Open{Port: port}, DirectTimeout)
	if err != nil {
		sc.CancelWrite(StreamAborted)
		sc.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		// The path may have moved (an address change): the watcher
		// repairs it or gives it up; this session takes the relay.
		d.mu.Lock()
		broken := p.broken
		d.mu.Unlock()
		select {
		case broken <- struct{}{}:
		default:
		}
		return nil, fmt.Errorf("%w: no answer within %v: %v", errFallback, DirectTimeout, err)
	}
	switch res.Status {
	case StatusOK:
		return sc, nil
	case StatusPortNotExposed, StatusDialFailed:
		sc.Close()
		return nil, fmt.Errorf("%s:%d: %w", device, port, &RefusedError{Status: res.Status, Message: res.Message})
	case StatusAccessDenied:
		sc.Close()
		return nil, errExpired
	}
	sc.Close()
	d.lose(conn, "refused: "+res.Status.String())
	return nil, errFallback
}

// lose gives up a direct connection; its watcher reports and schedules the
// next attempt.
func (d *Dialer) lose(conn *quic.Conn, why string) {
	conn.CloseWithError(CloseNormal, why)
}

// startPunch starts an attempt at a direct path to device in the
// background, unless one is up, in progress or not due yet. key is the
// device key the relayed session just verified; start is when that session
// began (the time to direct is counted from it).
func (d *Dialer) startPunch(device, key string, start time.Time) {
	d.mu.Lock()
	p := d.direct.paths[device]
	if p == nil {
		p = &directPath{device: device}
		d.direct.paths[device] = p
	}
	if d.closed || p.punching || p.conn != nil || time.Now().Before(p.nextTry) || key == "" {
		d.mu.Unlock()
		return
	}
	p.punching, p.key = true, key
	d.mu.Unlock()
	if !d.wg.Go(func() { d.punch(p, start) }) {
		d.mu.Lock()
		p.punching = false
		d.mu.Unlock()
	}
}

// punchResult is how an attempt ended.
type punchResult struct {
	outcome PunchOutcome // zero: the relay refused (it counted that itself)
	path    Path
	conn    *quic.Conn
	ep      *endpoint // conn's own, from birthday probing; nil on the Dialer's socket
	err     error
	// For the log: the two ends' NAT mappings, and whether they called
	// for birthday probing.
	self, peer natMapping
	birthday   bool
}

// punch makes one attempt, records it, reports it to the relay and, when it
// worked, watches the new direct connection.
func (d *Dialer) punch(p *directPath, start time.Time) {
	r := d.tryDirect(d.ctx, p)
	elapsed := time.Since(start)
	d.mu.Lock()
	p.punching = false
	closed := d.closed
	if r.conn != nil && !closed {
		p.conn, p.path, p.failures = r.conn, r.path, 0
		p.broken = make(chan struct{}, 1)
	} else {
		p.failures++
		p.nextTry = time.Now().Add(backoff(d.cfg.DirectRetry, DirectRetryMax, p.failures-1))
		if errors.Is(r.err, ErrNoDirect) {
			p.nextTry = time.Now().Add(DirectRetryMax)
		}
	}
	d.mu.Unlock()
	if closed {
		if r.conn != nil {
			r.conn.CloseWithError(CloseNormal, "client closed")
			r.ep.closeIfSet()
		}
		return
	}
	log := d.log.With().Str("device", p.device).Str("nat", r.self.String()).Str("peer_nat", r.peer.String()).
		Bool("birthday", r.birthday).Logger()
	if r.conn == nil {
		log.Info().Str("path", "relay").AnErr("reason", r.err).Msg("no direct path; sessions stay on the relay")
		d.punchLater(p)
	} else {
		log.Info().Str("path", "direct").Str("pair", r.path.Local.String()+">"+r.path.Remote.String()).
			Int64("after_ms", elapsed.Milliseconds()).Msg("direct path up; new sessions take it")
		if !d.wg.Go(func() { d.watch(p, r.conn, r.ep) }) {
			r.conn.CloseWithError(CloseNormal, "client closed")
			r.ep.closeIfSet()
		}
		d.moveToDirect(p.device)
	}
	if r.outcome != 0 {
		d.report(Report{Device: p.device, Outcome: r.outcome, Local: r.path.Local, Remote: r.path.Remote,
			Millis: uint32(min(elapsed.Milliseconds(), 1<<32-1))})
	}
}

// tryDirect is one attempt: Info, STUN, the exchange through the relay,
// probes, the direct handshake and DirectHello.
func (d *Dialer) tryDirect(ctx context.Context, p *directPath) punchResult {
	in, err := d.introduction(ctx, p.device)
	if in.x != nil {
		defer in.ep.unregister(in.x)
	}
	if err != nil {
		return punchResult{err: err, self: in.self}
	}
	ep, relay, x, cands, answer, self := in.ep, in.relay, in.x, in.cands, in.answer, in.self
	peer := peerMapping(answer)
	remote := reachable(answer, ep.local, relay.Addr())
	b := planBirthday(self, peer, ep.local, relay.Addr())
	if b != nil && takeSlot(d.direct.birthdays) {
		defer func() { <-d.direct.birthdays }()
		b.listen = d.cfg.ListenUDP
	} else if b != nil {
		d.log.Info().Str("device", p.device).Msg("too many birthday probings at once; probing the candidates only")
		b = nil
	}
	res := punchResult{self: self, peer: peer, birthday: b != nil}
	won, err := x.probe(ctx, remote, true, b)
	if err != nil {
		res.outcome, res.err = PunchNoAnswer, fmt.Errorf("%d candidates probed: %w", len(remote), err)
		if b == nil && self.kind == mappingVaries && peer.kind == mappingVaries {
			res.err = fmt.Errorf("%w (both NATs are symmetric: no birthday probing)", res.err)
		}
		return res
	}
	res.path = Path{Direct: true, Local: CandidatePrflx, Remote: won.win.Kind}
	if i := slices.IndexFunc(cands, func(c Candidate) bool { return c.Addr == won.observed }); i >= 0 {
		res.path.Local = cands[i].Kind
	}
	tr := ep.tr
	if won.sock != nil { // a birthday socket won: the connection runs on it
		res.ep = endpointOn(won.sock, nil, d.log)
		tr = res.ep.tr
	}
	hctx, cancel := context.WithTimeout(ctx, d.cfg.HandshakeTimeout)
	defer cancel()
	conn, err := tr.Dial(hctx, net.UDPAddrFromAddrPort(won.win.Addr), directClientTLS(p.device, p.key), directQUIC(d.cfg.HandshakeTimeout))
	if err == nil {
		if err = d.hello(hctx, conn, x); err != nil {
			conn.CloseWithError(CloseNormal, "direct hello failed")
		}
	} else {
		err = fmt.Errorf("direct handshake: %w", err)
	}
	if err != nil {
		res.ep.closeIfSet()
		res.outcome, res.err, res.ep = PunchFailed, err, nil
		return res
	}
	res.outcome, res.conn = PunchDirect, conn
	return res
}

// introduction is an exchange the relay introduced: this end's socket,
// candidates and NAT mapping, the agent's candidates.
type introduction struct {
	ep     *endpoint
	relay  netip.AddrPort
	x      *exchange // registered on ep; the caller unregisters it
	cands  []Candidate
	self   natMapping
	answer []Candidate
}

// introduction gathers this end's candidates and asks the relay to
// introduce it to device's agent, which starts probing.
func (d *Dialer) introduction(ctx context.Context, device string) (introduction, error) {
	var in introduction
	c, err := d.connection(ctx, false)
	if err != nil {
		return in, err
	}
	info, relay, err := d.relayInfo(ctx, c)
	if err != nil {
		return in, err
	}
	if !info.Direct {
		return in, fmt.Errorf("%w: the relay does not introduce clients to agents", ErrNoDirect)
	}
	d.mu.Lock()
	in.ep = d.ep
	d.mu.Unlock()
	ifaces, _ := net.InterfaceAddrs()
	in.relay = relay
	srflx, self := d.srflx(ctx, in.ep, info, relay)
	in.self = self
	in.cands = withMapping(withSrflx(hostCandidates(in.ep.local, relay.Addr(), ifaces), srflx, relay.Addr()), self, relay.Addr())
	in.x = newExchange(in.ep)
	in.ep.register(in.x)
	in.answer, err = d.introduce(ctx, c, Direct{Device: device, AccessCode: d.cfg.AccessCode, Exchange: in.x.id, Key: in.x.key, Candidates: in.cands})
	return in, err
}

// directClientTLS pins the device key the relayed session verified.
func directClientTLS(device, key string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13, NextProtos: []string{DirectALPN}, ServerName: device,
		InsecureSkipVerify: true, // replaced by the pin
		VerifyConnection:   pinnedVerifier(key, "device "+device),
	}
}

// relayInfo returns the relay's RelayInfo from an Info stream on c, opening
// it the first time; the stream then follows the relay's changes.
func (d *Dialer) relayInfo(ctx context.Context, c Carrier) (RelayInfo, netip.AddrPort, error) {
	d.direct.infoMu.Lock()
	defer d.direct.infoMu.Unlock()
	d.mu.Lock()
	info, known, relay := d.direct.info, d.direct.infoConn == c, d.relayAddr
	d.mu.Unlock()
	if known {
		return info, relay, nil
	}
	s, err := c.OpenStreamSync(ctx)
	if err != nil {
		return RelayInfo{}, relay, fmt.Errorf("ask the relay for its info: %w", err)
	}
	sc := newStreamConn(s, c)
	fr, err := ask(ctx, sc, Info{}, d.cfg.HandshakeTimeout)
	if err != nil {
		sc.Close()
		return RelayInfo{}, relay, fmt.Errorf("ask the relay for its info: %w", err)
	}
	info, ok := fr.(RelayInfo)
	if !ok { // a relay that predates direct paths answers bad request
		sc.Close()
		info = RelayInfo{}
	}
	d.mu.Lock()
	d.direct.info, d.direct.infoConn = info, c
	d.mu.Unlock()
	if ok && !d.wg.Go(func() { d.followInfo(sc, c) }) {
		sc.Close()
	}
	return info, relay, nil
}

// followInfo reads the relay's later RelayInfo frames: direct paths turned
// off close the direct connections (the agents close theirs too).
func (d *Dialer) followInfo(sc *streamConn, c Carrier) {
	defer sc.Close()
	stop := context.AfterFunc(d.ctx, func() { sc.CancelRead(StreamAborted) })
	defer stop()
	followRelayInfo(sc, func(info RelayInfo, _ bool) {
		d.mu.Lock()
		if d.direct.infoConn == c {
			if info.Direct && !d.direct.info.Direct { // turned on: try again at the next session
				for _, p := range d.direct.paths {
					p.nextTry = time.Time{}
				}
			}
			d.direct.info = info
		}
		d.mu.Unlock()
		if !info.Direct {
			d.closeDirect("the relay's operator turned direct paths off")
		}
	})
}

// srflx returns this socket's server-reflexive address from the relay's
// STUN server and its NAT's mapping, comparing that answer with the
// relay's own (cached for a minute), or zero values.
func (d *Dialer) srflx(ctx context.Context, ep *endpoint, info RelayInfo, relay netip.AddrPort) (netip.AddrPort, natMapping) {
	server, ok := stunServer(info, relay)
	if !ok {
		return netip.AddrPort{}, natMapping{}
	}
	d.mu.Lock()
	cached, m, at := d.direct.srflx, d.direct.mapping, d.direct.srflxAt
	d.mu.Unlock()
	if cached.IsValid() && time.Since(at) < srflxFresh {
		return cached, m
	}
	mapped, m, err := ep.discoverMapping(ctx, server, relay)
	if err != nil {
		d.log.Debug().Err(err).Msg("stun binding failed; offering host candidates only")
		return netip.AddrPort{}, natMapping{}
	}
	d.mu.Lock()
	d.direct.srflx, d.direct.mapping, d.direct.srflxAt = mapped, m, time.Now()
	d.mu.Unlock()
	return mapped, m
}

// introduce sends Direct to the relay and returns the agent's candidates.
func (d *Dialer) introduce(ctx context.Context, c Carrier, req Direct) ([]Candidate, error) {
	s, err := c.OpenStreamSync(ctx)
	if err != nil {
		return nil, fmt.Errorf("open a stream to the relay: %w", err)
	}
	sc := newStreamConn(s, c)
	defer sc.Close()
	fr, err := ask(ctx, sc, req, d.cfg.HandshakeTimeout)
	if err != nil {
		return nil, fmt.Errorf("direct path to %s via relay %s: %w", req.Device, d.cfg.Server, err)
	}
	switch f := fr.(type) {
	case Candidates:
		return f.Candidates, nil
	case Result:
		if f.Status == StatusNoDirect || f.Status == StatusBadRequest {
			return nil, fmt.Errorf("%w: %s", ErrNoDirect, f.Message)
		}
		return nil, fmt.Errorf("direct path to %s: %w", req.Device, &RefusedError{Status: f.Status, Message: f.Message})
	}
	return nil, fmt.Errorf("%w: expected candidates, got frame type %#x", ErrFrame, fr.frameType())
}

// hello authorizes conn with exchange x.
func (d *Dialer) hello(ctx context.Context, conn *quic.Conn, x *exchange) error {
	s, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return fmt.Errorf("direct hello: %w", err)
	}
	sc := newStreamConn(s, conn)
	defer sc.Close()
	res, err := request(ctx, sc, DirectHello{Exchange: x.id, Proof: DirectProof(x.id, &x.key)}, d.cfg.HandshakeTimeout)
	if err != nil {
		return fmt.Errorf("direct hello: %w", err)
	}
	if res.Status != StatusOK {
		return fmt.Errorf("direct hello: %w", &RefusedError{Status: res.Status, Message: res.Message})
	}
	return nil
}

// renew renews the authorization of the direct connection conn: a new
// exchange through the relay (which checks the device and the access code
// again; no probes follow), then a DirectHello on conn. One at a time.
func (d *Dialer) renew(ctx context.Context, p *directPath, conn *quic.Conn) error {
	p.renewMu.Lock()
	defer p.renewMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 2*d.cfg.HandshakeTimeout)
	defer cancel()
	stop := context.AfterFunc(d.ctx, cancel)
	defer stop()
	c, err := d.connection(ctx, false)
	if err != nil {
		return err
	}
	d.mu.Lock()
	ep := d.ep
	d.mu.Unlock()
	x := newExchange(ep)
	if _, err := d.introduce(ctx, c, Direct{Device: p.device, AccessCode: d.cfg.AccessCode, Exchange: x.id, Key: x.key}); err != nil {
		return err
	}
	if err := d.hello(ctx, conn, x); err != nil {
		return err
	}
	d.mu.Lock()
	p.used = false
	d.mu.Unlock()
	return nil
}

// watch waits for a direct connection to end; if it was still the
// device's path, the path is lost: new sessions use the relay, the relay
// hears of it, and punching is tried again after a while. A connection
// that receives nothing for directSilence, or on which a session got no
// answer, is repaired first (repair), when it runs on the Dialer's own
// socket: its sessions in flight then go on.
func (d *Dialer) watch(p *directPath, conn *quic.Conn, ep *endpoint) {
	t := time.NewTicker(DirectRenewAfter)
	defer t.Stop()
	check := time.NewTicker(silenceCheck)
	defer check.Stop()
	defer ep.closeIfSet()
	d.mu.Lock()
	broken := p.broken
	d.mu.Unlock()
	received, heard := conn.ConnectionStats().PacketsReceived, time.Now()
	moved := false
	for done := false; !done; {
		suspect := false
		select {
		case <-conn.Context().Done():
			done = true
		case <-broken:
			suspect = true
		case now := <-check.C:
			if n := conn.ConnectionStats().PacketsReceived; n != received {
				received, heard = n, now
			}
			suspect = now.Sub(heard) >= directSilence
		case <-t.C: // a path in use is renewed before it expires; an idle one when next used
			d.mu.Lock()
			used := p.used
			d.mu.Unlock()
			if used {
				if err := d.renew(d.ctx, p, conn); err != nil {
					d.log.Info().Str("device", p.device).AnErr("reason", err).Msg("direct path not renewed; sessions go through the relay")
					d.lose(conn, "not renewed")
				}
			}
		}
		if !suspect || done {
			continue
		}
		if ep != nil { // a birthday socket's: its mapping cannot be probed again
			d.lose(conn, "no answer")
			continue
		}
		start := time.Now()
		d.mu.Lock()
		p.repairing = true
		d.mu.Unlock()
		err := d.repair(p, conn)
		d.mu.Lock()
		p.repairing = false
		d.mu.Unlock()
		if err != nil {
			d.log.Info().Str("device", p.device).AnErr("reason", err).Msg("direct path silent and not repaired; sessions go through the relay")
			if errors.Is(err, errAgentMoved) {
				moved = true // punch again at once
			}
			d.lose(conn, "no answer")
			continue
		}
		d.log.Info().Str("device", p.device).Str("path", "direct").Int64("after_ms", time.Since(start).Milliseconds()).
			Msg("direct path silent (an address changed?); probed again, and it answers")
		d.moveToDirect(p.device) // what took the relay meanwhile
		received, heard = conn.ConnectionStats().PacketsReceived, time.Now()
		select { // what sessions reported meanwhile is answered
		case <-broken:
		default:
		}
	}
	d.mu.Lock()
	current := p.conn == conn
	if current {
		p.conn = nil
		p.failures++
		p.nextTry = time.Now().Add(backoff(d.cfg.DirectRetry, DirectRetryMax, p.failures-1))
		if moved {
			p.nextTry = time.Time{}
		}
		d.direct.srflxAt = time.Time{} // the mapping may be what changed: ask STUN again
	}
	closed := d.closed
	d.mu.Unlock()
	if !current || closed {
		return
	}
	d.log.Info().Str("device", p.device).Str("path", "relay").AnErr("reason", context.Cause(conn.Context())).
		Msg("direct path lost; new sessions use the relay")
	d.report(Report{Device: p.device, Outcome: PunchLost, Local: p.path.Local, Remote: p.path.Remote})
	d.punchLater(p)
}

// errAgentMoved means the agent answers at another address than its
// direct connection's.
var errAgentMoved = errors.New("the device answers at a new address")

// repair probes the agent again from this end's current NAT mapping,
// through a new exchange: when an address changed (a new network, a NAT
// that rebound), the agent's probes open its NAT to the new mapping, the
// connection's packets get through again and the agent's QUIC follows
// them to the new address. The exchange's DirectHello then renews the
// connection's authorization and proves that the connection answers.
func (d *Dialer) repair(p *directPath, conn *quic.Conn) error {
	p.renewMu.Lock()
	defer p.renewMu.Unlock()
	ctx, cancel := context.WithTimeout(d.ctx, 2*d.cfg.HandshakeTimeout)
	defer cancel()
	d.mu.Lock()
	d.direct.srflxAt = time.Time{} // the mapping may be what changed
	d.mu.Unlock()
	in, err := d.introduction(ctx, p.device)
	if in.x != nil {
		defer in.ep.unregister(in.x)
	}
	if err != nil {
		return err
	}
	won, err := in.x.probe(ctx, reachable(in.answer, in.ep.local, in.relay.Addr()), true, nil)
	if err != nil {
		return fmt.Errorf("probe again: %w", err)
	}
	if won.win.Addr != netaddr.AddrPort(conn.RemoteAddr()) {
		// QUIC moves a connection to a client's new address, never to a
		// server's: a new connection is needed.
		return errAgentMoved
	}
	if err := d.hello(ctx, conn, in.x); err != nil {
		return err
	}
	d.mu.Lock()
	p.used = false
	d.mu.Unlock()
	return nil
}

// closeDirect closes every direct connection.
func (d *Dialer) closeDirect(why string) {
	d.mu.Lock()
	var conns []*quic.Conn
	for _, p := range d.direct.paths {
		if p.conn != nil {
			conns = append(conns, p.conn)
		}
	}
	d.mu.Unlock()
	for _, c := range conns {
		c.CloseWithError(CloseNormal, why)
	}
}

// report tells the relay how an attempt ended; a report that cannot be
// sent is dropped.
func (d *Dialer) report(r Report) {
	ctx, cancel := context.WithTimeout(d.ctx, d.cfg.HandshakeTimeout)
	defer cancel()
	c, err := d.connection(ctx, false)
	if err != nil {
		return
	}
	s, err := c.OpenStreamSync(ctx)
	if err != nil {
		return
	}
	sc := newStreamConn(s, c)
	defer sc.Close()
	if _, err := request(ctx, sc, r, d.cfg.HandshakeTimeout); err != nil {
		d.log.Debug().Err(err).Msg("cannot report the direct path to the relay")
	}
}

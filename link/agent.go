package link

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/rs/zerolog"
)

// Agent defaults.
const (
	DefaultMinBackoff   = 250 * time.Millisecond
	DefaultMaxBackoff   = 30 * time.Second
	DefaultLocalDial    = 5 * time.Second
	DefaultAddressEvery = 5 * time.Minute
	// MaxAgentStreams bounds the sessions the relay may have open on one agent.
	MaxAgentStreams = 1024
)

// AgentConfig configures NewAgent.
type AgentConfig struct {
	// Server is the relay's UDP address, HOST:PORT. Required.
	Server string
	// Servers are more relays of the same cluster (link across nodes),
	// HOST:PORT each: when a connection ends, the agent connects to the
	// next (steer.go), so that it leaves a dead node. A Server name with
	// several addresses of one family counts as that many relays.
	Servers []string
	// ServerTCP is the relay's TCP address, HOST:PORT, tried when QUIC to
	// Server gets no answer (UDP blocked); empty means Server's host and
	// port, "-" no TCP.
	ServerTCP string
	// QUICHeadStart is how long QUIC has to answer before TCP is tried;
	// zero means DefaultQUICHeadStart.
	QUICHeadStart time.Duration
	// QUICRetry is how often an agent on TCP probes QUIC, moving back to
	// it when it answers and no session is open; zero means
	// DefaultQUICRetry.
	QUICRetry time.Duration
	// RelayFingerprint pins the relay's key; empty means the system roots.
	RelayFingerprint string
	// Device and Token authenticate the agent. Required.
	Device, Token string
	// Expose maps each device port clients may reach to the local HOST:PORT
	// that serves it. A session for any other port is refused: the relay never
	// becomes a door into the NAS's network. At least one is required.
	Expose map[uint16]string
	// StateDir holds the device key (KeyFileName, mode 0600), generated on
	// first start. Required.
	StateDir string
	// API is the daemon's base URL (e.g. https://ddns.example.net); when set
	// the agent publishes its public key there and keeps the device's address
	// current, learning its WAN address from /v1/ip.
	API string
	// HTTPClient makes the API calls; nil means a client with a 10 s timeout.
	HTTPClient *http.Client
	// KeepAlive is the QUIC keep-alive period; zero means DefaultKeepAlive.
	KeepAlive time.Duration
	// IdleTimeout is how long the relay may be silent before the agent
	// takes it for dead and reconnects (to the next relay); zero means
	// DefaultAgentIdleTimeout.
	IdleTimeout time.Duration
	// MinBackoff and MaxBackoff bound the reconnect delay, which doubles after
	// each failure (with jitter); zero means the defaults.
	MinBackoff, MaxBackoff time.Duration
	// HandshakeTimeout bounds connecting and logging in; zero means
	// DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// LocalDialTimeout bounds dialing an exposed service; zero means DefaultLocalDial.
	LocalDialTimeout time.Duration
	// AddressEvery is how often the WAN address is checked; zero means
	// DefaultAddressEvery.
	AddressEvery time.Duration
	// Listen is the agent's UDP socket (to the relay, STUN, and direct
	// paths from clients); empty means DefaultListen, every interface.
	Listen string
	// ListenUDP opens the UDP sockets: the one at Listen and, for birthday
	// probing against a symmetric NAT, up to BirthdaySockets more for a few
	// seconds (wire.go); nil means net.ListenUDP. Tests open them in a
	// network namespace.
	ListenUDP func(network string, laddr *net.UDPAddr) (*net.UDPConn, error)
	// DialTCP opens the TCP connection to the relay's TCP carrier; nil
	// means a net.Dialer. Tests dial in a network namespace.
	DialTCP func(ctx context.Context, network, addr string) (net.Conn, error)
	// DisableDirect refuses direct paths (--direct never): every session
	// goes through the relay.
	DisableDirect bool
	// DirectLifetime is how long a client's DirectHello authorizes new
	// sessions on its direct connection; zero means DefaultDirectLifetime.
	DirectLifetime time.Duration
	// ResumeWindow is how long a session whose path failed is kept for
	// its client to resume it; zero means DefaultResumeWindow.
	ResumeWindow time.Duration
	// DisableResume answers as an agent before resumable sessions did:
	// TLS right after the OK Result, so a client's Session frame fails
	// the handshake and the client falls back to a plain session. For
	// tests, and for operators who want no session buffers.
	DisableResume bool
	// MaxSuspended bounds the sessions kept suspended at once (their
	// path failed, waiting for their client); zero means MaxSuspended.
	MaxSuspended int
	// MaxSuspendedBytes bounds the memory suspended sessions hold
	// together (what each keeps for its client to resume it, and what it
	// received and the service has not read yet); zero means
	// DefaultMaxSuspendedBytes. Beyond either bound the agent ends the
	// sessions suspended longest, and logs it.
	MaxSuspendedBytes int64
	// STUNEvery is how often the server-reflexive address is refreshed;
	// zero means DefaultSTUNEvery.
	STUNEvery time.Duration
	// Logger receives the agent's events.
	Logger zerolog.Logger
}

// Agent is the NAS side of Link: it holds one connection to the relay (QUIC,
// or TCP where UDP is blocked), reconnecting after any failure, and serves
// the exposed ports over end-to-end TLS with the device key.
type Agent struct {
	cfg         AgentConfig
	ring        *relayRing
	e2e         *tls.Config
	fingerprint string
	spki        []byte
	log         zerolog.Logger
	http        *http.Client

	ctx    context.Context
	cancel context.CancelFunc
	wg     waitGroup
	ep     *endpoint // the one UDP socket
	direct agentDirect

	mu       sync.Mutex
	online   bool
	onlineCh chan struct{} // closed when online becomes true
	conn     Carrier
	sessions atomic.Int64 // sessions open through the relay
	// resumable holds the resumable sessions by id, suspended or not.
	resumable sessionTable
	lastErr   error
	kick      chan struct{} // nudges the API loop after each login

	// budget counts the memory suspended sessions hold; boundMu makes
	// one suspension at a time decide which end (boundSuspended).
	budget  suspendBudget
	boundMu sync.Mutex
}

// NewAgent loads or creates the device key and starts connecting.
func NewAgent(cfg AgentConfig) (*Agent, error) {
	switch {
	case cfg.Server == "":
		return nil, errors.New("link: AgentConfig.Server is required")
	case cfg.Device == "" || cfg.Token == "":
		return nil, errors.New("link: AgentConfig.Device and Token are required")
	case len(cfg.Expose) == 0:
		return nil, errors.New("link: AgentConfig.Expose must name at least one port")
	case cfg.StateDir == "":
		return nil, errors.New("link: AgentConfig.StateDir is required")
	case cfg.MaxSuspended < 0:
		return nil, fmt.Errorf("link: AgentConfig.MaxSuspended is %d; want zero (the default) or more", cfg.MaxSuspended)
	case cfg.MaxSuspendedBytes < 0:
		return nil, fmt.Errorf("link: AgentConfig.MaxSuspendedBytes is %d; want zero (the default) or more", cfg.MaxSuspendedBytes)
	}
	for p, target := range cfg.Expose {
		if _, _, err := net.SplitHostPort(target); err != nil || p == 0 {
			return nil, fmt.Errorf("expose %d=%s: want PORT=HOST:PORT: %v", p, target, err)
		}
	}
	key, created, err := LoadOrCreateKey(filepath.Join(cfg.StateDir, KeyFileName))
	if err != nil {
		return nil, err
	}
	cert, err := SelfSignedCert(key, cfg.Device)
	if err != nil {
		return nil, err
	}
	cfg.KeepAlive = cmp.Or(cfg.KeepAlive, DefaultKeepAlive)
	cfg.IdleTimeout = cmp.Or(cfg.IdleTimeout, DefaultAgentIdleTimeout)
	cfg.MinBackoff = cmp.Or(cfg.MinBackoff, DefaultMinBackoff)
	cfg.MaxBackoff = cmp.Or(cfg.MaxBackoff, DefaultMaxBackoff)
	cfg.HandshakeTimeout = cmp.Or(cfg.HandshakeTimeout, DefaultHandshakeTimeout)
	cfg.LocalDialTimeout = cmp.Or(cfg.LocalDialTimeout, DefaultLocalDial)
	cfg.AddressEvery = cmp.Or(cfg.AddressEvery, DefaultAddressEvery)
	cfg.DirectLifetime = cmp.Or(cfg.DirectLifetime, DefaultDirectLifetime)
	cfg.STUNEvery = cmp.Or(cfg.STUNEvery, DefaultSTUNEvery)
	cfg.ResumeWindow = cmp.Or(cfg.ResumeWindow, DefaultResumeWindow)
	cfg.MaxSuspended = cmp.Or(cfg.MaxSuspended, MaxSuspended)
	cfg.MaxSuspendedBytes = cmp.Or(cfg.MaxSuspendedBytes, DefaultMaxSuspendedBytes)
	cfg.QUICHeadStart = cmp.Or(cfg.QUICHeadStart, DefaultQUICHeadStart)
	cfg.QUICRetry = cmp.Or(cfg.QUICRetry, DefaultQUICRetry)
	log := cfg.Logger.With().Str("device", cfg.Device).Logger()
	rd, err := newRelayDialer(cfg.Server, cfg.ServerTCP, cfg.RelayFingerprint, cfg.KeepAlive, cfg.QUICHeadStart, cfg.QUICRetry, log)
	if err != nil {
		return nil, err
	}
	rd.dialTCP = cfg.DialTCP
	a := &Agent{
		cfg: cfg, ring: &relayRing{base: rd, servers: append([]string{cfg.Server}, cfg.Servers...), dialers: map[string]*relayDialer{}},
		e2e: serverE2E(cert), spki: cert.Leaf.RawSubjectPublicKeyInfo,
		fingerprint: Fingerprint(cert.Leaf.RawSubjectPublicKeyInfo),
		log:         log,
		http:        cmp.Or(cfg.HTTPClient, &http.Client{Timeout: 10 * time.Second}),
		onlineCh:    make(chan struct{}), kick: make(chan struct{}, 1),
		resumable: sessionTable{m: map[[SessionIDLen]byte]*session{}},
		budget:    suspendBudget{limit: cfg.MaxSuspendedBytes},
	}
	a.direct = agentDirect{
		grants: map[[ExchangeIDLen]byte]*exchange{}, allowed: map[netip.AddrPort]time.Time{},
		conns: map[*quic.Conn]*directConn{}, stunKick: make(chan struct{}, 1), birthdays: make(chan struct{}, maxBirthdays),
	}
	var accept func(netip.AddrPort) bool
	if !cfg.DisableDirect {
		accept = a.allowSource
	}
	if a.ep, err = newEndpoint(cfg.Listen, cfg.ListenUDP, accept, a.log); err != nil {
		return nil, err
	}
	if !cfg.DisableDirect {
		a.direct.tls = directServerTLS(cert)
		if a.direct.ln, err = a.ep.tr.Listen(a.direct.tls, directQUIC(cfg.HandshakeTimeout)); err != nil {
			a.ep.close()
			return nil, fmt.Errorf("listen for direct paths: %w", err)
		}
	}
	if created {
		a.log.Info().Str("fingerprint", a.fingerprint).Msg("generated a new device key")
	}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	a.wg.Go(a.run)
	a.wg.Go(a.stunLoop)
	if a.direct.ln != nil {
		a.wg.Go(a.acceptDirect)
	}
	if cfg.API != "" {
		a.wg.Go(a.apiLoop)
	}
	return a, nil
}

// Fingerprint returns the device key's fingerprint, which clients pin.
func (a *Agent) Fingerprint() string { return a.fingerprint }

// WaitOnline blocks until the agent is logged in at the relay or ctx ends.
func (a *Agent) WaitOnline(ctx context.Context) error {
	a.mu.Lock()
	ch := a.onlineCh
	a.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("agent %s not connected to relay %s: %w", a.cfg.Device, a.cfg.Server, ctx.Err())
	}
}

func (a *Agent) setOnline(c Carrier) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.conn = c
	if c != nil && !a.online {
		close(a.onlineCh)
	}
	if c == nil && a.online {
		a.onlineCh = make(chan struct{})
	}
	a.online = c != nil
}

// LastError returns why the last connection to the relay ended or failed
// (nil before the first failure). A refusal matches ErrBadCredentials,
// ErrLinkDisabled or ErrTooManyAgents with errors.Is.
func (a *Agent) LastError() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.lastErr
}

// Close disconnects from the relay and the clients on direct paths and
// stops every goroutine; sessions end.
func (a *Agent) Close() error {
	a.cancel()
	a.mu.Lock()
	c := a.conn
	a.mu.Unlock()
	if c != nil {
		c.CloseWithError(CloseNormal, "agent stopped")
	}
	a.closeDirect(CloseNormal, "agent stopped")
	a.endSessions(net.ErrClosed, nil)
	if a.direct.ln != nil {
		a.direct.ln.Close()
	}
	a.wg.CloseAndWait()
	return a.ep.close()
}

// run connects, serves, and reconnects with capped exponential backoff.
func (a *Agent) run() {
	failures := 0
	for a.ctx.Err() == nil {
		served, err := a.session()
		if a.ctx.Err() != nil {
			return
		}
		a.ring.advance()
		if served {
			failures = 0
		} else {
			failures++
		}
		a.mu.Lock()
		a.lastErr = err
		a.mu.Unlock()
		a.closeDirectFor(err)
		var re *RefusedError
		if errors.As(err, &re) && failures < 4 {
			failures = 4 // a refusal will not go away in a second
		}
		d := backoff(a.cfg.MinBackoff, a.cfg.MaxBackoff, failures)
		a.log.Warn().Err(err).Int64("retry_in_ms", d.Milliseconds()).Msg("link relay connection ended")
		t := time.NewTimer(d)
		select {
		case <-a.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// backoff is min·2^failures capped at max, with jitter of up to a half.
func backoff(min, max time.Duration, failures int) time.Duration {
	d := min
	for i := 0; i < failures && d < max; i++ {
		d *= 2
	}
	d = min2(d, max)
	return d/2 + rand.N(d/2+1)
}

func min2(a, b time.Duration) time.Duration {
	if a < b {
		return a
	}
	return b
}

// session runs one connection to the relay until it ends; served reports
// whether the login succeeded.
func (a *Agent) session() (served bool, err error) {
	hctx, cancel := context.WithTimeout(a.ctx, a.cfg.HandshakeTimeout)
	defer cancel()
	qc := quicConfig(a.cfg.HandshakeTimeout, a.cfg.KeepAlive, MaxAgentStreams)
	qc.MaxIdleTimeout = a.cfg.IdleTimeout
	rd, server, err := a.ring.pick(hctx)
	if err != nil {
		return false, err
	}
	c, relayAddr, err := rd.dial(hctx, a.ep, qc)
	if err != nil {
		return false, fmt.Errorf("connect to relay %s: %w", server, err)
	}
	defer c.CloseWithError(CloseNormal, "agent reconnecting")
	overTCP := c.Transport() == TransportTCP
	a.direct.mu.Lock()
	a.direct.relayAddr = relayAddr // before any Punch: it decides whether loopback is offered
	a.direct.overTCP = overTCP
	a.direct.mu.Unlock()
	ctrl, err := c.OpenStreamSync(hctx)
	if err != nil {
		return false, fmt.Errorf("open control stream: %w", err)
	}
	cs := newStreamConn(ctrl, c)
	res, err := request(hctx, cs, Hello{Device: a.cfg.Device, Token: a.cfg.Token}, a.cfg.HandshakeTimeout)
	if err != nil {
		return false, fmt.Errorf("log in to relay %s: %w", server, err)
	}
	if res.Status != StatusOK {
		return false, fmt.Errorf("log in to relay %s as %s: %w", server, a.cfg.Device, &RefusedError{Status: res.Status, Message: res.Message})
	}
	a.setOnline(c)
	defer a.setOnline(nil)
	a.log.Info().Str("relay", server).Str("transport", c.Transport()).Msg("connected to link relay")
	select {
	case a.kick <- struct{}{}:
	default:
	}
	// The control stream carries Revoke frames from the relay; its end, or
	// anything else on it, ends the agent.
	a.wg.Go(func() {
		for {
			fr, err := ReadFrame(ctrl, 0)
			rv, ok := fr.(Revoke)
			if err != nil || !ok {
				break
			}
			a.revoke(rv.Exchanges)
		}
		c.CloseWithError(CloseProtocol, "control stream ended")
	})
	if overTCP { // direct paths need UDP, and so does STUN
		a.wg.Go(func() { rd.returnToQUIC(a.ctx, c, a.ep, qc, func() bool { return a.sessions.Load() == 0 }) })
	} else if a.direct.ln != nil || a.cfg.API != "" { // STUN serves both
		a.wg.Go(func() { a.watchInfo(c) })
	}
	for {
		s, err := c.AcceptStream(a.ctx)
		if err != nil {
			return true, describeClose(err)
		}
		if !a.wg.Go(func() { a.serveStream(c, s, nil) }) {
			s.CancelRead(StreamShutdown)
			s.CancelWrite(StreamShutdown)
			return true, nil
		}
	}
}

// describeClose turns the relay's close code into words.
func describeClose(err error) error {
	var ae *quic.ApplicationError
	if errors.As(err, &ae) && ae.Remote {
		switch ae.ErrorCode {
		case CloseReplaced:
			return fmt.Errorf("another agent for this device connected to the relay: %w", err)
		case CloseLinkDisabled:
			return fmt.Errorf("link was switched off for this device: %w", err)
		case CloseDeviceGone:
			return fmt.Errorf("the device was deleted: %w", err)
		case CloseShutdown:
			return fmt.Errorf("the relay is shutting down: %w", err)
		}
	}
	return err
}

// serveStream answers one request on a stream: from the relay (dc nil) an
// Open or a Punch, on a direct connection a DirectHello or an Open, which it
// serves as a session.
func (a *Agent) serveStream(c addrs, s Stream, dc *directConn) {
	if dc == nil { // a relay's session keeps the agent on its carrier
		a.sessions.Add(1)
		defer a.sessions.Add(-1)
	}
	sc := newStreamConn(s, c)
	owned := false // by a resumable session, which ends the stream itself
	defer func() {
		if !owned {
			sc.Close()
		}
	}()
	sc.SetDeadline(time.Now().Add(a.cfg.HandshakeTimeout))
	fr, err := ReadFrame(sc, 0)
	if err != nil {
		sc.CancelWrite(StreamAborted)
		return
	}
	var op Open
	switch f := fr.(type) {
	case Open:
		op = f
	case Punch:
		if dc == nil {
			a.punch(sc, f)
			return
		}
	case DirectHello:
		if dc != nil {
			a.hello(sc, dc, f)
			return
		}
	}
	if _, ok := fr.(Open); !ok {
		WriteFrame(sc, Result{Status: StatusBadRequest, Message: "expected an open frame"})
		return
	}
	if dc != nil && !dc.authorizedAt(time.Now()) {
		WriteFrame(sc, Result{Status: StatusAccessDenied, Message: "this direct path's authorization has expired; renew it through the relay"})
		return
	}
	target, ok := a.cfg.Expose[op.Port]
	if !ok {
		a.log.Info().Uint16("port", op.Port).Msg("refused a session for a port that is not exposed")
		WriteFrame(sc, Result{Status: StatusPortNotExposed, Message: fmt.Sprintf("device %s does not expose port %d", a.cfg.Device, op.Port)})
		return
	}
	// The service is dialed only once the stream says what it carries: a
	// new session (Session, answered by its own Result, StatusDialFailed
	// when the service does not answer) or a client that predates
	// resumable sessions (its TLS right away); a Resume goes on with the
	// connection its session already has, and dials nothing.
	if err := WriteFrame(sc, Result{Status: StatusOK}); err != nil {
		return
	}
	// A Session or Resume frame, or (from a client without resumable
	// sessions) the end-to-end TLS right away: a TLS record starts 0x16.
	var first [1]byte
	if _, err := io.ReadFull(sc, first[:]); err != nil {
		return
	}
	if !a.cfg.DisableResume && (first[0] == FrameSession || first[0] == FrameResume) {
		fr, err := ReadFrame(&prefixConn{streamConn: sc, prefix: first[:]}, 0)
		switch f := fr.(type) {
		case Session:
			owned = true
			a.serveSession(sc, dc, op.Port, target, f)
		case Resume:
			owned = true
			a.serveResume(sc, dc, op.Port, f)
		default:
			a.log.Debug().Err(err).Msg("malformed session frame")
			sc.CancelWrite(StreamAborted)
		}
		return
	}
	// A client's TLS starts with a handshake record (0x16); anything else
	// fails the handshake below (a Session frame offered to an agent with
	// DisableResume: a clean end, as from an agent that predates it) and
	// needs no service. An old client has its OK already and cannot be
	// told the service is down: the stream is reset, and it sees its TLS
	// handshake fail.
	var local net.Conn
	if first[0] == tlsHandshakeRecord {
		var err error
		if local, err = a.dialLocal(op.Port, target); err != nil {
			sc.CancelRead(StreamAborted)
			sc.CancelWrite(StreamAborted)
			return
		}
		defer local.Close()
	}
	tc := tls.Server(&prefixConn{streamConn: sc, prefix: first[:]}, a.e2e)
	if err := tc.HandshakeContext(a.ctx); err != nil || local == nil {
		a.log.Debug().Err(err).Uint16("port", op.Port).Msg("end-to-end handshake failed")
		return
	}
	sc.SetDeadline(time.Time{})
	splice(local, &e2eConn{Conn: tc, sc: sc})
}

// tlsHandshakeRecord is the type of the TLS record a client's handshake
// starts with (RFC 8446, section 5.1).
const tlsHandshakeRecord = 0x16

// dialLocal connects to the service exposed as port, at target; its error
// is the refusal's message for the client (the cause is logged here).
func (a *Agent) dialLocal(port uint16, target string) (net.Conn, error) {
	dctx, cancel := context.WithTimeout(a.ctx, a.cfg.LocalDialTimeout)
	defer cancel()
	local, err := (&net.Dialer{}).DialContext(dctx, "tcp", target)
	if err != nil {
		a.log.Warn().Err(err).Uint16("port", port).Msg("exposed service does not answer")
		return nil, fmt.Errorf("device %s cannot reach the service behind port %d", a.cfg.Device, port)
	}
	return local, nil
}

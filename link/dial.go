package link

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/rs/zerolog"
)

// Dialer defaults.
const (
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultKeepAlive        = 10 * time.Second // well under the 30 s many NATs keep a UDP mapping
	DefaultIdleTimeout      = 30 * time.Second
	// DefaultAgentIdleTimeout is how long an agent waits on a silent relay
	// before it takes it for dead and reconnects. A relay node that dies
	// sends nothing (QUIC ignores the ICMP errors that follow), so this is
	// how long a NAS stays unreachable before it moves to another node:
	// short, yet two lost keep-alives long (QUIC sends them at half the
	// idle timeout, so every 5 s, 0.2 packets a second per agent). Clients
	// keep DefaultIdleTimeout: no one's reachability waits on them.
	DefaultAgentIdleTimeout = 10 * time.Second
	// maxOnlinePoll caps the delay between asking the relay again for a
	// device that is offline (DialerConfig.WaitOnline); the delay starts at
	// a tenth of a second and doubles, well under the relay's per-address
	// stream rate.
	maxOnlinePoll = 2 * time.Second
)

// DialerConfig configures NewDialer.
type DialerConfig struct {
	// Server is the relay's UDP address, HOST:PORT. Required.
	Server string
	// ServerTCP is the relay's TCP address, HOST:PORT, tried when QUIC to
	// Server gets no answer (UDP blocked); empty means Server's host and
	// port, "-" no TCP.
	ServerTCP string
	// QUICHeadStart is how long QUIC has to answer before TCP is tried;
	// zero means DefaultQUICHeadStart.
	QUICHeadStart time.Duration
	// QUICRetry is how long the Dialer goes to TCP first after QUIC got no
	// answer, and how often it probes QUIC while on TCP, moving back when
	// it answers and no session is open; zero means DefaultQUICRetry.
	QUICRetry time.Duration
	// RelayFingerprint pins the relay's key (as the relay printed it); empty
	// means the relay's certificate must verify against the system roots.
	RelayFingerprint string
	// AccessCode is sent with every session, for devices with access "token".
	AccessCode string
	// Fingerprints pins device keys by device name; a device not in it is
	// checked against KnownDevices.
	Fingerprints map[string]string
	// KnownDevices is the trust-on-first-use file; empty means
	// KnownDevicesFile(). "-" disables it (only Fingerprints are checked, and
	// unpinned devices are accepted unverified).
	KnownDevices string
	// HandshakeTimeout bounds the QUIC handshake, the relay's answer and the
	// end-to-end TLS handshake; zero means DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// KeepAlive is the QUIC keep-alive period; zero means DefaultKeepAlive.
	KeepAlive time.Duration
	// WaitOnline is how long Dial waits for a device whose agent is not
	// connected (a NAS booting, an agent reconnecting after a relay
	// restart), asking the relay again until it is; zero means Dial
	// returns ErrOffline at once.
	WaitOnline time.Duration
	// Listen is the dialer's UDP socket (to the relay, STUN, and direct
	// paths to agents); empty means DefaultListen, every interface.
	Listen string
	// ListenUDP opens the UDP sockets: the one at Listen and, for birthday
	// probing against a symmetric NAT, up to BirthdaySockets more for a few
	// seconds (wire.go); nil means net.ListenUDP. Tests open them in a
	// network namespace.
	ListenUDP func(network string, laddr *net.UDPAddr) (*net.UDPConn, error)
	// DialTCP opens the TCP connection to the relay's TCP carrier; nil
	// means a net.Dialer. Tests dial in a network namespace.
	DialTCP func(ctx context.Context, network, addr string) (net.Conn, error)
	// DisableDirect keeps every session on the relay (--direct never): no
	// hole punching.
	DisableDirect bool
	// Steer, when set, looks up in DNS which node of a relay cluster holds
	// the device before connecting, and connects to that node (steer.go);
	// Server stays the fallback. Nil: always Server.
	Steer *Steer
	// ResumeWindow is how long a session whose path failed (the device's
	// address changed, the relay restarted) is tried again on a new path
	// before it ends with an error; zero means DefaultResumeWindow. The
	// agent keeps it for its own ResumeWindow.
	ResumeWindow time.Duration
	// DisableResume opens plain sessions: a path that fails ends them.
	// Without it, sessions to a device whose agent predates resumable
	// sessions are plain too, once the first has found that out (wire.go).
	DisableResume bool
	// DirectRetry is the first wait before punching again after a failed
	// attempt or a lost direct path (it doubles up to DirectRetryMax);
	// zero means DirectRetryMin.
	DirectRetry time.Duration
	// Logger receives the dialer's events.
	Logger zerolog.Logger
}

// Dialer opens end-to-end encrypted connections to devices' ports. It keeps
// one connection to the relay (QUIC, or TCP where UDP is blocked) and opens
// one stream per connection;
// after the first session to a device it tries for a direct path in the
// background (hole punching), and new sessions take the direct path while
// it works. It is safe for concurrent use.
type Dialer struct {
	cfg    DialerConfig
	relay  *relayDialer
	pins   map[string]string
	known  *knownDevices
	log    zerolog.Logger
	dialMu sync.Mutex // one QUIC handshake at a time

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	wg     waitGroup // background punches and watchers

	mu        sync.Mutex
	conn      Carrier
	ep        *endpoint      // the one UDP socket, from the first connection on
	relayAddr netip.AddrPort // the relay's address as dialed
	closed    bool
	direct    dialerDirect
	sessions  map[string]map[*session]struct{} // resumable, by device (migrate.go)
	// plain holds the devices (lower case) whose agent predates resumable
	// sessions: sessions to them are plain for the Dialer's life.
	plain sync.Map
}

// NewDialer checks cfg; it connects on the first Dial.
func NewDialer(cfg DialerConfig) (*Dialer, error) {
	if cfg.Server == "" {
		return nil, errors.New("link: DialerConfig.Server is required")
	}
	d := &Dialer{cfg: cfg, pins: map[string]string{}, log: cfg.Logger}
	d.cfg.HandshakeTimeout = cmp.Or(cfg.HandshakeTimeout, DefaultHandshakeTimeout)
	d.cfg.KeepAlive = cmp.Or(cfg.KeepAlive, DefaultKeepAlive)
	d.cfg.QUICHeadStart = cmp.Or(cfg.QUICHeadStart, DefaultQUICHeadStart)
	d.cfg.QUICRetry = cmp.Or(cfg.QUICRetry, DefaultQUICRetry)
	d.cfg.DirectRetry = cmp.Or(cfg.DirectRetry, DirectRetryMin)
	d.cfg.ResumeWindow = cmp.Or(cfg.ResumeWindow, DefaultResumeWindow)
	var err error
	if d.relay, err = newRelayDialer(cfg.Server, cfg.ServerTCP, cfg.RelayFingerprint, d.cfg.KeepAlive, d.cfg.QUICHeadStart, d.cfg.QUICRetry, cfg.Logger); err != nil {
		return nil, err
	}
	d.relay.dialTCP = cfg.DialTCP
	d.ctx, d.cancel = context.WithCancel(context.Background())
	d.direct.paths, d.direct.birthdays = map[string]*directPath{}, make(chan struct{}, maxBirthdays)
	for dev, fp := range cfg.Fingerprints {
		if d.pins[dev], err = ParseFingerprint(fp); err != nil {
			return nil, fmt.Errorf("device %s: %w", dev, err)
		}
	}
	switch cfg.KnownDevices {
	case "-":
	case "":
		p, err := KnownDevicesFile()
		if err != nil {
			return nil, err
		}
		d.known = &knownDevices{path: p}
	default:
		d.known = &knownDevices{path: cfg.KnownDevices}
	}
	return d, nil
}

// quicConfig is the QUIC configuration of agents and clients.
func quicConfig(handshake, keepAlive time.Duration, incoming int64) *quic.Config {
	return &quic.Config{
		HandshakeIdleTimeout: handshake, MaxIdleTimeout: DefaultIdleTimeout, KeepAlivePeriod: keepAlive,
		MaxIncomingStreams: incoming, MaxIncomingUniStreams: -1,
	}
}

// connection returns the live connection to the relay, dialing if needed.
func (d *Dialer) connection(ctx context.Context, fresh bool) (Carrier, error) {
	return d.connectionFor(ctx, "", fresh)
}

// connectionFor is connection for a session to device: a new connection
// goes to the node DNS names for device, when steering.
func (d *Dialer) connectionFor(ctx context.Context, device string, fresh bool) (Carrier, error) {
	d.dialMu.Lock()
	defer d.dialMu.Unlock()
	d.mu.Lock()
	c, closed := d.conn, d.closed
	d.mu.Unlock()
	if closed {
		return nil, net.ErrClosed
	}
	if c != nil && c.Context().Err() == nil && !fresh {
		return c, nil
	}
	if c != nil {
		c.CloseWithError(CloseNormal, "reconnecting")
	}
	if d.ep == nil {
		ep, err := newEndpoint(d.cfg.Listen, d.cfg.ListenUDP, nil, d.log)
		if err != nil {
			return nil, err
		}
		d.mu.Lock()
		d.ep = ep
		d.mu.Unlock()
	}
	hctx, cancel := context.WithTimeout(ctx, d.cfg.HandshakeTimeout)
	defer cancel()
	stop := context.AfterFunc(d.ctx, cancel) // Close does not wait for a handshake
	defer stop()
	qc := quicConfig(d.cfg.HandshakeTimeout, d.cfg.KeepAlive, -1)
	rd, server := d.steer(hctx, device)
	c, to, err := rd.dial(hctx, d.ep, qc)
	if err != nil && rd != d.relay {
		d.log.Warn().Err(err).Str("device", device).Str("relay", server).Msg("the relay node DNS names does not answer; trying --server")
		rd, server = d.relay, d.cfg.Server
		c, to, err = rd.dial(hctx, d.ep, qc)
	}
	if err != nil {
		return nil, fmt.Errorf("connect to relay %s: %w", server, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		c.CloseWithError(CloseNormal, "dialer closed")
		return nil, net.ErrClosed
	}
	d.conn, d.relayAddr = c, to
	if c.Transport() == TransportTCP {
		d.wg.Go(func() { rd.returnToQUIC(d.ctx, c, d.ep, qc, func() bool { return openStreams(c) == 0 }) })
	}
	return c, nil
}

// Dial opens a connection to port on device and runs the end-to-end TLS
// handshake, checking the device's key: on the direct path to the device
// when one is up, else through the relay (and then, unless DisableDirect,
// it starts trying for a direct path in the background). A direct path that
// fails is left for the relay within the same call. Refusals are
// *RefusedError values that match ErrOffline, ErrAccessDenied and the other
// sentinels with errors.Is; a changed key is a *KeyChangedError that matches
// ErrKeyChanged. An offline device is waited for up to WaitOnline. PathOf
// tells which way the connection goes.
func (d *Dialer) Dial(ctx context.Context, device string, port uint16) (net.Conn, error) {
	start := time.Now()
	sc, path, err := d.stream(ctx, device, port, true)
	if err != nil {
		return nil, err
	}
	c, err := d.handshake(ctx, sc, device, port, path)
	if err != nil {
		return nil, err
	}
	if !path.Direct && !d.cfg.DisableDirect && sc.transport != TransportTCP { // direct paths need UDP
		d.startPunch(device, c.peerKey(), start)
	}
	return c, nil
}

// stream opens a session stream to device:port (an Open or Connect
// answered OK): on the direct path when one is up, else through the relay,
// waiting for an offline device when wait is set. A direct path that fails
// is left for the relay.
func (d *Dialer) stream(ctx context.Context, device string, port uint16, wait bool) (*streamConn, Path, error) {
	if p, conn := d.directPath(device); conn != nil {
		sc, path, err := d.directStream(ctx, p, conn, device, port)
		if !errors.Is(err, errFallback) {
			return sc, path, err
		}
	}
	var sc *streamConn
	var err error
	if wait {
		sc, err = d.openOnline(ctx, device, port)
	} else {
		sc, err = d.open(ctx, device, port)
	}
	return sc, Path{}, err
}

// handshake makes the session on a stream the agent has accepted
// resumable (unless DisableResume) and runs the end-to-end TLS over it.
func (d *Dialer) handshake(ctx context.Context, sc *streamConn, device string, port uint16, path Path) (*e2eConn, error) {
	hctx, cancel := context.WithTimeout(ctx, d.cfg.HandshakeTimeout)
	defer cancel()
	var under net.Conn = sc
	var s *session
	if _, plain := d.plain.Load(strings.ToLower(device)); !d.cfg.DisableResume && !plain {
		var err error
		s, err = d.startSession(hctx, sc, device, port, path)
		if err != nil {
			sc.CancelWrite(StreamAborted)
			sc.Close()
		}
		var re *RefusedError
		if errors.Is(err, errNoSessionFrame) {
			if _, known := d.plain.LoadOrStore(strings.ToLower(device), true); !known {
				d.log.Info().Str("device", device).
					Msg("the device's agent serves no resumable sessions (it predates them, or runs with --no-resume): its sessions are plain, and end when their path fails")
			}
			// The agent has closed that stream: a plain session on a new one.
			if sc, path, err = d.stream(ctx, device, port, false); err != nil {
				return nil, err
			}
			under = sc
		} else if errors.As(err, &re) { // the agent's refusal (its service down), worded as at the Open
			return nil, fmt.Errorf("%s:%d: %w", device, port, err)
		} else if err != nil {
			return nil, fmt.Errorf("%s:%d: start the session: %w", device, port, err)
		} else {
			under = s
		}
	}
	tc := tls.Client(under, clientE2E(d.cfg.Server, device, d.pins[device], d.known))
	if err := tc.HandshakeContext(hctx); err != nil {
		if s != nil {
			s.fail(err)
		} else {
			sc.CancelWrite(StreamAborted)
			sc.Close()
		}
		return nil, fmt.Errorf("%s:%d: end-to-end TLS: %w", device, port, err)
	}
	if s != nil {
		return &e2eConn{Conn: tc, s: s}, nil
	}
	return &e2eConn{Conn: tc, sc: sc, path: path}, nil
}

// DialCarrier opens the relayed stream to device:port and returns it before
// the end-to-end TLS handshake: the raw carrier. A real agent expects that
// handshake next, so the caller must run it; benchmarks use DialCarrier to
// measure the relay alone against a carrier-level peer. Like Dial, it waits
// up to WaitOnline for an offline device.
func (d *Dialer) DialCarrier(ctx context.Context, device string, port uint16) (net.Conn, error) {
	return d.openOnline(ctx, device, port)
}

// openOnline is open, asked again while the device is offline, for up to
// WaitOnline.
func (d *Dialer) openOnline(ctx context.Context, device string, port uint16) (*streamConn, error) {
	sc, err := d.open(ctx, device, port)
	if d.cfg.WaitOnline <= 0 || !errors.Is(err, ErrOffline) {
		return sc, err
	}
	d.log.Info().Str("device", device).Uint16("port", port).Dur("wait", d.cfg.WaitOnline).
		Msg("device offline; waiting for its agent to connect to the relay")
	wctx, cancel := context.WithTimeout(ctx, d.cfg.WaitOnline)
	defer cancel()
	for delay := maxOnlinePoll / 20; ; delay = min(2*delay, maxOnlinePoll) {
		t := time.NewTimer(delay)
		select {
		case <-wctx.Done():
			t.Stop()
			if ctx.Err() != nil {
				return nil, fmt.Errorf("waiting for device %s to come online: %w", device, ctx.Err())
			}
			return nil, fmt.Errorf("%w (waited %s for it)", err, d.cfg.WaitOnline)
		case <-t.C:
		}
		if sc, err = d.open(ctx, device, port); !errors.Is(err, ErrOffline) {
			return sc, err
		}
	}
}

// open sends Connect on a new stream and waits for the Result.
func (d *Dialer) open(ctx context.Context, device string, port uint16) (*streamConn, error) {
	var lastErr error
	for attempt := 0; attempt < 2; attempt++ { // a dead cached connection gets one fresh try
		c, err := d.connectionFor(ctx, device, attempt > 0)
		if err != nil {
			return nil, err
		}
		sctx, cancel := context.WithTimeout(ctx, d.cfg.HandshakeTimeout)
		s, err := c.OpenStreamSync(sctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			lastErr = fmt.Errorf("open stream to relay %s: %w", d.cfg.Server, err)
			continue
		}
		sc := newStreamConn(s, c)
		res, err := request(ctx, sc, Connect{Device: device, Port: port, AccessCode: d.cfg.AccessCode}, d.cfg.HandshakeTimeout)
		if err != nil {
			sc.CancelWrite(StreamAborted)
			sc.Close()
			var ae *quic.ApplicationError
			var ie *quic.IdleTimeoutError
			if ctx.Err() == nil && (errors.As(err, &ae) || errors.As(err, &ie) || errors.Is(err, errCarrierLost)) {
				lastErr = fmt.Errorf("relay %s: %w", d.cfg.Server, err)
				continue
			}
			return nil, fmt.Errorf("%s:%d via relay %s: %w", device, port, d.cfg.Server, err)
		}
		if res.Status != StatusOK {
			sc.Close()
			return nil, fmt.Errorf("%s:%d: %w", device, port, &RefusedError{Status: res.Status, Message: res.Message})
		}
		return sc, nil
	}
	return nil, lastErr
}

// ask writes f on s and reads the answer, within timeout.
func ask(ctx context.Context, s *streamConn, f Frame, timeout time.Duration) (Frame, error) {
	deadline := time.Now().Add(timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	s.SetDeadline(deadline)
	defer s.SetDeadline(time.Time{})
	stop := context.AfterFunc(ctx, func() { s.SetDeadline(time.Now()) })
	defer stop()
	if err := WriteFrame(s, f); err != nil {
		return nil, err
	}
	return ReadFrame(s, 0)
}

// request writes f on s and reads the Result, within timeout.
func request(ctx context.Context, s *streamConn, f Frame, timeout time.Duration) (Result, error) {
	fr, err := ask(ctx, s, f, timeout)
	if err != nil {
		return Result{}, err
	}
	res, ok := fr.(Result)
	if !ok {
		return Result{}, fmt.Errorf("%w: expected a result, got frame type %#x", ErrFrame, fr.frameType())
	}
	return res, nil
}

// Serve accepts TCP connections on ln and forwards each to device:port until
// ctx ends or ln fails; it closes ln and waits for the forwarded connections
// to end before it returns. A device presenting a key other than the pinned
// one also ends it, with that *KeyChangedError: every later connection would
// be refused the same way, and whether to trust the new key is the user's
// decision, as with ssh.
func (d *Dialer) Serve(ctx context.Context, ln net.Listener, device string, port uint16) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	var keyChanged atomic.Pointer[error]
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer ln.Close()
	var active sync.Map // open local connections, closed when Serve ends
	defer active.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
	for {
		c, err := ln.Accept()
		if err != nil {
			if kerr := keyChanged.Load(); kerr != nil {
				return *kerr
			}
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accept on %s: %w", ln.Addr(), err)
		}
		active.Store(c, nil)
		wg.Go(func() {
			defer active.Delete(c)
			defer c.Close()
			rc, err := d.Dial(ctx, device, port)
			if errors.Is(err, ErrKeyChanged) {
				keyChanged.CompareAndSwap(nil, &err)
				ln.Close()
				return
			}
			if err != nil {
				d.log.Warn().Err(err).Str("device", device).Uint16("port", port).Msg("cannot open link session")
				return
			}
			path := PathOf(rc)
			ev := d.log.Info().Str("device", device).Uint16("port", port).Str("path", path.String()).Str("transport", TransportOf(rc))
			if path.Direct {
				ev = ev.Str("pair", path.Local.String()+">"+path.Remote.String())
			}
			ev.Msg("link session")
			up, down := splice(c, rc)
			d.log.Debug().Str("device", device).Uint16("port", port).Str("path", path.String()).
				Int64("bytes_up", up).Int64("bytes_down", down).Msg("link session ended")
		})
	}
}

// Close closes the connections to the relay and to devices on direct
// paths, and the socket; open sessions end.
func (d *Dialer) Close() error {
	d.mu.Lock()
	d.closed = true
	c := d.conn
	d.conn = nil
	d.mu.Unlock()
	d.cancel()
	if c != nil {
		c.CloseWithError(CloseNormal, "client closed")
	}
	d.closeDirect("client closed")
	d.wg.CloseAndWait()
	d.dialMu.Lock() // a connection in progress has seen d.closed or the cancel
	defer d.dialMu.Unlock()
	if d.ep != nil {
		return d.ep.close()
	}
	return nil
}

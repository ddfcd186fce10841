// Package linkserver is the Link relay, the server side of Link: NAS agents
// hold one connection each (QUIC, or TLS over TCP where UDP is blocked);
// clients open one stream per TCP connection naming a device and port; the relay checks the device, opens a stream on
// its agent's connection and splices the two. It forwards end-to-end-encrypted
// bytes and never stores, inspects or logs payload. The wire format and its
// limits are in link/wire.go; the agent and the dialer are in link.
package linkserver

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nasreach/nasreach/anonymize"
	"github.com/nasreach/nasreach/connlog"
	"github.com/nasreach/nasreach/internal/connlimit"
	"github.com/nasreach/nasreach/internal/netaddr"
	"github.com/nasreach/nasreach/internal/ratelimit"
	"github.com/nasreach/nasreach/internal/workgroup"
	"github.com/nasreach/nasreach/link"
	"github.com/nasreach/nasreach/store"
	"github.com/quic-go/quic-go"
	"github.com/rs/zerolog"
)

// Link relay defaults, sized for a small operator.
const (
	DefaultMaxAgents           = 1000
	DefaultMaxStreamsPerDevice = 128
	DefaultStreamRate          = 20 // new streams per second per client address
	DefaultStreamBurst         = 100
	DefaultHandshakeTimeout    = 10 * time.Second
	DefaultIdleTimeout         = 30 * time.Second
	DefaultMaxHeader           = 512
	// linkMaxClientStreams is how many streams one client connection may have
	// open at once (QUIC flow control of stream count).
	linkMaxClientStreams = 256
	// linkCopyBuffer is the splice buffer per direction: the only payload the
	// relay holds outside QUIC's flow-control windows, and only in passing.
	linkCopyBuffer = 32 << 10
	// linkRefusalGrace is how long a refused peer may take to read the reason.
	linkRefusalGrace = time.Second
)

// Store is what the Link relay needs from the device table; *store.Store
// implements it.
type Store interface {
	Get(name string) (store.Device, error)
	Authenticate(name, token string) (store.Device, error)
	CheckAccessCode(name, code string) bool
	OnChange(func(store.Change))
}

// Config configures New. Zero limits mean the defaults.
type Config struct {
	// Addr is the UDP address to listen on, e.g. "0.0.0.0:7443". Required
	// unless PacketConn is set.
	Addr string
	// PacketConn, when set, is served instead of binding Addr (systemd
	// socket activation, tests). The relay owns it from the call to New on:
	// it closes it at Shutdown, or before New returns an error.
	PacketConn net.PacketConn
	// TCPAddr is the TCP address of the TCP carrier (TLS, for agents and
	// clients whose UDP is blocked), e.g. "0.0.0.0:443"; empty (and no
	// TCPListener) runs none.
	TCPAddr string
	// TCPListener, when set, is served instead of binding TCPAddr; the
	// relay owns it as it owns PacketConn.
	TCPListener net.Listener
	// Certificate is the relay's TLS certificate, on both transports. Required unless
	// GetCertificate is set.
	Certificate tls.Certificate
	// GetCertificate, when set, is asked for the certificate at every
	// handshake instead (certfile.Watcher: the operator's renewed
	// certificate is served without a restart).
	GetCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// Store authenticates agents and authorizes sessions. Required.
	Store Store
	// Events receives one connection-log record per relayed session (client
	// address masked, no payload). It must not block. Nil means none.
	Events func(connlog.Event)
	// Logger receives the relay's events; it never sees payload or an
	// unmasked client address.
	Logger zerolog.Logger
	// MaxAgents bounds the agents connected at once.
	MaxAgents int
	// MaxStreamsPerDevice bounds the sessions open to one device at once.
	MaxStreamsPerDevice int
	// StreamRate and StreamBurst bound new streams per client address (IPv6
	// by /64): a token bucket refilled at StreamRate per second.
	StreamRate  float64
	StreamBurst int
	// Conns caps the QUIC connections (agents' and clients') held at once,
	// in total and per source network, from a connection's first packet to
	// its end; zero fields take connlimit's defaults. A connection over a
	// cap is refused before its handshake (CONNECTION_REFUSED). They hold
	// no file descriptor but memory. While a source or the relay holds
	// half its cap, a new connection must prove its address first (QUIC
	// Retry, one round trip), so that spoofed packets cannot take a
	// source's slots.
	Conns connlimit.Config
	// TCPConns caps the TCP carrier's connections likewise (each holds a
	// file descriptor); a connection over a cap is closed before its TLS
	// handshake.
	TCPConns connlimit.Config
	// HandshakeTimeout bounds the QUIC (or TCP and TLS) handshake plus the
	// first frame, and each stream's header.
	HandshakeTimeout time.Duration
	// IdleTimeout closes a connection with no traffic at all (agents and
	// clients send keep-alives well within it).
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds a frame body the relay reads (at most
	// link.MaxFrameBody).
	MaxHeaderBytes int
	// STUN is the daemon's STUN server, which the relay tells agents and
	// clients about (RelayInfo) so that they learn their server-reflexive
	// address. An unspecified address (a server bound to every interface)
	// means "the relay's own address"; the zero value means none.
	STUN netip.AddrPort
	// DisableDirect stops the relay from introducing clients to agents for
	// direct (hole-punched) paths: every byte then goes through the relay.
	// SetDirect changes it while the relay runs.
	DisableDirect bool
	// Presence, when set, makes the relay a node of a cluster sharing one
	// device table (store.Presence on etcd): it records the agents this
	// node holds, and says which node holds the others.
	Presence Presence
	// MeshKey is the secret every node of the cluster shares: with
	// Presence, a client asking for a device whose agent is on another
	// node is forwarded there over one QUIC connection per pair of nodes
	// (mesh.go), which both ends authenticate with it. Empty: no
	// forwarding (clients must be steered to the right node by DNS).
	MeshKey string
	// Tap, for tests only, sees every chunk of payload the relay forwards.
	Tap func(device string, fromClient bool, p []byte)
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Server is a running Link relay.
type Server struct {
	cfg     Config
	log     zerolog.Logger
	tr      *quic.Transport
	ln      *quic.Listener
	addr    netip.AddrPort
	tcpLn   net.Listener // nil without the TCP carrier
	tcpTLS  *tls.Config
	tcpAddr netip.AddrPort
	limiter *ratelimit.Limiter
	// connCaps caps and counts the QUIC connections, tcpCaps the TCP
	// carrier's.
	connCaps, tcpCaps *connlimit.Limiter
	// sessions counts sessions admitted and not yet ended, on any agent.
	sessions atomic.Int64
	// maxAgents and maxStreams are cfg's limits, changed live by SetLimits.
	maxAgents, maxStreams atomic.Int64

	ctx    context.Context
	cancel context.CancelFunc
	// wg runs every goroutine Shutdown waits for; closing it is what
	// "Shutdown has begun" means.
	wg workgroup.Group

	// direct is whether the relay introduces clients to agents (SetDirect).
	direct atomic.Bool

	mu     sync.Mutex
	agents map[string]*linkAgent
	conns  map[link.Carrier]struct{}
	infos  map[link.Carrier]*infoStream // each connection's Info stream, told of every change

	mesh mesh
	// grants are the exchanges introduced to each device's agent, by id
	// (revoke.go).
	grants map[string]map[[link.ExchangeIDLen]byte]*grant
}

// linkAgent is one connected agent.
type linkAgent struct {
	device  string
	conn    link.Carrier
	streams atomic.Int64
	reason  atomic.Uint64 // the stream error code for sessions when the agent is closed
	// recorded is set once the cluster's presence shows this agent's
	// record (mesh.go, presenceChanged).
	recorded atomic.Bool
	// ctrl is the control stream, on which the relay writes Revoke frames
	// (one at a time: ctrlMu).
	ctrl   link.Stream
	ctrlMu sync.Mutex
}

func (a *linkAgent) close(code quic.ApplicationErrorCode, stream quic.StreamErrorCode, msg string) {
	a.reason.CompareAndSwap(0, uint64(stream))
	a.conn.CloseWithError(code, msg)
}

// New validates cfg, binds Addr (or takes Config.PacketConn) and relays in
// the background until Shutdown. On error nothing is left open,
// Config.PacketConn included.
func New(cfg Config) (*Server, error) {
	if err := cfg.validate(); err != nil {
		if cfg.PacketConn != nil {
			cfg.PacketConn.Close()
		}
		if cfg.TCPListener != nil {
			cfg.TCPListener.Close()
		}
		return nil, err
	}
	cfg.MaxAgents = cmp.Or(cfg.MaxAgents, DefaultMaxAgents)
	cfg.MaxStreamsPerDevice = cmp.Or(cfg.MaxStreamsPerDevice, DefaultMaxStreamsPerDevice)
	cfg.StreamRate = cmp.Or(cfg.StreamRate, DefaultStreamRate)
	cfg.StreamBurst = cmp.Or(cfg.StreamBurst, DefaultStreamBurst)
	cfg.HandshakeTimeout = cmp.Or(cfg.HandshakeTimeout, DefaultHandshakeTimeout)
	cfg.IdleTimeout = cmp.Or(cfg.IdleTimeout, DefaultIdleTimeout)
	cfg.MaxHeaderBytes = cmp.Or(cfg.MaxHeaderBytes, DefaultMaxHeader)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	tcpLn := cfg.TCPListener
	if tcpLn == nil && cfg.TCPAddr != "" {
		var err error
		if tcpLn, err = net.Listen("tcp", cfg.TCPAddr); err != nil {
			if cfg.PacketConn != nil {
				cfg.PacketConn.Close()
			}
			return nil, fmt.Errorf("link listen tcp %s: %w", cfg.TCPAddr, err)
		}
	}
	pc := cfg.PacketConn
	if pc == nil {
		var err error
		if pc, err = net.ListenPacket("udp", cfg.Addr); err != nil {
			if tcpLn != nil {
				tcpLn.Close()
			}
			return nil, fmt.Errorf("link listen %s: %w", cfg.Addr, err)
		}
	}
	addr := netaddr.AddrPort(pc.LocalAddr())
	conns := connlimit.New(cfg.Conns)
	tr := &quic.Transport{
		Conn: pc,
		VerifySourceAddress: func(a net.Addr) bool {
			return conns.Crowded(netaddr.Addr(a))
		},
		// Called for each new connection; its context ends with the
		// connection, however it ends (a failed handshake included).
		ConnContext: func(ctx context.Context, info *quic.ClientInfo) (context.Context, error) {
			slot, err := conns.Admit(netaddr.Addr(info.RemoteAddr))
			if err != nil {
				return nil, err
			}
			context.AfterFunc(ctx, slot.Release)
			return ctx, nil
		},
	}
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{link.ALPN}, GetCertificate: cfg.GetCertificate}
	if cfg.GetCertificate == nil {
		tlsConf.Certificates = []tls.Certificate{cfg.Certificate}
	}
	ln, err := tr.Listen(tlsConf, &quic.Config{
		HandshakeIdleTimeout: cfg.HandshakeTimeout, MaxIdleTimeout: cfg.IdleTimeout,
		MaxIncomingStreams: linkMaxClientStreams, MaxIncomingUniStreams: -1,
	})
	if err != nil {
		tr.Close()
		pc.Close()
		if tcpLn != nil {
			tcpLn.Close()
		}
		return nil, fmt.Errorf("link listen %s: %w", addr, err)
	}
	l := &Server{
		cfg: cfg, log: cfg.Logger, tr: tr, ln: ln, addr: addr,
		limiter: ratelimit.New(cfg.StreamRate, cfg.StreamBurst, 0), connCaps: conns, tcpCaps: connlimit.New(cfg.TCPConns),
		agents: map[string]*linkAgent{}, conns: map[link.Carrier]struct{}{}, infos: map[link.Carrier]*infoStream{},
		mesh:   mesh{conns: map[string]link.Carrier{}, dialing: map[string]*sync.Mutex{}},
		grants: map[string]map[[link.ExchangeIDLen]byte]*grant{},
	}
	if tcpLn != nil {
		l.tcpAddr = netaddr.AddrPort(tcpLn.Addr())
		l.tcpLn = l.tcpCaps.Listener(tcpLn)
		l.tcpTLS = tlsConf.Clone()
		l.tcpTLS.NextProtos = []string{link.TCPALPN}
	}
	l.direct.Store(!cfg.DisableDirect)
	l.maxAgents.Store(int64(cfg.MaxAgents))
	l.maxStreams.Store(int64(cfg.MaxStreamsPerDevice))
	l.ctx, l.cancel = context.WithCancel(context.Background())
	cfg.Store.OnChange(l.onChange)
	if cfg.Presence != nil {
		cfg.Presence.OnChange(l.presenceChanged)
	}
	l.wg.Go(l.accept)
	if l.tcpLn != nil {
		l.wg.Go(l.acceptTCP)
	}
	l.wg.Go(l.serveSTUN)
	return l, nil
}

// validate checks cfg before New opens anything.
func (cfg *Config) validate() error {
	switch {
	case cfg.Addr == "" && cfg.PacketConn == nil:
		return errors.New("linkserver: Config.Addr (or PacketConn) is required")
	case len(cfg.Certificate.Certificate) == 0 && cfg.GetCertificate == nil:
		return errors.New("linkserver: Config.Certificate (or GetCertificate) is required")
	case cfg.Store == nil:
		return errors.New("linkserver: Config.Store is required")
	case cfg.MeshKey != "" && cfg.Presence == nil:
		return errors.New("linkserver: Config.MeshKey needs Config.Presence (a cluster)")
	case cfg.MaxHeaderBytes > link.MaxFrameBody:
		return fmt.Errorf("linkserver: Config.MaxHeaderBytes %d exceeds the wire format's %d", cfg.MaxHeaderBytes, link.MaxFrameBody)
	}
	return nil
}

// Addr returns the UDP address the relay listens on.
func (l *Server) Addr() netip.AddrPort { return l.addr }

// TCPAddr returns the TCP carrier's address, or the zero value when it
// runs none.
func (l *Server) TCPAddr() netip.AddrPort { return l.tcpAddr }

// Agents returns how many agents are connected.
func (l *Server) Agents() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.agents)
}

// Limits are the limits of a running relay that SetLimits changes; zero
// values mean the defaults, as in Config.
type Limits struct {
	MaxAgents           int
	MaxStreamsPerDevice int
	StreamRate          float64
	StreamBurst         int
	Conns               connlimit.Config // its Exempt is ignored
	TCPConns            connlimit.Config // likewise
}

// SetLimits changes the relay's limits while it runs, as a configuration
// reload does. Nothing already admitted is closed: an agent or session over a
// lowered limit stays, and the limit applies to the next ones.
func (l *Server) SetLimits(lim Limits) {
	l.maxAgents.Store(int64(cmp.Or(lim.MaxAgents, DefaultMaxAgents)))
	l.maxStreams.Store(int64(cmp.Or(lim.MaxStreamsPerDevice, DefaultMaxStreamsPerDevice)))
	l.limiter.Set(cmp.Or(lim.StreamRate, DefaultStreamRate), cmp.Or(lim.StreamBurst, DefaultStreamBurst))
	l.connCaps.SetCaps(lim.Conns)
	l.tcpCaps.SetCaps(lim.TCPConns)
}

// ConnStats returns the QUIC connections held now and those refused over a
// cap. A refusal is counted per first packet refused: a client whose
// ClientHello takes two packets (a post-quantum key share) counts twice.
func (l *Server) ConnStats() connlimit.Stats { return l.connCaps.Stats() }

// TCPConnStats returns the TCP carrier's connections held now and those
// refused over a cap.
func (l *Server) TCPConnStats() connlimit.Stats { return l.tcpCaps.Stats() }

// Carriers returns the connections held now by transport
// (link.TransportQUIC, link.TransportTCP), handshakes in progress left out.
func (l *Server) Carriers() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := map[string]int{link.TransportQUIC: 0, link.TransportTCP: 0}
	for c := range l.conns {
		n[c.Transport()]++
	}
	return n
}

// Sessions returns how many client sessions are in progress (admitted and
// not yet ended).
func (l *Server) Sessions() int { return int(l.sessions.Load()) }

// Shutdown tells every agent and client that the relay is shutting down and
// closes their connections and the socket: a relayed session cannot be
// drained, each ends at once and is logged. Then it waits for every
// goroutine of the relay to end, or for ctx to end: then it returns an error
// wrapping ctx.Err(), the goroutines having been told to stop. Calling it
// again waits for the same stop.
func (l *Server) Shutdown(ctx context.Context) error {
	err := l.stop()
	if werr := workgroup.WaitContext(ctx, l.wg.Wait); werr != nil {
		err = errors.Join(err, werr)
	}
	if err != nil {
		return fmt.Errorf("link relay shutdown: %w", err)
	}
	return nil
}

// stop closes every connection, the listener and the socket the first time
// it is called, which makes every goroutine of the relay return.
func (l *Server) stop() error {
	l.mu.Lock()
	if !l.wg.Close() {
		l.mu.Unlock()
		return nil
	}
	conns := make([]link.Carrier, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	for _, a := range l.agents {
		a.reason.CompareAndSwap(0, link.StreamShutdown)
	}
	l.mu.Unlock()
	l.cancel()
	for _, c := range conns {
		c.CloseWithError(link.CloseShutdown, "relay shutting down")
	}
	l.ln.Close()
	if l.tcpLn != nil {
		l.tcpLn.Close()
	}
	// The transport does not close a socket it was given; it returns once
	// it has stopped reading it, and then the socket can go.
	err := l.tr.Close()
	if cerr := l.tr.Conn.Close(); cerr != nil && !errors.Is(cerr, net.ErrClosed) {
		err = errors.Join(err, cerr)
	}
	return err
}

// onChange closes an agent at once when its device loses Link or is deleted.
func (l *Server) onChange(ch store.Change) {
	var code quic.ApplicationErrorCode
	var stream quic.StreamErrorCode
	var msg string
	switch {
	case ch.Kind == store.Deleted || ch.Kind == store.Expired:
		code, stream, msg = link.CloseDeviceGone, link.StreamDeviceGone, "device deleted"
	case ch.Kind == store.Updated && !ch.Device.Link:
		code, stream, msg = link.CloseLinkDisabled, link.StreamLinkDisabled, "link switched off for this device"
	case ch.Kind == store.Updated:
		// An access code revoked, or access changed: direct paths whose
		// code no longer admits their client end (revoke.go). Not on the
		// store's writer.
		l.wg.Go(func() { l.recheck(ch.Device.Name) })
		return
	default:
		return
	}
	l.forget(ch.Device.Name)
	l.mu.Lock()
	a := l.agents[ch.Device.Name]
	if a != nil {
		delete(l.agents, ch.Device.Name)
	}
	l.mu.Unlock()
	if a != nil {
		l.offline(a.device)
		l.log.Info().Str("device", a.device).Str("reason", msg).Msg("closing link agent")
		a.reason.CompareAndSwap(0, uint64(stream))
		l.wg.Go(func() { a.close(code, stream, msg) }) // CloseWithError waits; the store's writer must not
	}
}

func (l *Server) accept() {
	for {
		c, err := l.ln.Accept(l.ctx)
		if err != nil {
			return
		}
		if !l.serve(link.QUICCarrier(c)) {
			return
		}
	}
}

// acceptTCP accepts the TCP carrier's connections; each gets the TLS
// handshake and yamux in a goroutine of its own.
func (l *Server) acceptTCP() {
	for {
		conn, err := l.tcpLn.Accept()
		if err != nil {
			return
		}
		if !l.wg.Go(func() { l.handshakeTCP(conn) }) {
			conn.Close()
			return
		}
	}
}

// handshakeTCP runs the TLS handshake of a TCP connection within the
// handshake timeout, then serves it as a carrier.
func (l *Server) handshakeTCP(conn net.Conn) {
	tc := tls.Server(conn, l.tcpTLS)
	tc.SetDeadline(l.cfg.Now().Add(l.cfg.HandshakeTimeout))
	ctx, cancel := context.WithTimeout(l.ctx, l.cfg.HandshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		l.log.Debug().Err(err).Str("client", anonymize.Addr(netaddr.Addr(conn.RemoteAddr())).String()).Msg("link tls handshake failed")
		conn.Close()
		return
	}
	if tc.ConnectionState().NegotiatedProtocol != link.TCPALPN {
		conn.Close()
		return
	}
	tc.SetDeadline(time.Time{})
	c, err := link.NewTCPCarrier(tc, link.TCPCarrierConfig{
		Server: true, KeepAlive: l.cfg.IdleTimeout / 2, MaxIncomingStreams: linkMaxClientStreams,
	})
	if err != nil {
		return
	}
	l.serve(c)
}

// serve serves a new connection until it ends, or closes it and returns
// false when the relay is shutting down.
func (l *Server) serve(c link.Carrier) bool { return l.track(c, func() { l.serveConn(c) }) }

// track runs f, which serves c, in a goroutine of the relay, with c among
// the connections Shutdown closes until f returns; when the relay is
// shutting down it closes c instead and returns false.
func (l *Server) track(c link.Carrier, f func()) bool {
	// Under l.mu, as stop closes wg and lists conns: either stop
	// finds c to close or Go refuses it.
	l.mu.Lock()
	l.conns[c] = struct{}{}
	ok := l.wg.Go(func() {
		defer func() {
			l.mu.Lock()
			delete(l.conns, c)
			l.mu.Unlock()
		}()
		f()
	})
	if !ok {
		delete(l.conns, c)
	}
	l.mu.Unlock()
	if !ok {
		c.CloseWithError(link.CloseShutdown, "relay shutting down")
	}
	return ok
}

// serveConn reads the first frame of a new connection, which says whether it
// is an agent (Hello) or a client (Connect).
func (l *Server) serveConn(c link.Carrier) {
	ctx, cancel := context.WithTimeout(l.ctx, l.cfg.HandshakeTimeout)
	s, err := c.AcceptStream(ctx)
	cancel()
	if err != nil {
		c.CloseWithError(link.CloseIdle, "no request within the handshake timeout")
		return
	}
	src := netaddr.AddrPort(c.RemoteAddr())
	s.SetReadDeadline(l.cfg.Now().Add(l.cfg.HandshakeTimeout))
	fr, err := link.ReadFrame(s, l.cfg.MaxHeaderBytes)
	if err != nil {
		link.WriteFrame(s, link.Result{Status: link.StatusBadRequest, Message: "malformed request: " + err.Error()})
		l.closeAfterAnswer(c, s, link.CloseProtocol, "malformed first frame")
		return
	}
	s.SetReadDeadline(time.Time{})
	switch f := fr.(type) {
	case link.Hello:
		l.serveAgent(c, s, f, src)
	case link.Connect, link.Info, link.Direct, link.Report:
		l.serveClient(c, s, f, src)
	case link.MeshHello:
		l.serveMesh(c, s, f, src)
	default:
		link.WriteFrame(s, link.Result{Status: link.StatusBadRequest, Message: "expected hello or connect"})
		l.closeAfterAnswer(c, s, link.CloseProtocol, "unexpected first frame")
	}
}

// closeAfterAnswer ends s after a refusal and gives the peer a moment to read
// the Result and close the connection itself, so that it learns the precise
// reason; then it closes the connection with code.
func (l *Server) closeAfterAnswer(c link.Carrier, s link.Stream, code quic.ApplicationErrorCode, msg string) {
	s.Close()
	t := time.NewTimer(linkRefusalGrace)
	defer t.Stop()
	select {
	case <-c.Context().Done():
	case <-l.ctx.Done():
	case <-t.C:
	}
	c.CloseWithError(code, msg)
}

// serveAgent logs an agent in and holds its connection until it ends.
func (l *Server) serveAgent(c link.Carrier, ctrl link.Stream, h link.Hello, src netip.AddrPort) {
	refuse := func(st link.Status, msg string) {
		l.log.Info().Str("device", h.Device).Str("client", anonymize.Addr(src.Addr()).String()).Str("reason", st.String()).Msg("link agent refused")
		l.event(connlog.Event{Kind: "agent", Outcome: "refused", Device: h.Device, Client: src.Addr(), Detail: over(c.Transport(), st.String())})
		link.WriteFrame(ctrl, link.Result{Status: st, Message: msg})
		l.closeAfterAnswer(c, ctrl, link.CloseRefused, msg)
	}
	d, err := l.cfg.Store.Authenticate(h.Device, h.Token)
	if err != nil {
		refuse(link.StatusBadCredentials, "unknown device or wrong token")
		return
	}
	if !d.Link {
		refuse(link.StatusLinkDisabled, "link is switched off for device "+d.Name)
		return
	}
	a := &linkAgent{device: d.Name, conn: c, ctrl: ctrl}
	l.mu.Lock()
	old := l.agents[d.Name]
	if limit := l.maxAgents.Load(); old == nil && int64(len(l.agents)) >= limit {
		l.mu.Unlock()
		refuse(link.StatusTooManyAgents, fmt.Sprintf("the relay holds its maximum of %d agents", limit))
		return
	}
	l.agents[d.Name] = a
	l.mu.Unlock()
	if old != nil {
		l.log.Info().Str("device", d.Name).Msg("a new agent replaces the connected one")
		old.close(link.CloseReplaced, link.StreamDeviceGone, "replaced by a newer agent for this device")
	}
	// A change committed between Authenticate and registration was not seen
	// by onChange: look again now that the agent is visible to it.
	if d2, err := l.cfg.Store.Get(d.Name); err != nil || !d2.Link {
		l.drop(a)
		refuse(link.StatusLinkDisabled, "link is switched off for device "+d.Name)
		return
	}
	if err := link.WriteFrame(ctrl, link.Result{Status: link.StatusOK}); err != nil {
		l.drop(a)
		return
	}
	l.online(d.Name)
	l.log.Info().Str("device", d.Name).Str("transport", c.Transport()).Msg("link agent connected")
	l.event(connlog.Event{Kind: "agent", Outcome: "ok", Device: d.Name, Client: src.Addr(), Detail: over(c.Transport(), "connected")})
	start := l.cfg.Now()
	// Revocations made while no agent was connected.
	l.wg.Go(func() { l.recheck(d.Name) })
	// The control stream carries nothing after the login; its end (or any
	// byte on it) ends the agent. Agents open no streams but Info.
	l.hold(c, ctrl, link.CloseProtocol, func(s link.Stream) { l.serveAgentStream(c, s) })
	l.drop(a)
	l.dropInfo(c)
	c.CloseWithError(link.CloseNormal, "")
	l.log.Info().Str("device", d.Name).Msg("link agent disconnected")
	l.event(connlog.Event{Kind: "agent", Outcome: "ok", Device: d.Name, Client: src.Addr(), Start: start, Detail: over(c.Transport(), "disconnected")})
}

// hold serves the streams the peer of c opens, each with serve in a
// goroutine of its own, until c ends; the end of its control stream ctrl
// (or any byte on it) closes c with code.
func (l *Server) hold(c link.Carrier, ctrl link.Stream, code quic.ApplicationErrorCode, serve func(link.Stream)) {
	l.wg.Go(func() {
		var b [1]byte
		ctrl.Read(b[:])
		c.CloseWithError(code, "control stream ended")
	})
	for {
		s, err := c.AcceptStream(l.ctx)
		if err != nil {
			return
		}
		if !l.wg.Go(func() { serve(s) }) {
			s.CancelRead(link.StreamShutdown)
			s.CancelWrite(link.StreamShutdown)
			return
		}
	}
}

// drop removes a from the agent table if it is still the registered one.
func (l *Server) drop(a *linkAgent) {
	l.mu.Lock()
	gone := l.agents[a.device] == a
	if gone {
		delete(l.agents, a.device)
	}
	l.mu.Unlock()
	if gone {
		l.offline(a.device)
	}
}

func (l *Server) agent(device string) *linkAgent {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.agents[device]
}

// over notes the TCP carrier in an event's detail: "connected over tcp";
// QUIC, the usual transport, goes unsaid.
func over(transport, detail string) string {
	switch {
	case transport != link.TransportTCP:
		return detail
	case detail == "":
		return "over " + link.TransportTCP
	}
	return detail + " over " + link.TransportTCP
}

func (l *Server) event(e connlog.Event) {
	if l.cfg.Events == nil {
		return
	}
	e.Service = "link"
	if e.Time.IsZero() {
		e.Time = l.cfg.Now()
	}
	l.cfg.Events(e)
}

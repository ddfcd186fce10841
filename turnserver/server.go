// Package turnserver is the TURN relay (RFC 8656) that WebRTC-style clients
// use when no direct path exists, with STUN Binding answered on the same
// port. It authenticates against the device table and never stores or logs
// payload. (The Link relay, nasreach's own QUIC rendezvous, is linkserver.)
//
// The relay is pion/turn behind a thin filter (filter.go) and a relay
// address allocator (alloc.go). It listens on the STUN port (3478) over
// UDP and TCP, and on 5349 over TLS when a certificate is given, and answers
// STUN Binding there too. Clients authenticate with long-term credentials
// (RFC 8489 §9.2), which come from three places:
//
//   - static users, Config.Users ("name:password");
//   - TURN REST API ephemeral credentials (Config.Secret): username
//     "expiry-unix-time:name", password base64(HMAC-SHA1(secret, username)),
//     refused with 401 once expired (RESTUsername, RESTPassword);
//   - registered devices with their link switch on: username the device name,
//     password the hex SHA-256 of its token (DevicePassword). A device that is
//     deleted, switched off or given a new token loses its allocations at once.
//
// Peers are restricted by PeerPolicy (peers.go): private, loopback, link-local
// and other special ranges, their IPv4-mapped, NAT64, 6to4 and Teredo forms,
// and the server's own addresses are refused (403) unless allow-listed.
//
// Quotas: allocations per user and in total (486 when reached; a port held
// for a RESERVATION-TOKEN counts as one), a cap on an allocation's total
// lifetime, and an optional bandwidth cap per allocation. EVEN-PORT and
// RESERVATION-TOKEN (RTP/RTCP port pairs) are served by the relay itself
// (reserve.go).
//
// One connection-log record is emitted per allocation when it ends, and one
// per refused request (refuse.go), which is also counted and logged.
package turnserver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nasreach/nasreach/connlog"
	"github.com/nasreach/nasreach/internal/connlimit"
	"github.com/nasreach/nasreach/internal/listen"
	"github.com/nasreach/nasreach/internal/netaddr"
	"github.com/nasreach/nasreach/internal/workgroup"
	"github.com/nasreach/nasreach/store"
	"github.com/pion/turn/v5"
	"github.com/rs/zerolog"
	"golang.org/x/time/rate"
)

// Defaults for Config.
const (
	// DefaultRealm is the realm when Config.Realm is empty.
	DefaultRealm = "nasreach"
	// DefaultMaxAllocations bounds allocations in total.
	DefaultMaxAllocations = 10000
	// DefaultMaxAllocationsPerUser bounds allocations per user.
	DefaultMaxAllocationsPerUser = 10
	// DefaultMaxLifetime ends an allocation this long after it was created,
	// however often it is refreshed.
	DefaultMaxLifetime = 24 * time.Hour
	// DefaultTCPIdleTimeout closes a TCP or TLS connection silent for this
	// long; longer than the longest allocation lifetime (1 h) a client can
	// request, so that a refreshing client is never cut off.
	DefaultTCPIdleTimeout = 61 * time.Minute
	// DefaultReservationLifetime is how long a port reserved by EVEN-PORT
	// with R set is held for its RESERVATION-TOKEN (RFC 8656 §7.2: about
	// 30 seconds).
	DefaultReservationLifetime = 30 * time.Second
	// udpSocketBuffer is the receive and send buffer asked for each
	// listening UDP socket: room for bursts from many clients.
	udpSocketBuffer = 4 << 20
)

// Config configures New. Zero values take the documented defaults.
type Config struct {
	// Addr is the UDP and TCP address for STUN and TURN, such as
	// "127.0.0.1:13478" (development) or "0.0.0.0:3478". Port 0 picks a
	// free port shared by both transports. Required unless PacketConns is
	// set; then it defaults to the first one's address.
	Addr string
	// TLSAddr is the TURN-over-TLS address (5349 in production); used only
	// when TLS is set.
	TLSAddr string
	// TLS is the server's TLS configuration (certificate); nil disables TLS.
	TLS *tls.Config
	// RelayIP is the address clients are told to send peer traffic to
	// (XOR-RELAYED-ADDRESS). It defaults to the IP of Addr and is required
	// when Addr is a wildcard address such as 0.0.0.0. Relay sockets bind
	// the IP of Addr.
	RelayIP netip.Addr
	// Realm is the long-term credential realm; empty means DefaultRealm.
	Realm string
	// Users are static credentials, "name:password" each.
	Users []string
	// Secret enables TURN REST API ephemeral credentials.
	Secret string
	// Devices enables credentials for registered devices; nil disables them.
	// The relay watches it with OnChange and ends a device's allocations
	// when it is deleted, switched off or given a new token.
	Devices Devices
	// AllowPeers are ranges allowed as peers even though PeerPolicy would
	// refuse them (a lab network; 127.0.0.1/32 in tests).
	AllowPeers []netip.Prefix
	// OwnAddrs are addresses of this server refused as peers, in addition
	// to its interface addresses (InterfaceAddrs) and Addr's IP; add a
	// public address that a 1:1 NAT maps to this host.
	OwnAddrs []netip.Addr
	// MaxAllocations bounds allocations in total; zero means
	// DefaultMaxAllocations. A port held for a RESERVATION-TOKEN counts as
	// an allocation until it is taken or released.
	MaxAllocations int
	// MaxAllocationsPerUser bounds allocations per user, held ports
	// counted likewise; zero means DefaultMaxAllocationsPerUser.
	MaxAllocationsPerUser int
	// MaxLifetime caps an allocation's total lifetime; zero means
	// DefaultMaxLifetime, negative means no cap.
	MaxLifetime time.Duration
	// ReservationLifetime is how long a port reserved by EVEN-PORT with R
	// set is held for its RESERVATION-TOKEN; zero means
	// DefaultReservationLifetime.
	ReservationLifetime time.Duration
	// BandwidthPerAllocation, when positive, caps each direction of an
	// allocation at this many bytes per second; excess datagrams are
	// dropped.
	BandwidthPerAllocation int64
	// Sockets is the number of SO_REUSEPORT sockets per UDP port and of TCP
	// listeners; zero means one per CPU.
	Sockets int
	// PacketConns and Listeners, when PacketConns is set, are the STUN/TURN
	// sockets to serve instead of binding Addr (systemd socket activation,
	// tests): UDP, and TCP when Listeners is not empty. Listeners without
	// PacketConns are an error. TLSListeners likewise replace binding
	// TLSAddr, and need TLS. The relay owns every socket given here from
	// the call to New on: it closes them at Shutdown, or before New returns
	// an error.
	PacketConns             []net.PacketConn
	Listeners, TLSListeners []net.Listener
	// TCPConns and TLSConns cap the TCP and the TLS connections held at
	// once, each in total and per source network; zero fields take
	// connlimit's defaults. A connection over a cap is closed before it
	// is read (before the TLS handshake).
	TCPConns, TLSConns connlimit.Config
	// TCPIdleTimeout closes silent TCP and TLS connections; zero means
	// DefaultTCPIdleTimeout. A frame (and the TLS handshake) must arrive
	// whole within frameTimeout of its first byte, or this if shorter.
	TCPIdleTimeout time.Duration
	// Binding answers STUN Binding requests on the TURN port (wire it to
	// stun.Responder.Answer). It returns nil to drop. Nil lets pion answer.
	Binding func(req []byte, from netip.AddrPort) []byte
	// Events receives one connection-log record per allocation when it
	// ends (Service "turn", Kind "allocation"; Detail names the credential
	// kind, the client's transport and why it ended, e.g. "device over udp,
	// revoked") and one per refused request (Kind "request", Outcome
	// "badauth" for credentials, else "refused"; Detail the method, code
	// and reason, e.g. "allocate: 486 allocation quota reached"). It holds
	// no payload and no peer address; the client address is masked. It must
	// not block. Nil logs allocation records at info level to Logger
	// (refusals are logged there anyway).
	Events func(connlog.Event)
	// Logger receives lifecycle records and pion's warnings (addresses
	// masked). The zero value logs nothing.
	Logger zerolog.Logger
	// Now is the clock for credential expiry and events; nil means time.Now.
	Now func() time.Time
}

// Server is a running TURN relay.
type Server struct {
	cfg     Config
	log     zerolog.Logger
	now     func() time.Time
	creds   *credentials
	policy  *PeerPolicy
	alloc   *allocator
	srv     *turn.Server
	addr    netip.AddrPort
	tlsAddr netip.AddrPort
	stats   turnCounters
	// tcpConns and tlsConns cap and count the client connections of each
	// kind of listener.
	tcpConns, tlsConns *connlimit.Limiter
	marks              realmMarks // the filter's notes to the allocator (reserve.go)
	asked              askedTable // who sent the requests in flight (refuse.go)
	// notes say why pion refuses a request, for the log (refuse.go).
	notes answerNotes

	refusalLogs *rate.Limiter // refusal log lines
	unlogged    atomic.Uint64 // refusals not logged since the last line

	// readers counts the socket readers pion runs: listening sockets,
	// listeners, client connections and relay sockets. Shutdown waits for
	// it.
	readers sync.WaitGroup

	mu     sync.Mutex
	conns  map[*streamFilter]struct{}
	closed bool // Shutdown has been called
}

type turnCounters struct {
	malformed, peerRefused, bandwidthDropped atomic.Uint64
	quotaRefused, authFailed, requestRefused atomic.Uint64
}

// Stats are counters of a running relay.
type Stats struct {
	// Allocations is the number of live allocations.
	Allocations int
	// Reserved is the number of relay ports held for a RESERVATION-TOKEN.
	Reserved int
	// Malformed counts messages dropped as neither STUN nor ChannelData.
	Malformed uint64
	// PeerRefused counts requests refused (403) and datagrams dropped by
	// the peer policy.
	PeerRefused uint64
	// BandwidthDropped counts datagrams dropped by the bandwidth cap.
	BandwidthDropped uint64
	// QuotaRefused counts allocations refused with 486 (a quota) or 508
	// (no port, or no reservation for the token).
	QuotaRefused uint64
	// AuthFailed counts requests refused for their credentials: a wrong
	// password, an unknown user, expired REST credentials or a wrong realm.
	// The 401 that challenges a request without credentials, and 438 for a
	// stale nonce, are not refusals.
	AuthFailed uint64
	// RequestRefused counts requests refused with any other error (400,
	// 420, 437, 440, 442, 443, 447).
	RequestRefused uint64
}

// New validates cfg, binds every socket (or takes Config's) and relays in
// the background until Shutdown. On error nothing is left open, Config's
// sockets included.
func New(cfg Config) (_ *Server, err error) {
	// Whatever New is given or binds is closed again if it fails.
	udps, tcps, tlss := cfg.PacketConns, cfg.Listeners, cfg.TLSListeners
	defer func() {
		if err == nil {
			return
		}
		for _, c := range udps {
			c.Close()
		}
		for _, l := range tcps {
			l.Close()
		}
		for _, l := range tlss {
			l.Close()
		}
	}()
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	relayIP, err := RelayAddr(cfg.Addr, cfg.RelayIP)
	if err != nil {
		return nil, fmt.Errorf("turn: %w", err)
	}
	host, _, _ := net.SplitHostPort(cfg.Addr)
	bindIP, _ := netip.ParseAddr(host)
	if host == "" {
		bindIP = netip.IPv4Unspecified()
	}
	static, err := parseStaticUsers(cfg.Users, cfg.Realm)
	if err != nil {
		return nil, fmt.Errorf("turn: %w", err)
	}
	t := &Server{
		cfg: cfg, log: cfg.Logger, now: cfg.Now, conns: map[*streamFilter]struct{}{},
		tcpConns: connlimit.New(cfg.TCPConns), tlsConns: connlimit.New(cfg.TLSConns),
		creds:       &credentials{realm: cfg.Realm, secret: []byte(cfg.Secret), devices: cfg.Devices, now: cfg.Now},
		marks:       newRealmMarks(),
		refusalLogs: rate.NewLimiter(refusalLogRate, refusalLogBurst),
	}
	t.creds.static.Store(&static)
	t.alloc = &allocator{
		t: t, live: map[netip.AddrPort]*relayConn{}, perUser: map[string]int{},
		reserved: map[string]*reservation{}, revoked: map[string]bool{},
	}
	if relayIP.Is4() {
		t.alloc.relayIPv4, t.alloc.bindIPv4 = relayIP, bindIP
		if !bindIP.Is4() {
			t.alloc.bindIPv4 = netip.IPv4Unspecified()
		}
	} else {
		t.alloc.relayIPv6, t.alloc.bindIPv6 = relayIP, bindIP
		if !bindIP.Is6() {
			t.alloc.bindIPv6 = netip.IPv6Unspecified()
		}
	}
	own := append(InterfaceAddrs(), cfg.OwnAddrs...)
	if bindIP.IsValid() {
		own = append(own, bindIP)
	}
	t.policy = NewPeerPolicy(cfg.AllowPeers, []netip.Addr{relayIP}, own, t.alloc.isRelay)

	if len(udps) == 0 {
		socks, err := listen.Bind(listen.Config{Addr: cfg.Addr, Copies: cfg.Sockets, UDPBuffer: udpSocketBuffer})
		if err != nil {
			return nil, fmt.Errorf("turn: %w", err)
		}
		udps, tcps = socks.UDP, socks.TCP
	}
	if cfg.TLS != nil && len(tlss) == 0 {
		socks, err := listen.Bind(listen.Config{Addr: cfg.TLSAddr, Copies: cfg.Sockets, TCPOnly: true})
		if err != nil {
			return nil, fmt.Errorf("turn: tls: %w", err)
		}
		tlss = socks.TCP
	}
	if len(tlss) > 0 {
		t.tlsAddr = netaddr.AddrPort(tlss[0].Addr())
	}
	t.addr = netaddr.AddrPort(udps[0].LocalAddr())
	sc := turn.ServerConfig{
		Realm:       cfg.Realm,
		AuthHandler: t.authenticate,
		QuotaHandler: func(userID, realm string, src net.Addr) bool {
			err := t.alloc.quota(userID, realm)
			if err != nil {
				t.notes.note(netaddr.AddrPort(src), err)
			}
			return err == nil
		},
		EventHandler: turn.EventHandler{
			OnAuth:              t.onAuth,
			OnAllocationCreated: t.onAllocationCreated,
			OnPermissionCreated: func(_, _ net.Addr, _, _, _ string, relayAddr net.Addr, peer net.IP) {
				if rc := t.alloc.byRelay(relayAddr); rc != nil {
					rc.addPeer(peer)
				}
			},
		},
		LoggerFactory: pionLoggerFactory{log: cfg.Logger.With().Str("from", "pion").Logger()},
	}
	// Every listener config gets the permission handler: pion admits every
	// peer on a listener without one.
	for _, c := range udps {
		sc.PacketConnConfigs = append(sc.PacketConnConfigs, turn.PacketConnConfig{
			PacketConn: &udpFilter{PacketConn: c, t: t}, RelayAddressGenerator: t.alloc, PermissionHandler: t.permit,
		})
	}
	for _, l := range tcps {
		sc.ListenerConfigs = append(sc.ListenerConfigs, turn.ListenerConfig{
			Listener: &streamListener{Listener: t.tcpConns.Listener(l), t: t, transport: "tcp"}, RelayAddressGenerator: t.alloc, PermissionHandler: t.permit,
		})
	}
	for _, l := range tlss {
		sc.ListenerConfigs = append(sc.ListenerConfigs, turn.ListenerConfig{
			Listener: &streamListener{Listener: t.tlsConns.Listener(l), t: t, transport: "tls", tls: cfg.TLS}, RelayAddressGenerator: t.alloc, PermissionHandler: t.permit,
		})
	}
	// Each socket's reader reports its end to t.readers, which Shutdown
	// waits for; none can end before Shutdown closes it.
	t.readers.Add(len(udps) + len(tcps) + len(tlss))
	if t.srv, err = turn.NewServer(sc); err != nil {
		return nil, fmt.Errorf("turn: start pion server: %w", err)
	}
	if cfg.Devices != nil {
		cfg.Devices.OnChange(t.deviceChanged)
	}
	ev := t.log.Info().Str("addr", t.addr.String()).Str("relay_ip", relayIP.String()).Int("sockets", cfg.Sockets)
	if t.tlsAddr.IsValid() {
		ev = ev.Str("tls_addr", t.tlsAddr.String())
	}
	ev.Msg("turn listening on udp and tcp")
	return t, nil
}

func (cfg *Config) setDefaults() error {
	if cfg.Addr == "" && len(cfg.PacketConns) > 0 {
		cfg.Addr = cfg.PacketConns[0].LocalAddr().String()
	}
	if cfg.TLSAddr == "" && len(cfg.TLSListeners) > 0 {
		cfg.TLSAddr = cfg.TLSListeners[0].Addr().String()
	}
	if cfg.Addr == "" {
		return errors.New("turn: Config.Addr is required")
	}
	if len(cfg.Listeners) > 0 && len(cfg.PacketConns) == 0 {
		return errors.New("turn: Config.Listeners need Config.PacketConns")
	}
	if len(cfg.TLSListeners) > 0 && cfg.TLS == nil {
		return errors.New("turn: Config.TLSListeners need Config.TLS")
	}
	if _, _, err := net.SplitHostPort(cfg.Addr); err != nil {
		return fmt.Errorf("turn: Addr %q: %w", cfg.Addr, err)
	}
	if cfg.TLS != nil {
		if _, _, err := net.SplitHostPort(cfg.TLSAddr); err != nil {
			return fmt.Errorf("turn: TLSAddr %q (needed with TLS): %w", cfg.TLSAddr, err)
		}
	}
	if cfg.Realm == "" {
		cfg.Realm = DefaultRealm
	}
	if cfg.MaxAllocations == 0 {
		cfg.MaxAllocations = DefaultMaxAllocations
	}
	if cfg.MaxAllocationsPerUser == 0 {
		cfg.MaxAllocationsPerUser = DefaultMaxAllocationsPerUser
	}
	if cfg.MaxAllocations < 0 || cfg.MaxAllocationsPerUser < 0 || cfg.BandwidthPerAllocation < 0 {
		return errors.New("turn: quotas must not be negative")
	}
	if cfg.MaxLifetime == 0 {
		cfg.MaxLifetime = DefaultMaxLifetime
	}
	if cfg.ReservationLifetime <= 0 {
		cfg.ReservationLifetime = DefaultReservationLifetime
	}
	if cfg.Sockets <= 0 {
		cfg.Sockets = runtime.NumCPU()
	}
	if !listen.ReusePortSupported {
		cfg.Sockets = 1
	}
	if cfg.TCPIdleTimeout <= 0 {
		cfg.TCPIdleTimeout = DefaultTCPIdleTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if len(cfg.Users) == 0 && cfg.Secret == "" && cfg.Devices == nil {
		return errors.New("turn: no credentials: set Users, Secret or Devices")
	}
	return nil
}

// RelayAddr is the address relayed traffic goes out from and clients send to:
// relayIP when set, else the one IP of the listen address. A listen address
// on every interface (0.0.0.0, [::] or no host) has no such IP, and that is
// an error the operator fixes with --turn-relay-ip.
func RelayAddr(listenAddr string, relayIP netip.Addr) (netip.Addr, error) {
	if relayIP.IsValid() {
		return relayIP.Unmap(), nil
	}
	host, _, _ := net.SplitHostPort(listenAddr)
	ip, err := netip.ParseAddr(host)
	if err != nil || ip.IsUnspecified() {
		return netip.Addr{}, fmt.Errorf("listen address %q is not one IP address: set the relay address clients should use (turn-relay-ip)", listenAddr)
	}
	return ip.Unmap(), nil
}

// Addr returns the UDP and TCP address of the relay.
func (t *Server) Addr() netip.AddrPort { return t.addr }

// TLSAddr returns the TLS address, or the zero value without TLS.
func (t *Server) TLSAddr() netip.AddrPort { return t.tlsAddr }

// Stats returns the relay's counters.
func (t *Server) Stats() Stats {
	allocs, held := t.alloc.count()
	return Stats{
		Allocations: allocs, Reserved: held, Malformed: t.stats.malformed.Load(),
		PeerRefused: t.stats.peerRefused.Load(), BandwidthDropped: t.stats.bandwidthDropped.Load(),
		QuotaRefused: t.stats.quotaRefused.Load(), AuthFailed: t.stats.authFailed.Load(),
		RequestRefused: t.stats.requestRefused.Load(),
	}
}

// SetUsers replaces the static credentials (Config.Users) of the running
// relay, as a configuration reload does: a user no longer listed loses its
// allocations at once, a changed password applies from the next request.
// Invalid pairs leave the running credentials as they are.
func (t *Server) SetUsers(users []string) error {
	static, err := parseStaticUsers(users, t.cfg.Realm)
	if err != nil {
		return fmt.Errorf("turn: %w", err)
	}
	t.creds.static.Store(&static)
	t.alloc.mu.Lock()
	var victims []*relayConn
	for _, rc := range t.alloc.live {
		if _, ok := static[rc.name]; rc.kind == CredentialStatic && !ok {
			victims = append(victims, rc)
		}
	}
	t.alloc.mu.Unlock()
	for _, rc := range victims {
		rc.end(EndRevoked)
	}
	return nil
}

// SetAllowPeers replaces Config.AllowPeers of the running relay: new
// permissions follow the new list at once, and so does every datagram, so a
// peer taken off the list receives nothing more through existing
// permissions either.
func (t *Server) SetAllowPeers(allow []netip.Prefix) { t.policy.SetAllow(allow) }

// Shutdown stops the listeners, closes every client connection (letting
// the frames already queued for it go out for up to a second) and every
// allocation (each emits its event with reason EndShutdown): a relayed call
// cannot be drained. Then it waits for every goroutine reading a socket,
// pion's included, to return, or for ctx to end: then it returns an error
// wrapping ctx.Err(), the goroutines having been told to stop. Calling it
// again waits for the same stop.
func (t *Server) Shutdown(ctx context.Context) error {
	first, err := t.stop()
	if werr := workgroup.WaitContext(ctx, t.readers.Wait); werr != nil {
		err = errors.Join(err, werr)
	}
	if first {
		st := t.Stats()
		t.log.Info().Uint64("malformed", st.Malformed).Uint64("peer_refused", st.PeerRefused).
			Uint64("quota_refused", st.QuotaRefused).Uint64("auth_failed", st.AuthFailed).
			Uint64("request_refused", st.RequestRefused).Msg("turn stopped")
	}
	if err != nil {
		return fmt.Errorf("turn shutdown: %w", err)
	}
	return nil
}

// stop closes the sockets, connections and allocations, which makes every
// reader return; it reports whether this call did it.
func (t *Server) stop() (first bool, err error) {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return false, nil
	}
	t.closed = true
	conns := make([]*streamFilter, 0, len(t.conns))
	for c := range t.conns {
		conns = append(conns, c)
	}
	t.mu.Unlock()
	err = t.srv.Close()
	var closing sync.WaitGroup // each waits up to a second for its queued frames
	for _, c := range conns {
		closing.Go(func() { c.Close() })
	}
	closing.Wait()
	t.alloc.closeAll()
	return true, err
}

func (t *Server) isClosed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.closed
}

// TCPConnStats and TLSConnStats return the client connections held now
// over TCP and over TLS, and those refused over a cap.
func (t *Server) TCPConnStats() connlimit.Stats { return t.tcpConns.Stats() }

// TLSConnStats: see TCPConnStats.
func (t *Server) TLSConnStats() connlimit.Stats { return t.tlsConns.Stats() }

// trackConn registers a client connection; false when closed.
func (t *Server) trackConn(s *streamFilter) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.conns[s] = struct{}{}
	t.readers.Add(1)
	return true
}

func (t *Server) untrackConn(s *streamFilter) {
	t.mu.Lock()
	delete(t.conns, s)
	t.mu.Unlock()
}

// permit is pion's PermissionHandler (CreatePermission, ChannelBind, Connect).
// Its refusals are counted as their answers leave (observeAnswer).
func (t *Server) permit(_ net.Addr, peer net.IP) bool {
	a, ok := netip.AddrFromSlice(peer)
	return ok && t.policy.CheckIP(a).OK()
}

// authenticate is pion's AuthHandler. It is called once the nonce is
// fresh, so a refusal here is a refusal of the credentials. The realm may
// carry the filter's mark (reserve.go).
func (t *Server) authenticate(ra *turn.RequestAttributes) (string, []byte, bool) {
	realm, _ := t.marks.split(ra.Realm)
	userID, key, err := t.creds.lookup(ra.Username, realm)
	if err != nil {
		t.notes.note(netaddr.AddrPort(ra.SrcAddr), err)
		return "", nil, false
	}
	return userID, key, true
}

// onAuth is pion's report of each credential check; a false verdict means
// the key authenticate returned did not verify MESSAGE-INTEGRITY: a wrong
// password.
func (t *Server) onAuth(src, _ net.Addr, _, _, _, _ string, verdict bool) {
	if !verdict {
		t.notes.note(netaddr.AddrPort(src), errWrongPassword)
	}
}

func (t *Server) onAllocationCreated(src, dst net.Addr, _, _, _ string, relayAddr net.Addr, _ int) {
	rc := t.alloc.byRelay(relayAddr)
	if rc == nil {
		return
	}
	transport := "udp"
	if _, ok := dst.(*net.TCPAddr); ok {
		transport = "tcp"
		if t.tlsAddr.IsValid() && netaddr.AddrPort(dst).Port() == t.tlsAddr.Port() {
			transport = "tls"
		}
	}
	rc.created(netaddr.AddrPort(src), transport)
}

// deviceChanged is the store observer: a device that is deleted or switched
// off loses its allocations, as do allocations made with an old token.
func (t *Server) deviceChanged(c store.Change) {
	if t.isClosed() {
		return
	}
	d := c.Device
	switch {
	case c.Kind == store.Deleted || !d.Link:
		t.alloc.revokeDevice(d.Name, "", true)
	default:
		t.alloc.revokeDevice(d.Name, deviceUserID(d), false)
	}
}

func (t *Server) emit(ev connlog.Event) {
	if t.cfg.Events != nil {
		t.cfg.Events(ev)
		return
	}
	t.log.Info().Time("start", ev.Start).Time("end", ev.Time).Str("device", ev.Device).Str("detail", ev.Detail).
		Str("client", ev.Client.String()).Int("peers", ev.Peers).
		Int64("bytes_from_client", ev.BytesIn).Int64("bytes_to_client", ev.BytesOut).Msg("turn allocation")
}

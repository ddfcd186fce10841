// Package dnsserver is the authoritative DNS server for the device zone: it
// answers SOA, NS and CAA at the apex, A/AAAA for devices and their ACME
// challenge TXT straight from a read-only view of the store, over UDP and
// TCP, keeps secondaries in step with zone transfers and NOTIFY (xfr.go,
// notify.go, tsig.go), and takes each device's dynamic updates signed with
// its own key (update.go). UDP answers, whose client address is not proven,
// are rate-limited per client network (rrl.go) and never more than 3 times
// their query (amplification.go).
package dnsserver

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"iter"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/internal/connlimit"
	"github.com/nasreach/nasreach/internal/listen"
	"github.com/nasreach/nasreach/internal/netaddr"
	"github.com/nasreach/nasreach/store"
	"github.com/rs/zerolog"
)

// Source is the read side of the store that the server answers from.
type Source interface {
	// Lookup returns the addresses of a resolvable device (lower-case label).
	Lookup(name string) (store.Record, bool)
	// Serial returns the zone's SOA serial.
	Serial() uint32
	// ZoneSnapshot calls f with the serial and the resolvable devices of
	// one committed state (zone transfers).
	ZoneSnapshot(f func(serial uint32, devices iter.Seq2[string, store.Record]) error) error
}

// NameServer is one NS record of the zone. Addrs are served as glue when the
// name is inside the zone.
type NameServer struct {
	Name  string
	Addrs []netip.Addr
}

// Defaults used when the Config leaves a field zero.
const (
	DefaultZone    = "myqnapcloud.com"
	DefaultTTL     = 60
	DefaultSOATTL  = 3600
	DefaultUDPSize = 1232 // the DNS flag day 2020 size: no IP fragmentation
	DefaultRcvBuf  = 4 << 20
	// maxTTL bounds the TTL of device answers: a week, as long as any
	// resolver keeps a record.
	maxTTL = 7 * 24 * time.Hour
	// tcpReadTimeout bounds the arrival of a TCP connection's first query
	// and tcpIdleTimeout each later one (each whole, not each byte), so
	// that a client sending a byte a second is cut off.
	tcpReadTimeout  = 2 * time.Second
	tcpIdleTimeout  = 10 * time.Second
	maxQuerySize    = 4096
	defaultNSSuffix = "ns1"
)

// Config configures New.
type Config struct {
	// Addr is the UDP and TCP listen address, e.g. "127.0.0.1:10053". Port 0
	// picks a free port, the same for both transports. Required unless
	// PacketConn and Listener are set.
	Addr string
	// PacketConn and Listener, when both are set, are served instead of
	// binding Addr (systemd socket activation, tests). The server owns them
	// from New on and closes them at Shutdown, or when New fails. A given
	// PacketConn is the one UDP socket: UDPSockets does not apply.
	PacketConn net.PacketConn
	Listener   net.Listener
	// NoFastPath turns the UDP fast path (fastpath.go) off: miekg/dns then
	// reads the socket and answers every packet. The fast path is on by
	// default where the system has recvmmsg and sendmmsg (Linux) and the
	// socket is a *net.UDPConn.
	NoFastPath bool
	// UDPSockets is the number of UDP sockets bound to Addr with
	// SO_REUSEPORT, each read by its own fast-path reader, so that the
	// kernel spreads clients over the cores; default GOMAXPROCS. Without
	// the fast path there is one.
	UDPSockets int
	// Zone is the zone served; default DefaultZone.
	Zone string
	// NameServers are the zone's NS records. A name without a dot is taken as a
	// label inside the zone. Default: ns1.<zone> with glue 127.0.0.1.
	NameServers []NameServer
	// Hostmaster is the SOA RNAME; default hostmaster.<zone>.
	Hostmaster string
	// CAA are the apex's CAA records (RFC 8659), each FLAGS TAG "VALUE",
	// e.g. `0 issue "letsencrypt.org"`; devices inherit them. None: no CAA,
	// any CA may issue.
	CAA []string
	// TTL is the TTL of device answers (and the negative-caching TTL); default 60s.
	TTL time.Duration
	// UDPSize caps the UDP response size whatever the client advertises; default 1232.
	UDPSize uint16
	// ExactNamesOnly makes names below a device (www.nas1.<zone>) NXDOMAIN
	// instead of answering with the device's addresses.
	ExactNamesOnly bool
	// ReceiveBuffer is the UDP socket receive buffer in bytes; default 4 MiB.
	ReceiveBuffer int
	// TCPConns caps the TCP connections held at once, in total and per
	// source network; zero fields take connlimit's defaults. A connection
	// over a cap is closed before it is read.
	TCPConns connlimit.Config
	// Source is the device table. Required.
	Source Source
	// Logger receives server events (never per-query lines).
	Logger zerolog.Logger
	// OnQuery, if set, is told about every answered query (query logging,
	// off unless the operator asks for it). It runs on the hot path and
	// must not block.
	OnQuery func(Query)
	// Transfer says who may transfer the zone and who gets NOTIFYs, and
	// holds every TSIG key, the devices' included.
	Transfer TransferConfig
	// Update turns on dynamic update (RFC 2136) by the devices; the zero
	// value leaves it off.
	Update UpdateConfig
	// RRL is response rate limiting of UDP answers (rrl.go); the zero value
	// is off.
	RRL RRL
	// LinkRelays, when set, returns the advertised relay addresses of the
	// node holding a device's Link agent (none: not online), for the
	// steering names of a cluster (link.go). It runs on the hot path and
	// must not block. Nil: those names are ordinary names below a device.
	LinkRelays func(device string) []netip.AddrPort
}

// Query describes one answered query for OnQuery. It is passed by value
// and holds no pointer into the server, so that the fast path tells about
// a query without allocating.
type Query struct {
	Remote netip.AddrPort // the client's address and port, unmapped
	Type   uint16
	Rcode  int
	TCP    bool
	name   string // the question's name (ServeDNS), or
	wire   struct {
		b [256]byte // that name copied by the fast path
		n uint8
	}
}

// Client returns the client's address.
func (q Query) Client() netip.Addr { return q.Remote.Addr() }

// Name returns the question's name in presentation form, as the client
// wrote it. The fast path's queries make it a new string on each call:
// call it only when it is needed (query logging).
func (q Query) Name() string {
	if q.wire.n > 0 {
		return string(q.wire.b[:q.wire.n])
	}
	return q.name
}

// Server is a running authoritative DNS server.
type Server struct {
	zone       string
	ns         []NameServer
	glue       map[string][]netip.Addr // in-zone nameserver label → its addresses
	hostmaster string
	caa        []*dns.CAA
	ttl        atomic.Uint32 // device TTL and negative-caching TTL; SetTTL changes it live
	soaTTL     uint32
	udpSize    uint16
	linkRelays func(device string) []netip.AddrPort // Config.LinkRelays
	exact      atomic.Bool                          // names below a device are NXDOMAIN; SetExactNamesOnly changes it live
	rcvBuf     int
	fast       *fastZone // nil: the fast path is off
	udpSockets int
	src        Source
	log        zerolog.Logger
	onQuery    func(Query)
	updates    Editor // nil: UPDATE is not implemented
	onUpdate   func(UpdateEvent)
	rrl        *limiter
	addr       string
	tcpConns   *connlimit.Limiter

	mu       sync.Mutex
	udp, tcp *dns.Server
	readers  []*fastReader // the fast path's, one per UDP socket
	stopping bool          // Shutdown has been called
	stopped  chan struct{} // closed when both transports have returned
	bound    net.Addr

	transfers // zone transfers and NOTIFY (xfr.go)
}

// New validates cfg, binds UDP and TCP (or takes Config's sockets) and
// serves in the background until Shutdown.
func New(cfg Config) (*Server, error) {
	s, err := newServer(cfg)
	if err != nil {
		listen.CloseGiven(cfg.PacketConn, cfg.Listener)
		return nil, err
	}
	pcs, ln := []net.PacketConn{cfg.PacketConn}, cfg.Listener
	if cfg.PacketConn == nil {
		copies := 1
		if s.fast != nil && listen.ReusePortSupported {
			copies = s.udpSockets
		}
		socks, err := listen.Bind(listen.Config{Addr: s.addr, UDPBuffer: s.rcvBuf, Copies: copies, OneTCP: true})
		if err != nil {
			return nil, fmt.Errorf("dns %w", err)
		}
		if socks.BufferShortfall != nil {
			s.log.Warn().Err(socks.BufferShortfall).Int("bytes", s.rcvBuf).Msg("cannot enlarge dns udp receive buffer; bursts may drop queries")
		}
		pcs, ln = socks.UDP, socks.TCP[0]
	}
	if err := s.serve(pcs, s.tcpConns.Listener(ln)); err != nil {
		return nil, err
	}
	s.startNotifiers()
	return s, nil
}

// Validate checks the settings in cfg (zone, nameservers, TTL, CAA, UDP size),
// not its sockets or Source, and returns every problem at once, worded for
// the operator. New calls it; a daemon calls it before it touches the disk.
func (cfg Config) Validate() error {
	var errs []error
	zone := dns.Fqdn(strings.ToLower(cmpOr(cfg.Zone, DefaultZone)))
	zoneOK := isDomainName(zone) && zone != "."
	if !zoneOK {
		errs = append(errs, fmt.Errorf("zone %q is not a domain name", cfg.Zone))
	}
	if cfg.TTL < 0 || cfg.TTL > maxTTL {
		errs = append(errs, fmt.Errorf("TTL %s out of range (0 to 7 days)", cfg.TTL))
	}
	if _, err := parseCAA(cfg.CAA); err != nil {
		errs = append(errs, err)
	}
	if cfg.UDPSockets < 0 {
		errs = append(errs, fmt.Errorf("UDP sockets %d is negative", cfg.UDPSockets))
	}
	if cfg.UDPSize != 0 && cfg.UDPSize < dns.MinMsgSize {
		errs = append(errs, fmt.Errorf("UDP payload size %d is below %d", cfg.UDPSize, dns.MinMsgSize))
	}
	for _, ns := range cfg.NameServers {
		name, inZone := nsName(ns.Name, zone)
		if !isDomainName(name) {
			errs = append(errs, fmt.Errorf("nameserver %q is not a domain name", ns.Name))
			continue
		}
		if slices.ContainsFunc(ns.Addrs, func(a netip.Addr) bool { return !a.IsValid() }) {
			errs = append(errs, fmt.Errorf("nameserver %s has an empty address", name))
		}
		if zoneOK && inZone && len(ns.Addrs) == 0 {
			errs = append(errs, fmt.Errorf("nameserver %s is inside the zone and needs its address for glue (%s=IP)", name, ns.Name))
		}
	}
	if err := cfg.Transfer.validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// isDomainName reports whether name is a presentation-format domain name
// with no empty label ("a..b" is refused, as by every zone file parser).
func isDomainName(name string) bool {
	_, ok := dns.IsDomainName(name)
	return ok && !strings.Contains(name, "..")
}

// nsName is a nameserver's FQDN: a single label is taken as in the zone.
// inZone says whether the name is below the zone (and so needs glue).
func nsName(name, zone string) (fqdn string, inZone bool) {
	fqdn = strings.ToLower(name)
	if !strings.Contains(strings.TrimSuffix(fqdn, "."), ".") {
		fqdn += "." + zone
	}
	fqdn = dns.Fqdn(fqdn)
	return fqdn, dns.IsSubDomain(zone, fqdn) && fqdn != zone
}

// newServer validates cfg.
func newServer(cfg Config) (*Server, error) {
	if cfg.Source == nil {
		return nil, errors.New("dnsserver: Config.Source is required")
	}
	if (cfg.PacketConn == nil) != (cfg.Listener == nil) {
		return nil, errors.New("dnsserver: Config.PacketConn and Config.Listener go together")
	}
	if cfg.Addr == "" && cfg.PacketConn == nil {
		return nil, errors.New("dnsserver: Config.Addr is required")
	}
	if err := errors.Join(cfg.Validate(), cfg.RRL.Validate()); err != nil {
		return nil, fmt.Errorf("dnsserver: %w", err)
	}
	zone := dns.Fqdn(strings.ToLower(cmpOr(cfg.Zone, DefaultZone)))
	s := &Server{
		zone:       zone,
		hostmaster: dns.Fqdn(strings.ToLower(cmpOr(cfg.Hostmaster, "hostmaster."+zone))),
		soaTTL:     DefaultSOATTL,
		udpSize:    cmp.Or(cfg.UDPSize, DefaultUDPSize),
		rcvBuf:     cmp.Or(cfg.ReceiveBuffer, DefaultRcvBuf),
		src:        cfg.Source,
		linkRelays: cfg.LinkRelays,
		onQuery:    cfg.OnQuery,
		updates:    cfg.Update.Store,
		onUpdate:   cfg.Update.OnUpdate,
		log:        cfg.Logger,
		addr:       cfg.Addr,
		glue:       map[string][]netip.Addr{},
		tcpConns:   connlimit.New(cfg.TCPConns),
	}
	s.udpSockets = cmp.Or(cfg.UDPSockets, runtime.GOMAXPROCS(0))
	s.initTransfers(cfg.Transfer, cfg.Source.Serial())
	s.rrl = newLimiter(cfg.RRL, time.Now(), func(dropped, slipped uint64) {
		s.log.Info().Uint64("dropped_total", dropped).Uint64("slipped_total", slipped).Msg("dns rate limiting udp answers")
	})
	s.SetTTL(cfg.TTL) //nolint:errcheck // Validate checked the range
	s.exact.Store(cfg.ExactNamesOnly)
	s.caa, _ = parseCAA(cfg.CAA) // Validate checked them
	nss := cfg.NameServers
	if len(nss) == 0 {
		nss = []NameServer{{Name: defaultNSSuffix, Addrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}}
	}
	for _, ns := range nss {
		name, inZone := nsName(ns.Name, zone)
		var addrs []netip.Addr
		for _, a := range ns.Addrs {
			addrs = append(addrs, a.Unmap()) // ::ffff:192.0.2.1 is glue A 192.0.2.1
		}
		if inZone {
			s.glue[name[:len(name)-len(zone)-1]] = addrs
			s.ns = append(s.ns, NameServer{Name: name, Addrs: addrs})
		} else {
			s.ns = append(s.ns, NameServer{Name: name}) // out-of-zone: no glue
		}
	}
	if !cfg.NoFastPath && fastPathSupported {
		s.fast = newFastZone(s.zone, s.ns[0].Name, s.hostmaster)
	}
	return s, nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// SetTTL sets the TTL of device answers and of negative answers; the next
// answer uses it. Zero means DefaultTTL. A changed TTL reaches secondaries
// with the next change to the zone, by a full transfer.
func (s *Server) SetTTL(ttl time.Duration) error {
	if ttl < 0 || ttl > maxTTL {
		return fmt.Errorf("TTL %s out of range (0 to 7 days)", ttl)
	}
	if ttl == 0 {
		ttl = DefaultTTL * time.Second
	}
	if old := s.ttl.Swap(uint32(ttl / time.Second)); old != 0 && old != uint32(ttl/time.Second) {
		s.journal.reset() // every record's TTL changed: no IXFR from before describes it
	}
	return nil
}

// SetExactNamesOnly switches whether names below a device answer as the
// device (false) or NXDOMAIN (true), from the next answer on.
func (s *Server) SetExactNamesOnly(exact bool) { s.exact.Store(exact) }

// Zone returns the served zone as a lower-case FQDN.
func (s *Server) Zone() string { return s.zone }

// serve serves on pcs (UDP sockets on one port) and ln, which it owns: it
// closes them at Shutdown, or before it returns an error. With the fast
// path each UDP socket gets a reader of its own, and miekg/dns reads what
// they hand over; without, miekg/dns reads pcs[0], the only one.
func (s *Server) serve(pcs []net.PacketConn, ln net.Listener) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	pc := pcs[0]
	closeAll := func() {
		for _, c := range pcs {
			c.Close()
		}
		ln.Close()
	}
	var readers []*fastReader
	if s.fast != nil {
		h := newHandover(pc.LocalAddr())
		for _, c := range pcs {
			conn, ok := c.(*net.UDPConn)
			if !ok {
				readers = nil
				break
			}
			r, err := newFastReader(s, conn, h)
			if err != nil {
				closeAll()
				return fmt.Errorf("dns fast path on %s: %w", c.LocalAddr(), err)
			}
			readers = append(readers, r)
		}
		if readers != nil {
			pc = h
		}
	}
	h := dns.HandlerFunc(s.ServeDNS)
	tsig := tsigProvider{currentKeys{s}}
	udp := &dns.Server{PacketConn: pc, Handler: h, MsgAcceptFunc: s.accept, UDPSize: maxQuerySize, TsigProvider: tsig}
	tcp := &dns.Server{Listener: writeDeadlineListener{ln, xfrWriteTimeout}, Handler: h, MsgAcceptFunc: s.accept,
		ReadTimeout: tcpReadTimeout, IdleTimeout: func() time.Duration { return tcpIdleTimeout }, TsigProvider: tsig}
	var running sync.WaitGroup
	// One transport after the other, so that a failure leaves nothing running.
	for _, srv := range []*dns.Server{udp, tcp} {
		started, exited := make(chan struct{}), make(chan error, 1)
		srv.NotifyStartedFunc = func() { close(started) }
		running.Add(1)
		go func() {
			defer running.Done()
			err := srv.ActivateAndServe()
			if err != nil {
				s.log.Error().Err(err).Msg("dns transport stopped")
			}
			exited <- err
		}()
		select {
		case <-started:
		case err := <-exited:
			_ = udp.Shutdown() // "not started" when UDP is the one that failed
			pc.Close()
			closeAll()
			running.Wait()
			return fmt.Errorf("dns server on %s: %w", pc.LocalAddr(), err)
		}
	}
	for _, r := range readers {
		running.Add(1)
		go func() {
			defer running.Done()
			defer r.conn.Close()
			r.run()
		}()
	}
	s.udp, s.tcp, s.bound, s.readers = udp, tcp, pc.LocalAddr(), readers
	stopped := make(chan struct{})
	s.stopped = stopped
	go func() {
		running.Wait()
		close(stopped)
	}()
	s.log.Info().Str("addr", s.bound.String()).Str("zone", s.zone).Int("udp_fast_path_sockets", len(readers)).Msg("dns listening (udp, tcp)")
	return nil
}

// acceptQuery is the first check of every packet, on its header alone:
// responses get no reply (answering them invites reflection loops), opcodes
// other than QUERY get NOTIMP (UPDATE too, unless accept admits it) and
// anything but exactly one question FORMERR.
func acceptQuery(dh dns.Header) dns.MsgAcceptAction {
	if dh.Bits&(1<<15) != 0 {
		return dns.MsgIgnore
	}
	if opcode := int(dh.Bits>>11) & 0xF; opcode != dns.OpcodeQuery {
		return dns.MsgRejectNotImplemented
	}
	if dh.Qdcount != 1 {
		return dns.MsgReject
	}
	return dns.MsgAccept
}

// Addr returns the bound address (UDP and TCP share the port).
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bound
}

// TCPConnStats returns the TCP connections held now and those refused over
// a cap.
func (s *Server) TCPConnStats() connlimit.Stats { return s.tcpConns.Stats() }

// Shutdown stops both transports, waiting for in-flight queries up to ctx's
// deadline, and closes the sockets. Calling it again waits for the same stop.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	udp, tcp, stopped, first := s.udp, s.tcp, s.stopped, !s.stopping
	s.stopping = true
	s.mu.Unlock()
	var err error
	if first {
		for _, r := range s.readers {
			r.stop() // each closes its socket as it returns
		}
		err = errors.Join(s.stopTransfers(ctx), udp.ShutdownContext(ctx), tcp.ShutdownContext(ctx))
	}
	select {
	case <-stopped:
	case <-ctx.Done():
		err = errors.Join(err, ctx.Err())
	}
	if err != nil {
		return fmt.Errorf("dns shutdown: %w", err)
	}
	return nil
}

// ServeDNS answers one query or update; it is the dns.Handler of both
// transports.
func (s *Server) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	if r.Opcode == dns.OpcodeUpdate && s.updates != nil {
		s.serveUpdate(w, r)
		return
	}
	if s.serveSpecial(w, r) {
		return
	}
	m, size := s.answer(r)
	_, tcp := w.LocalAddr().(*net.TCPAddr)
	if tcp {
		size = dns.MaxMsgSize
	} else if m = s.limit(w.RemoteAddr(), r, m); m == nil {
		return // dropped by rate limiting
	}
	fit(r, m, size, tcp)
	if err := w.WriteMsg(m); err != nil {
		s.log.Debug().Err(err).Msg("dns write failed")
	}
	if s.onQuery != nil && len(r.Question) == 1 {
		s.onQuery(Query{Remote: netaddr.AddrPort(w.RemoteAddr()), name: r.Question[0].Name, Type: r.Question[0].Qtype, Rcode: m.Rcode, TCP: tcp})
	}
}

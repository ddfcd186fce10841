// Package daemon is a running nasreach: it opens the store and starts the
// DNS server, the HTTP API, metrics, STUN/TURN and the Link relay from one
// Config, stops them in reverse order, applies a reloaded Config to what can
// change live, and talks to systemd. cmd/nasreach only builds the Config and
// handles signals.
package daemon

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/api"
	"github.com/nasreach/nasreach/connlog"
	"github.com/nasreach/nasreach/dnsserver"
	"github.com/nasreach/nasreach/internal/netaddr"
	"github.com/nasreach/nasreach/linkserver"
	"github.com/nasreach/nasreach/metrics"
	"github.com/nasreach/nasreach/sdnotify"
	"github.com/nasreach/nasreach/store"
	"github.com/nasreach/nasreach/turnserver"
	"github.com/rs/zerolog"
)

// ShutdownTimeout bounds how long Run waits for in-flight work when it stops.
const ShutdownTimeout = 10 * time.Second

// Daemon is a running nasreach.
type Daemon struct {
	log     zerolog.Logger
	store   store.Backend
	connlog *connlog.Log
	metrics *metrics.Metrics
	dns     *dnsserver.Server
	api     *api.API
	relays  *relays // STUN/TURN and Link; each part nil when not configured
	// presence is a cluster node's Link presence (cluster.go), nil until
	// the relay starts and on a node on its own; DNS reads it.
	presence atomic.Pointer[store.Presence]
	caps     connCaps
	// stops are the components in start order; Shutdown stops them in
	// reverse.
	stops []stopper

	mu  sync.Mutex // serialises Reload
	cfg Config     // the running configuration, as far as applied

	logQuery  atomic.Bool // --log-queries, changed live by Reload
	ready     atomic.Bool
	token     string
	tokenFile string // empty when the token came from the configuration

	sd       sdnotify.Notifier
	stopOnce sync.Once
	stopErr  error
}

// stopper is one component to stop at shutdown.
type stopper struct {
	name string
	stop func(context.Context) error
}

// New validates cfg, then opens the store and binds every listener; when it
// returns without error the daemon is serving. On error whatever had
// started is stopped again; a configuration Validate refuses touches
// nothing.
func New(cfg Config) (_ *Daemon, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	d := &Daemon{log: cfg.Logger, cfg: cfg}
	d.logQuery.Store(cfg.Privacy.LogQueries)
	defer func() {
		if err != nil {
			d.Shutdown(context.Background()) //nolint:errcheck // the start error is the one to report
		}
	}()
	if d.token, d.tokenFile, err = ensureAdminToken(cfg.DataDir, cfg.AdminToken); err != nil {
		return nil, err
	}
	opening := time.Now()
	if d.store, err = openStore(cfg, store.Config{
		Dir: cfg.DataDir, Reserved: append(cfg.Reserved, nameServerLabels(cfg.NameServers)...), Now: cfg.Now,
		Quarantine: cfg.Privacy.Quarantine, UninitializedTTL: cfg.Privacy.UninitializedTTL,
		FullCheck: cfg.StoreCheck, Logger: d.component("store"),
	}); err != nil {
		return nil, err
	}
	// Loading the store (a million devices are half a gigabyte of JSON)
	// leaves the heap several times the size of what it built, and an
	// idle daemon would collect it only much later: give it back before
	// serving (a collection of the index is quick: it holds few pointers).
	debug.FreeOSMemory()
	d.log.Info().Int("devices", d.store.Len()).Dur("took", time.Since(opening)).Msg("store open, device index loaded")
	d.onStop("store", func(context.Context) error { return d.store.Close() })
	if d.connlog, err = openConnLog(cfg, d.component("connlog")); err != nil {
		return nil, err
	}
	d.onStop("connection log", func(context.Context) error { return d.connlog.Close() })
	d.caps = sizeConnCaps(cmp.Or(cfg.FileLimit, processFileLimit()), cfg)
	d.logConnCaps()
	// The gauges read the relays at scrape time; they report zero until
	// the daemon is ready, which orders their reads after start-up.
	if d.metrics, err = metrics.New(metrics.Config{
		Addr: cmp.Or(cfg.MetricsAddr, "127.0.0.1:0"), Version: cfg.Version,
		Devices: d.store.Len, StoreBytes: d.store.Size, StoreBackend: cfg.Store.Backend, StoreCluster: d.storeCluster(), Online: d.linkAgents,
		Sessions:    map[string]func() int{"link": d.linkSessions, "turn": d.turnAllocations},
		LinkConns:   d.linkCarriers,
		LinkCluster: d.linkClusterMetrics(cfg),
		TURNRefused: d.turnRefused,
		DNSLimited:  map[string]func() uint64{"dropped": d.dnsDropped, "slipped": d.dnsSlipped},
		LogWritten:  d.connlog.Written, LogDropped: d.connlog.Dropped,
		Ready: d.Ready, ConnsRefused: d.connsRefused, Listeners: d.listeners, Logger: d.component("metrics"),
	}); err != nil {
		return nil, err
	}
	d.onStop("metrics", d.metrics.Shutdown)
	if d.dns, err = dnsserver.New(dnsserver.Config{
		Addr: cfg.DNSAddr, Zone: cfg.Zone, NameServers: cfg.NameServers, TTL: cfg.TTL,
		ExactNamesOnly: cfg.ExactNames, NoFastPath: cfg.NoDNSFastPath, CAA: cfg.CAA, RRL: cfg.RRL.dns(), Source: d.store, OnQuery: d.observeQuery,
		TCPConns: d.caps.dns, Transfer: d.transferConfig(cfg.Transfer), Logger: d.component("dns"),
		Update:     dnsserver.UpdateConfig{Store: d.store, OnUpdate: d.observeUpdate},
		LinkRelays: d.steering(cfg),
	}); err != nil {
		return nil, err
	}
	d.onStop("dns", d.dns.Shutdown)
	d.store.OnChange(d.dns.ZoneChanged) // IXFR history and NOTIFYs
	if r, ok := d.store.(interface{ OnReload(func()) }); ok {
		r.OnReload(d.dns.ZoneReloaded) // etcd: a reload skipped changes the history cannot hold
	}
	local, err := listenLocal(cfg.DataDir, d.component("api"))
	if err != nil {
		return nil, err
	}
	if d.api, err = api.New(api.Config{
		Addr: cfg.HTTPAddr, LocalListener: local, Store: d.store, Zone: cfg.Zone, AdminToken: d.token, OpenRegistration: cfg.OpenRegistration,
		TrustedProxies: cfg.TrustedProxies, Now: cfg.Now, Events: d,
		Conns: d.caps.http, Logger: d.component("api"),
	}); err != nil {
		return nil, err
	}
	d.onStop("http api", d.api.Shutdown)
	if err = d.startRelays(cfg); err != nil {
		return nil, err
	}
	d.ready.Store(true)
	return d, nil
}

// component is the logger of one component.
func (d *Daemon) component(name string) zerolog.Logger {
	return d.log.With().Str("component", name).Logger()
}

func (d *Daemon) onStop(name string, stop func(context.Context) error) {
	d.stops = append(d.stops, stopper{name, stop})
}

// nameServerLabels are the in-zone nameserver labels, which no device may
// register.
func nameServerLabels(nss []dnsserver.NameServer) []string {
	var labels []string
	for _, ns := range nss {
		if !strings.Contains(strings.TrimSuffix(ns.Name, "."), ".") {
			labels = append(labels, strings.ToLower(ns.Name))
		}
	}
	return labels
}

// Addrs are the bound addresses of a running daemon; a relay that is not
// running has the zero value.
type Addrs struct {
	DNS, HTTP, Metrics netip.AddrPort
	// STUN is the STUN (and TURN) address, UDP and TCP; TURNS TURN over TLS.
	STUN, TURNS netip.AddrPort
	// Link is the Link relay's UDP address, LinkTCP its TCP one.
	Link, LinkTCP netip.AddrPort
	// Socket is the local operator's socket, or "" without one.
	Socket string
}

// Addrs returns where the daemon listens.
func (d *Daemon) Addrs() Addrs {
	a := Addrs{
		DNS: netaddr.AddrPort(d.dns.Addr()), HTTP: d.api.Addr(), Metrics: netaddr.AddrPort(d.metrics.Addr()),
	}
	if ln := d.api.LocalAddr(); ln != nil {
		a.Socket = ln.String()
	}
	if r := d.relays; r != nil {
		a.STUN, a.TURNS = r.stunAddr, r.turnsAddr
		if r.link != nil {
			a.Link, a.LinkTCP = r.link.Addr(), r.link.TCPAddr()
		}
	}
	return a
}

// listeners are the daemon's addresses as the status page lists them; none
// until the daemon is ready (Addrs reads what New sets up).
func (d *Daemon) listeners() []metrics.Listener {
	if !d.ready.Load() {
		return nil
	}
	a := d.Addrs()
	ls := []metrics.Listener{
		{Name: "DNS (UDP, TCP)", Addr: a.DNS.String()},
		{Name: "HTTP API", Addr: a.HTTP.String()},
		{Name: "metrics and this page", Addr: a.Metrics.String()},
	}
	if a.Socket != "" {
		ls = append(ls, metrics.Listener{Name: "HTTP API for the local operator", Addr: a.Socket})
	}
	if a.STUN.IsValid() {
		name := "STUN (UDP, TCP)"
		if d.relays.turn != nil {
			name = "STUN and TURN (UDP, TCP)"
		}
		ls = append(ls, metrics.Listener{Name: name, Addr: a.STUN.String()})
	}
	if a.TURNS.IsValid() {
		ls = append(ls, metrics.Listener{Name: "TURN over TLS", Addr: a.TURNS.String()})
	}
	if a.Link.IsValid() {
		ls = append(ls, metrics.Listener{Name: "Link relay (QUIC)", Addr: a.Link.String()})
	}
	if a.LinkTCP.IsValid() {
		ls = append(ls, metrics.Listener{Name: "Link relay (TLS over TCP, where UDP is blocked)", Addr: a.LinkTCP.String()})
	}
	return ls
}

// AdminTokenValue returns the admin token in force: the configured one, or
// the one read from or written to <DataDir>/admin.token.
func (d *Daemon) AdminTokenValue() string { return d.token }

// Store returns the device table (for tests and the daemon's own tools).
func (d *Daemon) Store() store.Backend { return d.store }

// LinkRelay returns the running Link relay, or nil.
func (d *Daemon) LinkRelay() *linkserver.Server { return d.relays.link }

// TURNRelay returns the running TURN relay, or nil.
func (d *Daemon) TURNRelay() *turnserver.Server { return d.relays.turn }

// Config returns the running configuration: the one New started with and
// what Reload has applied since.
func (d *Daemon) Config() Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg
}

// LinkFingerprint is the fingerprint agents and clients pin with
// --relay-fingerprint, or "" without a Link relay.
func (d *Daemon) LinkFingerprint() string {
	if d.relays == nil {
		return ""
	}
	return d.relays.linkFingerprint
}

// Ready reports whether every listener is bound and the store answers; the
// error says why not. /readyz serves it.
func (d *Daemon) Ready() error {
	if !d.ready.Load() {
		return errors.New("starting or stopping")
	}
	return d.store.Ping()
}

// Run tells systemd the daemon is ready, feeds its watchdog while the DNS
// port answers, and returns when ctx ends or the HTTP API stops serving; it
// then shuts the daemon down, telling systemd so.
func (d *Daemon) Run(ctx context.Context, sd sdnotify.Notifier) error {
	d.sd = sd
	a := d.Addrs()
	ev := d.log.Info().Str("zone", strings.TrimSuffix(d.cfg.Zone, ".")).Str("dns", a.DNS.String()).
		Str("http", a.HTTP.String()).Str("metrics", a.Metrics.String()).Str("data", d.cfg.DataDir).Int("devices", d.store.Len())
	if a.STUN.IsValid() {
		ev = ev.Str("stun", a.STUN.String()).Bool("turn", d.relays.turn != nil)
	}
	if a.TURNS.IsValid() {
		ev = ev.Str("turns", a.TURNS.String())
	}
	if a.Link.IsValid() {
		ev = ev.Str("link", a.Link.String())
	}
	if a.LinkTCP.IsValid() {
		ev = ev.Str("link_tcp", a.LinkTCP.String())
	}
	if d.tokenFile != "" {
		ev = ev.Str("admin_token_file", d.tokenFile)
	}
	ev.Msg("nasreach ready")
	if err := sd.Notify(ctx, sdnotify.Ready, sdnotify.Status(d.status())); err != nil {
		d.log.Warn().Err(err).Msg("cannot tell systemd the daemon is ready")
	}
	watchdogCtx, stopWatchdog := context.WithCancel(ctx)
	watchdogDone := make(chan struct{})
	go func() {
		defer close(watchdogDone)
		sd.Watchdog(watchdogCtx, d.dnsAnswers, func(err error) { d.log.Warn().Err(err).Msg("systemd watchdog") })
	}()
	var runErr error
	select {
	case <-ctx.Done():
	case err := <-d.api.Done():
		runErr = fmt.Errorf("http api stopped: %w", err)
		d.log.Error().Err(err).Msg("http api stopped")
	}
	d.log.Info().Msg("shutting down")
	stopWatchdog() // no more pings, and STOPPING=1 while we drain
	<-watchdogDone
	if err := sd.Notify(context.Background(), sdnotify.Stopping, sdnotify.Status("shutting down")); err != nil {
		d.log.Warn().Err(err).Msg("cannot tell systemd the daemon is stopping")
	}
	sctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
	defer cancel()
	if err := d.Shutdown(sctx); err != nil {
		return errors.Join(runErr, fmt.Errorf("shutdown: %w", err))
	}
	d.log.Info().Msg("stopped")
	return runErr
}

// status is the one-line status systemd shows.
func (d *Daemon) status() string {
	a := d.Addrs()
	return fmt.Sprintf("serving %s: dns %s, http %s", strings.TrimSuffix(d.cfg.Zone, "."), a.DNS, a.HTTP)
}

// dnsAnswers is the watchdog's health check: the DNS port answers the
// zone's SOA.
func (d *Daemon) dnsAnswers(ctx context.Context) error {
	ap := d.Addrs().DNS
	if ap.Addr().IsUnspecified() { // bound to every address: ask over loopback
		ap = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), ap.Port())
	}
	q := new(dns.Msg).SetQuestion(dns.Fqdn(d.cfg.Zone), dns.TypeSOA)
	r, _, err := (&dns.Client{Net: "udp"}).ExchangeContext(ctx, q, ap.String())
	if err != nil {
		return fmt.Errorf("own dns port %s does not answer: %w", ap, err)
	}
	if r.Rcode != dns.RcodeSuccess {
		return fmt.Errorf("own dns port %s answers %s for the zone's SOA", ap, metrics.RcodeName(r.Rcode))
	}
	return nil
}

// Shutdown stops the daemon in reverse order of start: the relays (their
// sessions end and are logged), the API (in-flight requests finish), DNS,
// metrics, the connection log (flushed) and the store. It waits for every
// goroutine the components started; calling it again returns the first
// result.
func (d *Daemon) Shutdown(ctx context.Context) error {
	d.stopOnce.Do(func() {
		d.ready.Store(false)
		var errs []error
		for i := len(d.stops) - 1; i >= 0; i-- {
			if err := d.stops[i].stop(ctx); err != nil {
				errs = append(errs, fmt.Errorf("stop %s: %w", d.stops[i].name, err))
			}
		}
		d.stopErr = errors.Join(errs...)
	})
	return d.stopErr
}

package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/api"
	"github.com/nasreach/nasreach/connlog"
	"github.com/nasreach/nasreach/dnsserver"
	"github.com/nasreach/nasreach/linkserver"
	"github.com/nasreach/nasreach/metrics"
	"github.com/nasreach/nasreach/sdnotify"
	"github.com/nasreach/nasreach/store"
	"github.com/rs/zerolog"
	"github.com/urfave/cli/v3"
)

// Development defaults: everything on loopback, unprivileged ports.
const (
	defaultDNSAddr  = "127.0.0.1:10053"
	defaultHTTPAddr = "127.0.0.1:10080"
	defaultMetrics  = "127.0.0.1:10090"
	defaultDataDir  = "./data"
	adminTokenFile  = "admin.token"
	shutdownTimeout = 10 * time.Second
)

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "run the daemon (DNS, HTTP API, STUN/TURN, Link relay)",
		Flags: append([]cli.Flag{
			configFlag(),
			&cli.StringFlag{Name: "data", Value: defaultDataDir, Usage: "data directory (default $STATE_DIRECTORY under systemd)", Sources: cli.EnvVars("NASREACH_DATA", "STATE_DIRECTORY")},
			&cli.StringFlag{Name: "zone", Value: dnsserver.DefaultZone, Usage: "DNS zone the devices live in", Sources: cli.EnvVars("NASREACH_ZONE")},
			&cli.StringFlag{Name: "dns", Value: defaultDNSAddr, Usage: "DNS listen address (UDP and TCP)", Sources: cli.EnvVars("NASREACH_DNS")},
			&cli.StringFlag{Name: "http", Value: defaultHTTPAddr, Usage: "HTTP API listen address", Sources: cli.EnvVars("NASREACH_HTTP")},
			&cli.StringFlag{Name: "metrics", Value: defaultMetrics, Usage: "listen address of /metrics, /healthz and /readyz (keep it private)", Sources: cli.EnvVars("NASREACH_METRICS")},
			&cli.StringFlag{Name: "admin-token", Usage: "admin token (default: the systemd credential admin-token, else generated once into <data>/admin.token)", Sources: cli.EnvVars("NASREACH_ADMIN_TOKEN")},
			&cli.StringSliceFlag{Name: "ns", Usage: "nameserver NAME=IP[,IP] for the zone's NS records and glue (repeatable; default ns1=127.0.0.1)", Sources: cli.EnvVars("NASREACH_NS")},
			&cli.DurationFlag{Name: "ttl", Value: dnsserver.DefaultTTL * time.Second, Usage: "TTL of device answers", Sources: cli.EnvVars("NASREACH_TTL")},
			&cli.BoolFlag{Name: "open-registration", Usage: "let anyone register a free name (throttled per address)", Sources: cli.EnvVars("NASREACH_OPEN_REGISTRATION")},
			&cli.StringSliceFlag{Name: "reserved", Usage: "extra labels no device may register (repeatable)", Sources: cli.EnvVars("NASREACH_RESERVED")},
			&cli.StringSliceFlag{Name: "trusted-proxy", Usage: "CIDR of a reverse proxy whose X-Forwarded-For is believed (repeatable)", Sources: cli.EnvVars("NASREACH_TRUSTED_PROXY")},
			&cli.BoolFlag{Name: "exact-names", Usage: "answer NXDOMAIN for names below a device instead of the device's address", Sources: cli.EnvVars("NASREACH_EXACT_NAMES")},
		}, slices.Concat(turnFlags(), linkFlags(), privacyFlags(), logFlags())...),
		Before: applyConfigFile,
		Action: runServe,
	}
}

// daemonConfig is everything serve needs, parsed from flags.
type daemonConfig struct {
	DataDir          string
	Zone             string
	DNSAddr          string
	HTTPAddr         string
	MetricsAddr      string
	AdminToken       string
	NameServers      []dnsserver.NameServer
	TTL              time.Duration
	OpenRegistration bool
	Reserved         []string
	TrustedProxies   []netip.Prefix
	ExactNames       bool
	TURN             turnSettings    // Relay.Addr "" runs neither STUN nor TURN
	Link             linkRelayConfig // Addr "" runs no Link relay
	Privacy          privacyConfig
	LogLevel         zerolog.Level
	Now              func() time.Time
	Logger           zerolog.Logger
}

func daemonConfigFromFlags(cmd *cli.Command, log zerolog.Logger) (daemonConfig, error) {
	cfg := daemonConfig{
		DataDir: cmd.String("data"), Zone: cmd.String("zone"),
		DNSAddr: cmd.String("dns"), HTTPAddr: cmd.String("http"), MetricsAddr: cmd.String("metrics"),
		AdminToken: cmd.String("admin-token"), TTL: cmd.Duration("ttl"),
		OpenRegistration: cmd.Bool("open-registration"), Reserved: cmd.StringSlice("reserved"),
		ExactNames: cmd.Bool("exact-names"), Logger: log,
	}
	for _, v := range cmd.StringSlice("ns") {
		ns, err := parseNS(v)
		if err != nil {
			return cfg, err
		}
		cfg.NameServers = append(cfg.NameServers, ns)
	}
	var err error
	if cfg.LogLevel, err = zerolog.ParseLevel(strings.ToLower(cmd.String("log-level"))); err != nil || cfg.LogLevel == zerolog.NoLevel {
		return cfg, fmt.Errorf("--log-level %q: want debug, info, warn or error", cmd.String("log-level"))
	}
	if cfg.Privacy, err = privacyConfigFromFlags(cmd, cfg.DataDir); err != nil {
		return cfg, err
	}
	if cfg.TURN, err = turnSettingsFromFlags(cmd); err != nil {
		return cfg, err
	}
	if cfg.Link, err = linkRelayConfigFromFlags(cmd); err != nil {
		return cfg, err
	}
	for _, v := range cmd.StringSlice("trusted-proxy") {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return cfg, fmt.Errorf("--trusted-proxy %q: want a CIDR such as 10.0.0.0/8: %w", v, err)
		}
		cfg.TrustedProxies = append(cfg.TrustedProxies, p)
	}
	return cfg, nil
}

// parseNS reads NAME=IP[,IP] (or NAME alone for an out-of-zone nameserver).
func parseNS(v string) (dnsserver.NameServer, error) {
	name, ips, _ := strings.Cut(v, "=")
	ns := dnsserver.NameServer{Name: strings.TrimSpace(name)}
	if ns.Name == "" {
		return ns, fmt.Errorf("--ns %q: want NAME=IP, e.g. ns1=203.0.113.53", v)
	}
	for s := range strings.SplitSeq(ips, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return ns, fmt.Errorf("--ns %q: %q is not an IP address", v, s)
		}
		ns.Addrs = append(ns.Addrs, ip)
	}
	return ns, nil
}

// daemon is a running nasreach: store, DNS server, HTTP API, STUN/TURN and
// the Link relay.
type daemon struct {
	log       zerolog.Logger
	store     *store.Store
	dns       *dnsserver.Server
	api       *api.API
	turn      *turnService       // nil without --stun
	link      *linkserver.Server // nil without --link
	stopLink  func() error
	httpLn    net.Listener
	httpDone  chan error
	cfg       daemonConfig
	logQuery  atomic.Bool // --log-queries, changed live by reload
	connlog   *connlog.Log
	metrics   *metrics.Metrics
	ready     atomic.Bool
	token     string
	tokenFile string // empty when the token came from the command line
}

// startDaemon opens the store and binds every listener; when it returns
// without error the daemon is serving.
func startDaemon(cfg daemonConfig) (_ *daemon, err error) {
	d := &daemon{log: cfg.Logger, cfg: cfg}
	d.logQuery.Store(cfg.Privacy.LogQueries)
	defer func() {
		if err != nil { // undo whatever had started
			d.shutdown(context.Background())
		}
	}()
	d.token, d.tokenFile, err = ensureAdminToken(cfg.DataDir, cfg.AdminToken)
	if err != nil {
		return nil, err
	}
	nsLabels := []string{}
	for _, ns := range cfg.NameServers {
		if !strings.Contains(strings.TrimSuffix(ns.Name, "."), ".") {
			nsLabels = append(nsLabels, strings.ToLower(ns.Name))
		}
	}
	d.store, err = store.Open(store.Config{
		Dir: cfg.DataDir, Reserved: append(cfg.Reserved, nsLabels...), Now: cfg.Now,
		Quarantine: cfg.Privacy.Quarantine, UninitializedTTL: cfg.Privacy.UninitializedTTL,
		Logger: cfg.Logger.With().Str("component", "store").Logger(),
	})
	if err != nil {
		return nil, err
	}
	if d.connlog, err = openConnLog(cfg); err != nil {
		return nil, err
	}
	// The metrics' gauges read the relays at scrape time; /metrics is served
	// from the end of start-up, once d.turn and d.link are set.
	d.metrics, err = metrics.New(metrics.Config{
		Addr: cmp.Or(cfg.MetricsAddr, "127.0.0.1:0"), Version: version,
		Devices: d.store.Len, StoreBytes: d.store.Size, Online: d.linkAgents,
		Sessions:    map[string]func() int{"link": d.linkSessions, "turn": d.turnAllocations},
		TURNRefused: d.turnRefused,
		LogWritten:  d.connlog.Written, LogDropped: d.connlog.Dropped,
		Ready:  d.readiness,
		Logger: cfg.Logger.With().Str("component", "metrics").Logger(),
	})
	if err != nil {
		return nil, err
	}
	d.dns, err = dnsserver.New(dnsserver.Config{
		Addr: cfg.DNSAddr, Zone: cfg.Zone, NameServers: cfg.NameServers, TTL: cfg.TTL,
		ExactNamesOnly: cfg.ExactNames, Source: d.store, OnQuery: d.observeQuery,
		Logger: cfg.Logger.With().Str("component", "dns").Logger(),
	})
	if err != nil {
		return nil, err
	}
	if err = d.dns.Start(); err != nil {
		return nil, err
	}
	d.api, err = api.New(api.Config{
		Store: d.store, Zone: cfg.Zone, AdminToken: d.token, OpenRegistration: cfg.OpenRegistration,
		TrustedProxies: cfg.TrustedProxies, Now: cfg.Now, Events: eventTee{d.connlog, d.metrics},
		Logger: cfg.Logger.With().Str("component", "api").Logger(),
	})
	if err != nil {
		return nil, err
	}
	if d.httpLn, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
		return nil, fmt.Errorf("http listen %s: %w", cfg.HTTPAddr, err)
	}
	d.httpDone = make(chan error, 1)
	go func() { d.httpDone <- d.api.Serve(d.httpLn) }()
	events := eventTee{d.connlog, d.metrics}
	d.turn, err = startTURN(cfg.TURN, d.store, cfg.Logger, events.Log)
	if err != nil {
		return nil, err
	}
	if d.link, d.stopLink, err = startLinkRelay(cfg.Link, cfg.DataDir, d.store, events.Log, cfg.Logger); err != nil {
		return nil, err
	}
	if err = d.metrics.Start(); err != nil {
		return nil, err
	}
	d.ready.Store(true)
	return d, nil
}

// linkAgents is the devices_online gauge: agents connected to the relay.
func (d *daemon) linkAgents() int {
	if d.link == nil {
		return 0
	}
	return d.link.Agents()
}

// linkSessions is the sessions_active gauge of the Link relay.
func (d *daemon) linkSessions() int {
	if d.link == nil {
		return 0
	}
	return d.link.Sessions()
}

// turnAllocations is the sessions_active gauge of TURN.
func (d *daemon) turnAllocations() int {
	if t := d.runningTURN(); t != nil {
		return t.Stats().Allocations
	}
	return 0
}

// turnRefused counts what TURN refused, by reason.
func (d *daemon) turnRefused() map[string]uint64 {
	t := d.runningTURN()
	if t == nil {
		return nil
	}
	st := t.Stats()
	return map[string]uint64{
		"auth": st.AuthFailed, "quota": st.QuotaRefused, "peer": st.PeerRefused,
		"bandwidth": st.BandwidthDropped, "malformed": st.Malformed,
	}
}

// readiness is /readyz: every listener bound and the store readable.
func (d *daemon) readiness() error {
	if !d.ready.Load() {
		return errors.New("starting or stopping")
	}
	return d.store.Ping()
}

// shutdown stops the daemon in reverse order of start: the relays (their
// sessions end and are logged), the API (in-flight requests finish), DNS,
// metrics, the connection log (flushed) and the store.
func (d *daemon) shutdown(ctx context.Context) error {
	d.ready.Store(false)
	var errs []error
	if d.stopLink != nil {
		errs = append(errs, d.stopLink())
	}
	errs = append(errs, d.turn.Stop(ctx))
	if d.api != nil {
		errs = append(errs, d.api.Shutdown(ctx))
		if d.httpDone != nil {
			if err := <-d.httpDone; !errors.Is(err, http.ErrServerClosed) {
				errs = append(errs, err)
			}
		}
	}
	if d.dns != nil {
		errs = append(errs, d.dns.Shutdown(ctx))
	}
	if d.metrics != nil {
		errs = append(errs, d.metrics.Shutdown(ctx))
	}
	if d.connlog != nil {
		errs = append(errs, d.connlog.Close())
	}
	if d.store != nil {
		errs = append(errs, d.store.Close())
	}
	return errors.Join(errs...)
}

// ensureAdminToken returns the admin token: the given one, the systemd
// credential admin-token, or the one in <data>/admin.token, created (mode
// 0600) on first start.
func ensureAdminToken(dataDir, given string) (token, file string, err error) {
	if given != "" {
		return given, "", nil
	}
	if t, cred, err := readCredential(adminTokenCredential); err != nil || t != "" {
		return t, cred, err
	}
	file = filepath.Join(dataDir, adminTokenFile)
	if b, err := os.ReadFile(file); err == nil {
		if t := strings.TrimSpace(string(b)); t != "" {
			return t, file, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", "", fmt.Errorf("read admin token %s: %w", file, err)
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return "", "", fmt.Errorf("create data directory %s: %w", dataDir, err)
	}
	t, err := store.NewToken()
	if err != nil {
		return "", "", err
	}
	if err := os.WriteFile(file, []byte(t+"\n"), 0o600); err != nil {
		return "", "", fmt.Errorf("write admin token %s: %w", file, err)
	}
	return t, file, nil
}

func runServe(ctx context.Context, cmd *cli.Command) error {
	log, err := newLogger(cmd, os.Stderr)
	if err != nil {
		return err
	}
	cfg, err := daemonConfigFromFlags(cmd, log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	sd, err := sdnotify.FromEnv() // systemd's notify socket and watchdog; zero outside systemd
	if err != nil {
		return err
	}
	d, err := startDaemon(cfg)
	if err != nil {
		return err
	}
	ev := log.Info().Str("zone", strings.TrimSuffix(cfg.Zone, ".")).Str("dns", d.dns.Addr().String()).
		Str("http", d.httpLn.Addr().String()).Str("metrics", d.metrics.Addr().String()).Str("data", cfg.DataDir).Int("devices", d.store.Len())
	if d.turn != nil {
		ev = ev.Str("stun", d.turn.Addr.String()).Bool("turn", d.turn.turn != nil)
		if d.turn.TLSAddr.IsValid() {
			ev = ev.Str("turns", d.turn.TLSAddr.String())
		}
	}
	if d.link != nil {
		ev = ev.Str("link", d.link.Addr().String())
	}
	if d.tokenFile != "" {
		ev = ev.Str("admin_token_file", d.tokenFile)
	}
	ev.Msg("nasreach ready")
	// --- systemd: READY=1 now that every listener is bound; the watchdog is
	// fed while the DNS port answers for the zone. ---
	status := fmt.Sprintf("serving %s: dns %s, http %s", strings.TrimSuffix(cfg.Zone, "."), d.dns.Addr(), d.httpLn.Addr())
	if err := sd.Notify(ctx, sdnotify.Ready, sdnotify.Status(status)); err != nil {
		log.Warn().Err(err).Msg("cannot tell systemd the daemon is ready")
	}
	dnsAnswers := func(ctx context.Context) error {
		ap, err := netip.ParseAddrPort(d.dns.Addr().String())
		if err != nil {
			return err
		}
		if ap.Addr().IsUnspecified() { // bound to every address: ask over loopback
			ap = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), ap.Port())
		}
		q := new(dns.Msg).SetQuestion(dns.Fqdn(cfg.Zone), dns.TypeSOA)
		r, _, err := (&dns.Client{Net: "udp"}).ExchangeContext(ctx, q, ap.String())
		if err != nil {
			return fmt.Errorf("own dns port %s does not answer: %w", ap, err)
		}
		if r.Rcode != dns.RcodeSuccess {
			return fmt.Errorf("own dns port %s answers %s for the zone's SOA", ap, dns.RcodeToString[r.Rcode])
		}
		return nil
	}
	watchdogCtx, stopWatchdog := context.WithCancel(ctx)
	watchdogDone := make(chan struct{})
	go func() {
		defer close(watchdogDone)
		sd.Watchdog(watchdogCtx, dnsAnswers, func(err error) { log.Warn().Err(err).Msg("systemd watchdog") })
	}()
	// --- end systemd ---
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
serving:
	for {
		select {
		case <-ctx.Done():
			break serving
		case err := <-d.httpDone:
			d.httpDone <- err // let shutdown see it
			log.Error().Err(err).Msg("http api stopped")
			break serving
		case <-hup:
			_ = sd.Notify(ctx, sdnotify.Reloading)
			d.reloadFrom(ctx, os.Args)
			_ = sd.Notify(ctx, sdnotify.Ready, sdnotify.Status(status))
		}
	}
	log.Info().Msg("shutting down")
	stopWatchdog() // systemd: no more pings, and STOPPING=1 while we drain
	<-watchdogDone
	if err := sd.Notify(context.Background(), sdnotify.Stopping, sdnotify.Status("shutting down")); err != nil {
		log.Warn().Err(err).Msg("cannot tell systemd the daemon is stopping")
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := d.shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	log.Info().Msg("stopped")
	return nil
}

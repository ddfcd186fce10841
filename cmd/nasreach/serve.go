package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/nasreach/nasreach/daemon"
	"github.com/nasreach/nasreach/dnsserver"
	"github.com/nasreach/nasreach/sdnotify"
	"github.com/rs/zerolog"
	"github.com/urfave/cli/v3"
)

// Development defaults: everything on loopback, unprivileged ports.
const (
	defaultDNSAddr  = "127.0.0.1:10053"
	defaultHTTPAddr = "127.0.0.1:10080"
	defaultMetrics  = "127.0.0.1:10090"
	defaultDataDir  = "./data"
)

func serveCommand() *cli.Command { return serveLikeCommand(runServe) }

// serveLikeCommand is serve's flags, environment and config file, checked
// as the daemon checks them, handed to action as the daemon's configuration.
// Every problem is reported at once, in the config file's order.
func serveLikeCommand(action func(context.Context, *cli.Command, daemon.Config) error) *cli.Command {
	src := &configSource{}
	return &cli.Command{
		Name:  "serve",
		Usage: "run the daemon (DNS, HTTP API, STUN/TURN, Link relay)",
		Description: describe("Every flag is also a NASREACH_* environment variable and a key of the TOML config file "+
			"(flag > environment > file > default). SIGHUP re-reads the configuration; SIGINT or SIGTERM stops.",
			"nasreach serve",
			"nasreach serve --config /etc/nasreach/nasreach.toml",
			"nasreach serve --zone nas.example.net --dns 0.0.0.0:53 --ns ns1=203.0.113.53 --data /var/lib/nasreach"),
		Flags: append([]cli.Flag{
			configFlag(),
			&cli.StringFlag{Name: "data", Value: defaultDataDir, Usage: "data directory: the store, the admin token, the local socket", DefaultText: defaultDataDir + ", or $STATE_DIRECTORY under systemd", Sources: cli.EnvVars("NASREACH_DATA", "STATE_DIRECTORY")},
			&cli.BoolFlag{Name: "store-check", Usage: "at start, also run the full consistency check of the store (every page; slower on a large store) besides the quick checks", Sources: cli.EnvVars("NASREACH_STORE_CHECK")},
			&cli.StringFlag{Name: "zone", Value: dnsserver.DefaultZone, Usage: "DNS zone the devices live in", Sources: cli.EnvVars("NASREACH_ZONE")},
			&cli.StringFlag{Name: "dns", Value: defaultDNSAddr, Usage: "DNS listen address (UDP and TCP)", Sources: cli.EnvVars("NASREACH_DNS")},
			&cli.StringFlag{Name: "http", Value: defaultHTTPAddr, Usage: "HTTP API listen address", Sources: cli.EnvVars("NASREACH_HTTP")},
			&cli.StringFlag{Name: "metrics", Value: defaultMetrics, Usage: "listen address of /metrics, /healthz and /readyz (keep it private)", Sources: cli.EnvVars("NASREACH_METRICS")},
			&cli.StringFlag{Name: "admin-token", Usage: "admin token of the HTTP API", DefaultText: "the systemd credential admin-token, else generated once into <data>/admin.token", Sources: cli.EnvVars("NASREACH_ADMIN_TOKEN")},
			&cli.StringSliceFlag{Name: "ns", Usage: "nameserver NAME=IP[,IP] for the zone's NS records and glue (repeatable)", DefaultText: "ns1=127.0.0.1", Sources: cli.EnvVars("NASREACH_NS")},
			&cli.DurationFlag{Name: "ttl", Value: dnsserver.DefaultTTL * time.Second, Usage: "TTL of device answers", Sources: cli.EnvVars("NASREACH_TTL")},
			&cli.BoolFlag{Name: "open-registration", Usage: "let anyone register a free name (throttled per address)", Sources: cli.EnvVars("NASREACH_OPEN_REGISTRATION")},
			&cli.StringSliceFlag{Name: "reserved", Usage: "extra labels no device may register (repeatable)", Sources: cli.EnvVars("NASREACH_RESERVED")},
			&cli.StringSliceFlag{Name: "trusted-proxy", Usage: "CIDR of a reverse proxy whose X-Forwarded-For is believed (repeatable)", Sources: cli.EnvVars("NASREACH_TRUSTED_PROXY")},
			&cli.BoolFlag{Name: "exact-names", Usage: "answer NXDOMAIN for names below a device instead of the device's address", Sources: cli.EnvVars("NASREACH_EXACT_NAMES")},
			&cli.BoolFlag{Name: "dns-fast-path", Value: true, Usage: "answer plain A and AAAA queries over UDP on the fast path (batched socket calls, no allocation); off: miekg/dns answers every query", Sources: cli.EnvVars("NASREACH_DNS_FAST_PATH")},
			&cli.StringSliceFlag{Name: "caa", Usage: `CAA record at the zone's apex, FLAGS TAG "VALUE", e.g. 0 issue "letsencrypt.org"; devices inherit it (repeatable)`, Sources: cli.EnvVars("NASREACH_CAA")},
		}, slices.Concat(storeFlags(), transferFlags(), rrlFlags(), turnFlags(), linkFlags(), privacyFlags(), logFlags())...),
		Before: src.apply,
		Action: func(ctx context.Context, cmd *cli.Command) error {
			cfg, err := daemonConfigFromFlags(cmd)
			if err := src.report(err); err != nil {
				return err
			}
			return action(ctx, cmd, cfg)
		},
	}
}

// daemonConfigFromFlags turns serve's flags (set from the command line, the
// environment and the config file) into the daemon's configuration and
// checks it. The error joins every problem found; those about one setting
// are *daemon.SettingError.
func daemonConfigFromFlags(cmd *cli.Command) (daemon.Config, error) {
	cfg := daemon.Config{
		DataDir: cmd.String("data"), StoreCheck: cmd.Bool("store-check"), Zone: cmd.String("zone"),
		DNSAddr: cmd.String("dns"), HTTPAddr: cmd.String("http"), MetricsAddr: cmd.String("metrics"),
		AdminToken: cmd.String("admin-token"), TTL: cmd.Duration("ttl"),
		OpenRegistration: cmd.Bool("open-registration"), Reserved: cmd.StringSlice("reserved"),
		ExactNames: cmd.Bool("exact-names"), NoDNSFastPath: !cmd.Bool("dns-fast-path"), CAA: cmd.StringSlice("caa"), Logger: zerolog.Nop(), Version: version,
	}
	var errs []error
	add := func(setting string, err error) {
		if err != nil {
			if setting != "" {
				err = &daemon.SettingError{Setting: setting, Err: err}
			}
			errs = append(errs, err)
		}
	}
	for _, v := range cmd.StringSlice("ns") {
		ns, err := parseNS(v)
		if err != nil {
			add("ns", err)
			continue
		}
		cfg.NameServers = append(cfg.NameServers, ns)
	}
	var err error
	cfg.LogLevel, err = parseLogLevel(cmd.String("log-level"))
	add("log-level", err)
	cfg.Store = storeConfigFromFlags(cmd)
	cfg.Privacy, err = privacyConfigFromFlags(cmd, cfg.DataDir)
	add("", err)
	if cfg.AdminToken == "" {
		cfg.AdminToken, _, err = readCredential(adminTokenCredential)
		add("", err)
	}
	cfg.CertFile, cfg.KeyFile, err = tlsFilesFromFlags(cmd)
	add("tls-key", err)
	cfg.Transfer, err = transferConfigFromFlags(cmd)
	add("", err)
	cfg.RRL, err = rrlConfigFromFlags(cmd)
	add("rrl-exempt", err)
	cfg.TURN, err = turnConfigFromFlags(cmd)
	add("", err)
	cfg.Link, err = linkConfigFromFlags(cmd)
	add("", err)
	cfg.Cluster, err = clusterConfigFromFlags(cmd)
	add("link-advertise", err)
	for _, v := range cmd.StringSlice("trusted-proxy") {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			add("trusted-proxy", fmt.Errorf("--trusted-proxy %q: want a CIDR such as 10.0.0.0/8: %w", v, err))
			continue
		}
		cfg.TrustedProxies = append(cfg.TrustedProxies, p)
	}
	return cfg, errors.Join(append(errs, cfg.Validate())...)
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

// runServe runs the daemon until SIGINT or SIGTERM; SIGHUP reloads the
// configuration.
func runServe(ctx context.Context, cmd *cli.Command, cfg daemon.Config) error {
	log, lv, err := newLogger(cmd, cmd.Root().ErrWriter)
	if err != nil {
		return err
	}
	cfg.Logger, cfg.SetLogLevel = log, lv.Set
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	sd, err := sdnotify.FromEnv() // systemd's notify socket and watchdog; zero outside systemd
	if err != nil {
		return err
	}
	d, err := daemon.New(cfg)
	if err != nil {
		return err
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				reload(ctx, d, os.Args, log)
			}
		}
	}()
	return d.Run(ctx, sd)
}

package main

import (
	"fmt"
	"time"

	"github.com/nasreach/nasreach/connlog"
	"github.com/nasreach/nasreach/linkserver"
	"github.com/nasreach/nasreach/store"
	"github.com/rs/zerolog"
	"github.com/urfave/cli/v3"
)

// defaultLinkAddr is the development default of the Link relay: loopback, an
// unprivileged UDP port. In production --link is 0.0.0.0:7443.
const defaultLinkAddr = "127.0.0.1:17443"

// linkFlags are serve's flags for the Link relay. Its certificate comes from
// --tls-cert and --tls-key, which turnFlags defines and both relays share;
// without them a self-signed one is generated once into the data directory.
func linkFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "link", Value: defaultLinkAddr, Usage: `Link relay UDP listen address for QUIC ("" disables it; production: 0.0.0.0:7443)`, Sources: cli.EnvVars("NASREACH_LINK")},
		&cli.IntFlag{Name: "link-max-agents", Value: linkserver.DefaultMaxAgents, Usage: "NAS agents connected at once", Sources: cli.EnvVars("NASREACH_LINK_MAX_AGENTS")},
		&cli.IntFlag{Name: "link-max-streams", Value: linkserver.DefaultMaxStreamsPerDevice, Usage: "Link sessions open to one device at once", Sources: cli.EnvVars("NASREACH_LINK_MAX_STREAMS")},
		&cli.FloatFlag{Name: "link-stream-rate", Value: linkserver.DefaultStreamRate, Usage: "new Link sessions per second per client address (burst: --link-stream-burst)", Sources: cli.EnvVars("NASREACH_LINK_STREAM_RATE")},
		&cli.IntFlag{Name: "link-stream-burst", Value: linkserver.DefaultStreamBurst, Usage: "new Link sessions a client address may open at once", Sources: cli.EnvVars("NASREACH_LINK_STREAM_BURST")},
		&cli.DurationFlag{Name: "link-idle-timeout", Value: linkserver.DefaultIdleTimeout, Usage: "close a Link connection silent this long (agents and clients send keep-alives well within it)", Sources: cli.EnvVars("NASREACH_LINK_IDLE_TIMEOUT")},
	}
}

// linkRelayConfig is the Link part of the daemon's configuration.
type linkRelayConfig struct {
	Addr              string // "" disables the relay
	CertFile, KeyFile string // empty: self-signed in the data directory
	MaxAgents         int
	MaxStreams        int
	StreamRate        float64
	StreamBurst       int
	IdleTimeout       time.Duration
}

// linkRelayConfigFromFlags reads linkFlags and the shared --tls-cert/--tls-key.
func linkRelayConfigFromFlags(cmd *cli.Command) (linkRelayConfig, error) {
	certFile, keyFile, err := tlsFilesFromFlags(cmd)
	if err != nil {
		return linkRelayConfig{}, err
	}
	c := linkRelayConfig{
		Addr: cmd.String("link"), CertFile: certFile, KeyFile: keyFile,
		MaxAgents: cmd.Int("link-max-agents"), MaxStreams: cmd.Int("link-max-streams"),
		StreamRate: cmd.Float("link-stream-rate"), StreamBurst: cmd.Int("link-stream-burst"),
		IdleTimeout: cmd.Duration("link-idle-timeout"),
	}
	if c.MaxAgents < 1 || c.MaxStreams < 1 || c.StreamBurst < 1 || c.StreamRate <= 0 {
		return c, fmt.Errorf("--link-max-agents, --link-max-streams, --link-stream-burst and --link-stream-rate must be positive")
	}
	if c.IdleTimeout < time.Second {
		return c, fmt.Errorf("--link-idle-timeout %v: want at least 1s", c.IdleTimeout)
	}
	return c, nil
}

// startLinkRelay starts the Link relay on st, logging one record per session
// to events (nil: none), and prints the fingerprint agents and clients pin.
// It returns nil and a no-op stop when cfg.Addr is empty.
func startLinkRelay(cfg linkRelayConfig, dataDir string, st *store.Store, events func(connlog.Event), log zerolog.Logger) (*linkserver.Server, func() error, error) {
	if cfg.Addr == "" {
		return nil, func() error { return nil }, nil
	}
	cert, fp, err := linkserver.LoadCert(dataDir, cfg.CertFile, cfg.KeyFile)
	if err != nil {
		return nil, nil, err
	}
	lc := linkserver.Config{
		Addr: cfg.Addr, Certificate: cert, Store: st,
		MaxAgents: cfg.MaxAgents, MaxStreamsPerDevice: cfg.MaxStreams,
		StreamRate: cfg.StreamRate, StreamBurst: cfg.StreamBurst, IdleTimeout: cfg.IdleTimeout,
		Events: events, Logger: log.With().Str("component", "link").Logger(),
	}
	l, err := linkserver.New(lc)
	if err != nil {
		return nil, nil, err
	}
	log.Info().Str("link", l.Addr().String()).Str("relay_fingerprint", fp).
		Msg("link relay ready; agents and clients pin it with --relay-fingerprint")
	return l, l.Close, nil
}

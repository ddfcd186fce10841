package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/nasreach/nasreach/connlog"
	"github.com/nasreach/nasreach/store"
	"github.com/nasreach/nasreach/stun"
	"github.com/nasreach/nasreach/turnserver"
	"github.com/rs/zerolog"
	"github.com/urfave/cli/v3"
)

// Development defaults for STUN and TURN: loopback, unprivileged ports. In
// production --stun is 0.0.0.0:3478 and --turns 0.0.0.0:5349.
const (
	defaultSTUNAddr  = "127.0.0.1:13478"
	defaultTURNSAddr = "127.0.0.1:15349"
)

// turnFlags are the serve flags of the STUN binding service and the TURN relay.
func turnFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "stun", Value: defaultSTUNAddr, Usage: "STUN and TURN listen address, UDP and TCP (production: 0.0.0.0:3478)", Sources: cli.EnvVars("NASREACH_STUN")},
		&cli.BoolFlag{Name: "turn", Value: true, Usage: "run the TURN relay on the STUN port; --turn=false answers STUN Binding only", Sources: cli.EnvVars("NASREACH_TURN")},
		&cli.StringFlag{Name: "stun-software", Usage: "SOFTWARE attribute of STUN answers (default: none, the version is not advertised)", Sources: cli.EnvVars("NASREACH_STUN_SOFTWARE")},
		&cli.StringFlag{Name: "turn-realm", Value: turnserver.DefaultRealm, Usage: "TURN realm of the long-term credentials", Sources: cli.EnvVars("NASREACH_TURN_REALM")},
		&cli.StringSliceFlag{Name: "turn-user", Usage: "static TURN credentials name:password (repeatable; no commas in the password)", Sources: cli.EnvVars("NASREACH_TURN_USER")},
		&cli.StringFlag{Name: "turn-secret", Usage: "shared secret of TURN REST API credentials (username expiry:name, password base64 HMAC-SHA1), as coturn's static-auth-secret", Sources: cli.EnvVars("NASREACH_TURN_SECRET")},
		&cli.StringSliceFlag{Name: "turn-allow-peer", Usage: "CIDR the relay may forward to although refused by default, e.g. a lab network (repeatable)", Sources: cli.EnvVars("NASREACH_TURN_ALLOW_PEER")},
		&cli.StringFlag{Name: "turn-relay-ip", Usage: "address clients send peer traffic to (default: the IP of --stun; required when --stun is 0.0.0.0)", Sources: cli.EnvVars("NASREACH_TURN_RELAY_IP")},
		&cli.StringFlag{Name: "turns", Value: defaultTURNSAddr, Usage: "TURN over TLS listen address, with --tls-cert and --tls-key (production: 0.0.0.0:5349)", Sources: cli.EnvVars("NASREACH_TURNS")},
		&cli.StringFlag{Name: "tls-cert", Usage: "PEM certificate chain for TURN over TLS (re-read when the file changes)", Sources: cli.EnvVars("NASREACH_TLS_CERT")},
		&cli.StringFlag{Name: "tls-key", Usage: "PEM private key for TURN over TLS", Sources: cli.EnvVars("NASREACH_TLS_KEY")},
		&cli.IntFlag{Name: "turn-max-allocations", Value: turnserver.DefaultMaxAllocations, Usage: "TURN allocations in total", Sources: cli.EnvVars("NASREACH_TURN_MAX_ALLOCATIONS")},
		&cli.IntFlag{Name: "turn-user-quota", Value: turnserver.DefaultMaxAllocationsPerUser, Usage: "TURN allocations per user or device", Sources: cli.EnvVars("NASREACH_TURN_USER_QUOTA")},
		&cli.DurationFlag{Name: "turn-max-lifetime", Value: turnserver.DefaultMaxLifetime, Usage: "end an allocation this long after it started, however often refreshed (0: no cap)", Sources: cli.EnvVars("NASREACH_TURN_MAX_LIFETIME")},
		&cli.Int64Flag{Name: "turn-bandwidth", Usage: "cap each direction of an allocation at this many bytes per second (0: no cap)", Sources: cli.EnvVars("NASREACH_TURN_BANDWIDTH")},
	}
}

// turnService is the running STUN binding service, with or without the TURN
// relay on the same port.
type turnService struct {
	turn      *turnserver.Server // nil with --turn=false
	responder *stun.Responder    // answers Binding on the TURN port
	stun      *stun.Server       // the standalone Binding server with --turn=false
	log       zerolog.Logger
	// Addr is the STUN/TURN address (UDP and TCP); TLSAddr the TURN-over-TLS
	// address, or the zero value without TLS.
	Addr, TLSAddr netip.AddrPort
}

// turnSettings is the STUN/TURN part of the daemon's configuration.
type turnSettings struct {
	// Enabled runs the TURN relay on the STUN port (--turn); false answers
	// STUN Binding only.
	Enabled bool
	// Software is the SOFTWARE attribute of STUN answers (--stun-software).
	Software string
	// Relay is the relay's configuration but for the wiring (store, events,
	// logger); Relay.Addr is the STUN address, and "" runs neither STUN nor
	// TURN.
	Relay turnserver.Config
}

// turnSettingsFromFlags reads turnFlags.
func turnSettingsFromFlags(cmd *cli.Command) (turnSettings, error) {
	s := turnSettings{Enabled: cmd.Bool("turn"), Software: cmd.String("stun-software")}
	var err error
	s.Relay, err = turnConfigFromFlags(cmd)
	return s, err
}

// startTURN starts STUN and TURN. The relay takes device credentials from st
// and sends one event per allocation to events (nil logs them to log
// instead).
// With cfg.Relay.Addr empty it starts nothing and returns nil.
func startTURN(cfg turnSettings, st *store.Store, log zerolog.Logger, events func(connlog.Event)) (*turnService, error) {
	addr := cfg.Relay.Addr
	if addr == "" {
		return nil, nil
	}
	if !cfg.Enabled {
		s, err := stun.New(stun.Config{Addr: addr, Software: cfg.Software, Logger: log.With().Str("component", "stun").Logger()})
		if err != nil {
			return nil, err
		}
		return &turnService{stun: s, Addr: s.Addr()}, nil
	}
	responder, err := stun.NewResponder(stun.ResponderConfig{Software: cfg.Software})
	if err != nil {
		return nil, fmt.Errorf("--stun-software: %w", err)
	}
	rc := cfg.Relay
	rc.Binding = responder.Answer
	rc.Devices = st
	rc.Events = events
	rc.Logger = log.With().Str("component", "turn").Logger()
	t, err := turnserver.New(rc)
	if err != nil {
		return nil, err
	}
	return &turnService{turn: t, responder: responder, log: rc.Logger, Addr: t.Addr(), TLSAddr: t.TLSAddr()}, nil
}

// turnConfigFromFlags reads everything but the wiring (store, events, logger).
func turnConfigFromFlags(cmd *cli.Command) (turnserver.Config, error) {
	cfg := turnserver.Config{
		Addr: cmd.String("stun"), Realm: cmd.String("turn-realm"),
		Users: cmd.StringSlice("turn-user"), Secret: cmd.String("turn-secret"),
		MaxAllocations: cmd.Int("turn-max-allocations"), MaxAllocationsPerUser: cmd.Int("turn-user-quota"),
		MaxLifetime: cmd.Duration("turn-max-lifetime"), BandwidthPerAllocation: cmd.Int64("turn-bandwidth"),
	}
	if cfg.MaxAllocations <= 0 || cfg.MaxAllocationsPerUser <= 0 {
		return cfg, errors.New("--turn-max-allocations and --turn-user-quota must be at least 1")
	}
	if cfg.BandwidthPerAllocation < 0 {
		return cfg, errors.New("--turn-bandwidth must not be negative")
	}
	if cfg.MaxLifetime == 0 {
		cfg.MaxLifetime = -1 // the flag's 0 means no cap; the config's 0 means the default
	}
	for _, v := range cmd.StringSlice("turn-allow-peer") {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return cfg, fmt.Errorf("--turn-allow-peer %q: want a CIDR such as 192.0.2.0/24: %w", v, err)
		}
		cfg.AllowPeers = append(cfg.AllowPeers, p)
	}
	if v := cmd.String("turn-relay-ip"); v != "" {
		ip, err := netip.ParseAddr(v)
		if err != nil {
			return cfg, fmt.Errorf("--turn-relay-ip %q: want the public IP address of this server: %w", v, err)
		}
		cfg.RelayIP = ip
	}
	if cfg.Secret == "" {
		secret, _, err := readCredential(turnSecretCredential)
		if err != nil {
			return cfg, err
		}
		cfg.Secret = secret
	}
	certFile, keyFile, err := tlsFilesFromFlags(cmd)
	if err != nil {
		return cfg, err
	}
	if certFile != "" {
		kp, err := newKeyPairReloader(certFile, keyFile)
		if err != nil {
			return cfg, err
		}
		cfg.TLS = &tls.Config{GetCertificate: kp.get, MinVersion: tls.VersionTLS12}
		cfg.TLSAddr = cmd.String("turns")
	}
	return cfg, nil
}

// tlsFilesFromFlags returns --tls-cert and --tls-key, which TURN over TLS
// and the Link relay share; the key may come from the systemd credential
// tls-key instead. Both or neither.
func tlsFilesFromFlags(cmd *cli.Command) (certFile, keyFile string, err error) {
	certFile, keyFile = cmd.String("tls-cert"), cmd.String("tls-key")
	if keyFile == "" && certFile != "" {
		if _, keyFile, err = readCredential(tlsKeyCredential); err != nil {
			return "", "", err
		}
	}
	if (certFile == "") != (keyFile == "") {
		return "", "", errors.New("--tls-cert and --tls-key go together (the key may be the systemd credential tls-key): give both for TURN over TLS and the Link relay's certificate, or neither")
	}
	return certFile, keyFile, nil
}

// Stop stops the service and waits for its goroutines. There is no graceful
// drain (a relayed call cannot be finished for its users), so Stop ends every
// allocation at once; it waits at most five seconds for pion's goroutines
// whatever ctx says.
func (s *turnService) Stop(context.Context) error {
	if s == nil {
		return nil
	}
	if s.turn != nil {
		err := s.turn.Close()
		st := s.responder.Stats()
		s.log.Info().Uint64("answered", st.Answered).Uint64("dropped", st.Dropped).Msg("stun binding counters")
		return err
	}
	return s.stun.Close()
}

// keyPairReloader serves a certificate from files and re-reads them when
// they change (a renewal by certbot or acme.sh), checking at most every
// keyPairCheckEvery. A pair that does not load keeps the old one in service.
type keyPairReloader struct {
	certFile, keyFile string
	every             time.Duration

	mu      sync.Mutex
	cert    *tls.Certificate
	mtime   time.Time
	checked time.Time
}

const keyPairCheckEvery = 10 * time.Second

func newKeyPairReloader(certFile, keyFile string) (*keyPairReloader, error) {
	k := &keyPairReloader{certFile: certFile, keyFile: keyFile, every: keyPairCheckEvery}
	if err := k.load(); err != nil {
		return nil, err
	}
	return k, nil
}

func (k *keyPairReloader) load() error {
	fi, err := os.Stat(k.certFile)
	if err != nil {
		return fmt.Errorf("--tls-cert: %w", err)
	}
	c, err := tls.LoadX509KeyPair(k.certFile, k.keyFile)
	if err != nil {
		return fmt.Errorf("load TLS key pair %s, %s: %w", k.certFile, k.keyFile, err)
	}
	k.cert, k.mtime = &c, fi.ModTime()
	return nil
}

func (k *keyPairReloader) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if now := time.Now(); now.Sub(k.checked) >= k.every {
		k.checked = now
		if fi, err := os.Stat(k.certFile); err == nil && !fi.ModTime().Equal(k.mtime) {
			k.load() //nolint:errcheck // on error the old pair stays; the next check tries again
		}
	}
	return k.cert, nil
}

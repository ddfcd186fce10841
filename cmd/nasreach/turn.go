package main

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/nasreach/nasreach/daemon"
	"github.com/nasreach/nasreach/turnserver"
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
		&cli.StringFlag{Name: "stun-software", Usage: "SOFTWARE attribute of STUN answers", DefaultText: "none, the version is not advertised", Sources: cli.EnvVars("NASREACH_STUN_SOFTWARE")},
		&cli.StringFlag{Name: "turn-realm", Value: turnserver.DefaultRealm, Usage: "TURN realm of the long-term credentials", Sources: cli.EnvVars("NASREACH_TURN_REALM")},
		&cli.StringSliceFlag{Name: "turn-user", Usage: "static TURN credentials name:password (repeatable; no commas in the password)", Sources: cli.EnvVars("NASREACH_TURN_USER")},
		&cli.StringFlag{Name: "turn-secret", Usage: "shared secret of TURN REST API credentials (username expiry:name, password base64 HMAC-SHA1), as coturn's static-auth-secret", Sources: cli.EnvVars("NASREACH_TURN_SECRET")},
		&cli.StringSliceFlag{Name: "turn-allow-peer", Usage: "CIDR the relay may forward to although refused by default, e.g. a lab network (repeatable)", Sources: cli.EnvVars("NASREACH_TURN_ALLOW_PEER")},
		&cli.StringFlag{Name: "turn-relay-ip", Usage: "address clients send peer traffic to (required when --stun is 0.0.0.0)", DefaultText: "the IP of --stun", Sources: cli.EnvVars("NASREACH_TURN_RELAY_IP")},
		&cli.StringFlag{Name: "turns", Value: defaultTURNSAddr, Usage: "TURN over TLS listen address, with --tls-cert and --tls-key (production: 0.0.0.0:5349)", Sources: cli.EnvVars("NASREACH_TURNS")},
		&cli.StringFlag{Name: "tls-cert", Usage: "PEM certificate chain for TURN over TLS (re-read when the file changes)", Sources: cli.EnvVars("NASREACH_TLS_CERT")},
		&cli.StringFlag{Name: "tls-key", Usage: "PEM private key for TURN over TLS", Sources: cli.EnvVars("NASREACH_TLS_KEY")},
		&cli.IntFlag{Name: "turn-max-allocations", Value: turnserver.DefaultMaxAllocations, Usage: "TURN allocations in total", Sources: cli.EnvVars("NASREACH_TURN_MAX_ALLOCATIONS")},
		&cli.IntFlag{Name: "turn-user-quota", Value: turnserver.DefaultMaxAllocationsPerUser, Usage: "TURN allocations per user or device", Sources: cli.EnvVars("NASREACH_TURN_USER_QUOTA")},
		&cli.DurationFlag{Name: "turn-max-lifetime", Value: turnserver.DefaultMaxLifetime, Usage: "end an allocation this long after it started, however often refreshed (0: no cap)", Sources: cli.EnvVars("NASREACH_TURN_MAX_LIFETIME")},
		&cli.Int64Flag{Name: "turn-bandwidth", Usage: "cap each direction of an allocation at this many bytes per second (0: no cap)", Sources: cli.EnvVars("NASREACH_TURN_BANDWIDTH")},
	}
}

// turnConfigFromFlags reads turnFlags.
func turnConfigFromFlags(cmd *cli.Command) (daemon.TURNConfig, error) {
	cfg := daemon.TURNConfig{
		Addr: cmd.String("stun"), Enabled: cmd.Bool("turn"), Software: cmd.String("stun-software"),
		Realm: cmd.String("turn-realm"), Users: cmd.StringSlice("turn-user"), Secret: cmd.String("turn-secret"),
		TLSAddr:        cmd.String("turns"),
		MaxAllocations: cmd.Int("turn-max-allocations"), UserQuota: cmd.Int("turn-user-quota"),
		MaxLifetime: cmd.Duration("turn-max-lifetime"), Bandwidth: cmd.Int64("turn-bandwidth"),
	}
	if cfg.MaxAllocations <= 0 || cfg.UserQuota <= 0 {
		return cfg, errors.New("--turn-max-allocations and --turn-user-quota must be at least 1")
	}
	if cfg.Bandwidth < 0 {
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
	return certFile, keyFile, nil
}

package main

import (
	"fmt"
	"path/filepath"

	"github.com/nasreach/nasreach/connlog"
	"github.com/nasreach/nasreach/daemon"
	"github.com/nasreach/nasreach/store"
	"github.com/urfave/cli/v3"
)

// retentionDefault is how the help shows connlog.DefaultRetention, the
// retention of connection logs and backups alike.
var retentionDefault = formatDuration(connlog.DefaultRetention) + ", six months"

func privacyFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "log-dir", Usage: "connection log directory", DefaultText: "<data>/logs, or $LOGS_DIRECTORY under systemd", Sources: cli.EnvVars("NASREACH_LOG_DIR", "LOGS_DIRECTORY")},
		&cli.DurationFlag{Name: "log-retention", Value: connlog.DefaultRetention, Usage: "delete connection logs older than this", DefaultText: retentionDefault, Sources: cli.EnvVars("NASREACH_LOG_RETENTION")},
		&cli.Int64Flag{Name: "log-max-bytes", Usage: "optional cap on the connection log directory; the oldest days go first", Sources: cli.EnvVars("NASREACH_LOG_MAX_BYTES")},
		&cli.StringFlag{Name: "log-encrypt-to", Usage: "age public key file: encrypt connection logs so the daemon cannot read them back", Sources: cli.EnvVars("NASREACH_LOG_ENCRYPT_TO")},
		&cli.BoolFlag{Name: "log-queries", Usage: "log every DNS query (masked) to the connection log; off by default", Sources: cli.EnvVars("NASREACH_LOG_QUERIES")},
		&cli.IntFlag{Name: "ipv6-mask-bits", Value: 48, Usage: "IPv6 bits kept when masking client addresses (32-64)", Sources: cli.EnvVars("NASREACH_IPV6_MASK_BITS")},
		&cli.DurationFlag{Name: "quarantine", Value: store.DefaultQuarantine, Usage: "how long a deleted device's name stays unavailable", Sources: cli.EnvVars("NASREACH_QUARANTINE")},
		&cli.DurationFlag{Name: "uninitialized-ttl", Value: store.DefaultUninitializedTTL, Usage: "how long an uninitialized device lives unless activated", Sources: cli.EnvVars("NASREACH_UNINITIALIZED_TTL")},
	}
}

// privacyConfigFromFlags reads privacyFlags.
func privacyConfigFromFlags(cmd *cli.Command, dataDir string) (daemon.PrivacyConfig, error) {
	p := daemon.PrivacyConfig{
		LogDir: cmd.String("log-dir"), LogRetention: cmd.Duration("log-retention"), LogMaxBytes: cmd.Int64("log-max-bytes"),
		LogQueries: cmd.Bool("log-queries"), IPv6Bits: cmd.Int("ipv6-mask-bits"), Quarantine: cmd.Duration("quarantine"), UninitializedTTL: cmd.Duration("uninitialized-ttl"),
	}
	if p.LogDir == "" {
		p.LogDir = filepath.Join(dataDir, "logs")
	}
	if p.IPv6Bits < 32 || p.IPv6Bits > 64 {
		return p, fmt.Errorf("--ipv6-mask-bits %d: want 32 to 64", p.IPv6Bits)
	}
	if p.LogRetention <= 0 {
		return p, fmt.Errorf("--log-retention %s: must be positive", p.LogRetention)
	}
	if p.Quarantine < 0 || p.UninitializedTTL <= 0 {
		return p, fmt.Errorf("--quarantine and --uninitialized-ttl must not be negative")
	}
	if p.Quarantine == 0 {
		p.Quarantine = -1 // store: negative disables, zero means the default
	}
	if f := cmd.String("log-encrypt-to"); f != "" {
		rs, err := connlog.LoadRecipients(f)
		if err != nil {
			return p, fmt.Errorf("--log-encrypt-to: %w", err)
		}
		p.LogRecipients = rs
	}
	return p, nil
}

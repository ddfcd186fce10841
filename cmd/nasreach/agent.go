package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nasreach/nasreach/api/client"
	"github.com/nasreach/nasreach/devicecert"
	"github.com/nasreach/nasreach/link"
	"github.com/rs/zerolog"
	"github.com/urfave/cli/v3"
)

// linkClientFlags are the flags agent and connect share.
func linkClientFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "server", Value: defaultLinkAddr, Usage: "the Link relay, HOST:PORT (UDP)", Sources: cli.EnvVars("NASREACH_LINK_SERVER")},
		&cli.StringFlag{Name: "server-tcp", Usage: "the Link relay's TCP address, HOST:PORT, tried when QUIC gets no answer (UDP blocked); default: --server's host and port; - for none", Sources: cli.EnvVars("NASREACH_LINK_SERVER_TCP")},
		&cli.StringFlag{Name: "relay-fingerprint", Usage: "pin the relay's key (sha256:..., printed by serve); default: verify its certificate against the system roots", Sources: cli.EnvVars("NASREACH_RELAY_FINGERPRINT")},
		&cli.StringFlag{Name: "direct", Value: "auto", Usage: "auto: sessions move to a direct (hole-punched) path when one works, the relay as fallback; never: every byte through the relay", Sources: cli.EnvVars("NASREACH_DIRECT")},
	}
}

// disableDirect reads --direct.
func disableDirect(cmd *cli.Command) (bool, error) {
	switch v := cmd.String("direct"); v {
	case "auto":
		return false, nil
	case "never":
		return true, nil
	default:
		return false, fmt.Errorf("--direct %q: want auto or never", v)
	}
}

// agentCommand runs the NAS side of Link.
func agentCommand() *cli.Command {
	return &cli.Command{
		Name:  "agent",
		Usage: "connect this NAS to a Link relay and serve the exposed ports through it",
		Description: describe("With --cert the agent also keeps a certificate for the device's name and its wildcard in DIR "+
			"(cert.pem, key.pem; ACME DNS-01 through the API, renewed at two-thirds of its lifetime), for the NAS's own HTTPS.",
			"NASREACH_TOKEN=$TOKEN nasreach agent --server relay.example.net:7443 --device nas1 --expose 443=127.0.0.1:443 --api https://ddns.example.net",
			"NASREACH_TOKEN=$TOKEN nasreach agent --server relay.example.net:7443 --device nas1 --expose 443=127.0.0.1:443 --api https://ddns.example.net --cert /var/lib/nasreach-agent/cert"),
		Flags: append(append(linkClientFlags(),
			&cli.StringFlag{Name: "device", Usage: "device name", Required: true, Sources: cli.EnvVars("NASREACH_DEVICE")},
			&cli.StringFlag{Name: "token", Usage: "device token (prefer the environment variable: arguments are visible to other users)", Required: true, Sources: cli.EnvVars("NASREACH_TOKEN")},
			&cli.StringSliceFlag{Name: "expose", Usage: "PORT=HOST:PORT: serve device port PORT from the local service HOST:PORT (repeatable; nothing else is reachable)", Required: true, Sources: cli.EnvVars("NASREACH_EXPOSE")},
			&cli.StringFlag{Name: "api", Usage: "the daemon's HTTP API URL: publish the device key and keep the DDNS address current", Sources: cli.EnvVars("NASREACH_API")},
			&cli.DurationFlag{Name: "idle-timeout", Value: link.DefaultAgentIdleTimeout, Usage: "take the relay for dead after this long without a packet from it, and reconnect (to the next --cluster-server)", Sources: cli.EnvVars("NASREACH_AGENT_IDLE_TIMEOUT")},
			&cli.StringSliceFlag{Name: "cluster-server", Usage: "another node of --server's relay cluster, HOST:PORT (repeatable): when the connection ends the agent moves to the next, leaving a dead node", Sources: cli.EnvVars("NASREACH_LINK_CLUSTER_SERVERS")},
			&cli.BoolFlag{Name: "no-resume", Usage: "serve plain sessions only, which end when their path fails, and keep nothing for resumable ones (up to 4 MiB each way while a path fails, 64 MiB for all); connect then opens plain sessions by itself", Sources: cli.EnvVars("NASREACH_NO_RESUME")},
			&cli.StringFlag{Name: "state", Usage: "directory of the device key (default: $STATE_DIRECTORY, else <user config dir>/nasreach/agent)", Sources: cli.EnvVars("NASREACH_AGENT_STATE", "STATE_DIRECTORY")},
			&cli.StringFlag{Name: "cert", Usage: "keep a certificate for <device>.<zone> and *.<device>.<zone> in this directory (cert.pem, key.pem; needs --api)", Sources: cli.EnvVars("NASREACH_CERT")},
			&cli.StringFlag{Name: "acme-directory", Value: devicecert.DefaultDirectory, Usage: "the ACME CA's directory URL, for --cert", Sources: cli.EnvVars("NASREACH_ACME_DIRECTORY")},
			&cli.StringFlag{Name: "acme-email", Usage: "contact address of the ACME account, for the CA's expiry notices (optional)", Sources: cli.EnvVars("NASREACH_ACME_EMAIL")},
			&cli.StringFlag{Name: "acme-ca-file", Usage: "PEM certificates to trust for the ACME CA besides the system's (a private CA such as step-ca)", Sources: cli.EnvVars("NASREACH_ACME_CA_FILE")},
		), logFlags()...),
		Action: runAgent,
	}
}

// parseExpose reads PORT=HOST:PORT flags.
func parseExpose(values []string) (map[uint16]string, error) {
	out := map[uint16]string{}
	for _, v := range values {
		p, target, ok := strings.Cut(v, "=")
		port, err := strconv.ParseUint(strings.TrimSpace(p), 10, 16)
		if !ok || err != nil || port == 0 {
			return nil, fmt.Errorf("--expose %q: want PORT=HOST:PORT, e.g. 443=127.0.0.1:443", v)
		}
		if _, dup := out[uint16(port)]; dup {
			return nil, fmt.Errorf("--expose: port %d given twice", port)
		}
		out[uint16(port)] = strings.TrimSpace(target)
	}
	return out, nil
}

func agentConfigFromFlags(cmd *cli.Command) (link.AgentConfig, error) {
	expose, err := parseExpose(cmd.StringSlice("expose"))
	if err != nil {
		return link.AgentConfig{}, err
	}
	state := cmd.String("state")
	if state == "" {
		dir, err := os.UserConfigDir()
		if err != nil {
			return link.AgentConfig{}, fmt.Errorf("no --state given and no user config directory: %w", err)
		}
		state = filepath.Join(dir, "nasreach", "agent")
	}
	noDirect, err := disableDirect(cmd)
	if err != nil {
		return link.AgentConfig{}, err
	}
	if d := cmd.Duration("idle-timeout"); d < 2*time.Second {
		return link.AgentConfig{}, fmt.Errorf("--idle-timeout %v: want at least 2s (keep-alives go at half of it)", d)
	}
	return link.AgentConfig{
		Server: cmd.String("server"), Servers: cmd.StringSlice("cluster-server"), ServerTCP: cmd.String("server-tcp"), RelayFingerprint: cmd.String("relay-fingerprint"),
		Device: cmd.String("device"), Token: cmd.String("token"), Expose: expose,
		StateDir: state, API: cmd.String("api"), DisableDirect: noDirect, IdleTimeout: cmd.Duration("idle-timeout"),
		DisableResume: cmd.Bool("no-resume"),
	}, nil
}

func runAgent(ctx context.Context, cmd *cli.Command) error {
	log, _, err := newLogger(cmd, cmd.Root().ErrWriter)
	if err != nil {
		return err
	}
	cfg, err := agentConfigFromFlags(cmd)
	if err != nil {
		return err
	}
	cfg.Logger = log.With().Str("component", "agent").Logger()
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	keeper, err := certKeeper(cmd, cfg, log)
	if err != nil {
		return err
	}
	a, err := link.NewAgent(cfg)
	if err != nil {
		return err
	}
	log.Info().Str("device", cfg.Device).Str("relay", cfg.Server).Str("fingerprint", a.Fingerprint()).
		Int("exposed_ports", len(cfg.Expose)).Msg("agent started; clients pin this device with --fingerprint")
	var certDone chan struct{}
	if keeper != nil {
		certDone = make(chan struct{})
		go func() {
			defer close(certDone)
			keeper.Run(ctx) //nolint:errcheck // returns ctx's error when the agent stops
		}()
	}
	<-ctx.Done()
	log.Info().Msg("agent stopping")
	if certDone != nil {
		<-certDone
	}
	if err := a.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// certKeeper is the keeper of the device's certificate that --cert asks
// for, or nil without --cert.
func certKeeper(cmd *cli.Command, cfg link.AgentConfig, log zerolog.Logger) (*devicecert.Keeper, error) {
	dir := cmd.String("cert")
	if dir == "" {
		return nil, nil
	}
	if cfg.API == "" {
		return nil, errors.New("--cert needs --api: the challenge values are published through the daemon's API")
	}
	api, err := client.New(client.Config{Server: cfg.API, Token: cfg.Token})
	if err != nil {
		return nil, fmt.Errorf("--api: %w", err)
	}
	var hc *http.Client
	if file := cmd.String("acme-ca-file"); file != "" {
		if hc, err = trustingClient(file); err != nil {
			return nil, fmt.Errorf("--acme-ca-file: %w", err)
		}
	}
	return devicecert.New(devicecert.Config{
		Dir: dir, Device: cfg.Device, API: api, HTTPClient: hc,
		Directory: cmd.String("acme-directory"), Email: cmd.String("acme-email"),
		Logger: log.With().Str("component", "cert").Logger(),
	})
}

// trustingClient is an HTTP client that trusts the system's roots and the
// PEM certificates in file.
func trustingClient(file string) (*http.Client, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", file)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool}
	return &http.Client{Transport: tr, Timeout: time.Minute}, nil
}

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/nasreach/nasreach/link"
	"github.com/urfave/cli/v3"
)

// linkClientFlags are the flags agent and connect share.
func linkClientFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "server", Value: defaultLinkAddr, Usage: "the Link relay, HOST:PORT (UDP)", Sources: cli.EnvVars("NASREACH_LINK_SERVER")},
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
		Description: describe("",
			"NASREACH_TOKEN=$TOKEN nasreach agent --server relay.example.net:7443 --device nas1 --expose 443=127.0.0.1:443 --api https://ddns.example.net"),
		Flags: append(append(linkClientFlags(),
			&cli.StringFlag{Name: "device", Usage: "device name", Required: true, Sources: cli.EnvVars("NASREACH_DEVICE")},
			&cli.StringFlag{Name: "token", Usage: "device token (prefer the environment variable: arguments are visible to other users)", Required: true, Sources: cli.EnvVars("NASREACH_TOKEN")},
			&cli.StringSliceFlag{Name: "expose", Usage: "PORT=HOST:PORT: serve device port PORT from the local service HOST:PORT (repeatable; nothing else is reachable)", Required: true, Sources: cli.EnvVars("NASREACH_EXPOSE")},
			&cli.StringFlag{Name: "api", Usage: "the daemon's HTTP API URL: publish the device key and keep the DDNS address current", Sources: cli.EnvVars("NASREACH_API")},
			&cli.StringFlag{Name: "state", Usage: "directory of the device key (default: $STATE_DIRECTORY, else <user config dir>/nasreach/agent)", Sources: cli.EnvVars("NASREACH_AGENT_STATE", "STATE_DIRECTORY")},
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
	return link.AgentConfig{
		Server: cmd.String("server"), RelayFingerprint: cmd.String("relay-fingerprint"),
		Device: cmd.String("device"), Token: cmd.String("token"), Expose: expose,
		StateDir: state, API: cmd.String("api"), DisableDirect: noDirect,
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
	a, err := link.NewAgent(cfg)
	if err != nil {
		return err
	}
	log.Info().Str("device", cfg.Device).Str("relay", cfg.Server).Str("fingerprint", a.Fingerprint()).
		Int("exposed_ports", len(cfg.Expose)).Msg("agent started; clients pin this device with --fingerprint")
	<-ctx.Done()
	log.Info().Msg("agent stopping")
	if err := a.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

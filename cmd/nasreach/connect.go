package main

import (
	"context"
	"fmt"
	"net"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nasreach/nasreach/link"
	"github.com/urfave/cli/v3"
)

// defaultWaitOnline covers an agent reconnecting after a relay restart or
// starting with its NAS, which takes seconds.
const defaultWaitOnline = 20 * time.Second

// connectCommand forwards local TCP connections to a device's port through Link.
func connectCommand() *cli.Command {
	return &cli.Command{
		Name:      "connect",
		Usage:     "forward each TCP connection on --listen to a device's port through a Link relay, end-to-end encrypted",
		ArgsUsage: "DEVICE:PORT",
		Description: describe("",
			"nasreach connect --server relay.example.net:7443 --listen 127.0.0.1:8443 nas1:443",
			"NASREACH_ACCESS_CODE=$CODE nasreach connect --server relay.example.net:7443 nas1:443"),
		Flags: append(append(linkClientFlags(),
			&cli.StringFlag{Name: "listen", Value: "127.0.0.1:8443", Usage: "local TCP address to accept connections on"},
			&cli.StringFlag{Name: "access-code", Usage: "access code, for devices with access \"token\"", Sources: cli.EnvVars("NASREACH_ACCESS_CODE")},
			&cli.StringFlag{Name: "fingerprint", Usage: "pin the device's key (sha256:..., printed by its agent) instead of trusting it on first use"},
			&cli.StringFlag{Name: "known-devices", Usage: "trust-on-first-use file of device keys (default: ~/.config/nasreach/known_devices, or $XDG_CONFIG_HOME/nasreach/known_devices; - keeps none)", Sources: cli.EnvVars("NASREACH_KNOWN_DEVICES")},
			&cli.DurationFlag{Name: "wait-online", Value: defaultWaitOnline, Usage: "how long a connection waits for the device's agent when it is not connected to the relay (0: refuse at once)", Sources: cli.EnvVars("NASREACH_WAIT_ONLINE")},
			&cli.StringFlag{Name: "zone", Usage: "the device zone of a relay cluster: look up in DNS which node holds the device (_nasreach-link._udp.DEVICE.ZONE) and connect there, --server as fallback", Sources: cli.EnvVars("NASREACH_STEER_ZONE")},
			&cli.StringFlag{Name: "resolver", Usage: "the DNS server to ask for --zone's names, HOST:PORT; default: the system's resolver", Sources: cli.EnvVars("NASREACH_RESOLVER")},
			&cli.BoolFlag{Name: "no-resume", Usage: "open plain sessions, which end when their path fails, instead of resumable ones (which keep up to 4 MiB each way in memory); connect opens plain sessions to an agent that predates resumable sessions by itself", Sources: cli.EnvVars("NASREACH_NO_RESUME")},
			&cli.StringFlag{Name: "forget", Usage: "remove the key pinned for `DEVICE` on --server from the known devices file, and exit: after its owner confirms a new key"},
		), logFlags()...),
		Action: runConnect,
	}
}

// parseTarget reads DEVICE:PORT.
func parseTarget(s string) (string, uint16, error) {
	dev, p, ok := strings.Cut(s, ":")
	port, err := strconv.ParseUint(p, 10, 16)
	if !ok || dev == "" || err != nil || port == 0 {
		return "", 0, fmt.Errorf("target %q: want DEVICE:PORT, e.g. nas1:443", s)
	}
	return strings.ToLower(dev), uint16(port), nil
}

func dialerConfigFromFlags(cmd *cli.Command, device string) (link.DialerConfig, error) {
	noDirect, err := disableDirect(cmd)
	if err != nil {
		return link.DialerConfig{}, err
	}
	cfg := link.DialerConfig{
		Server: cmd.String("server"), ServerTCP: cmd.String("server-tcp"), RelayFingerprint: cmd.String("relay-fingerprint"),
		AccessCode: cmd.String("access-code"), KnownDevices: cmd.String("known-devices"),
		WaitOnline:    cmd.Duration("wait-online"),
		DisableDirect: noDirect,
		DisableResume: cmd.Bool("no-resume"),
	}
	if fp := cmd.String("fingerprint"); fp != "" {
		cfg.Fingerprints = map[string]string{device: fp}
	}
	if zone := cmd.String("zone"); zone != "" {
		cfg.Steer = &link.Steer{Zone: zone, Resolver: cmd.String("resolver")}
	} else if cmd.String("resolver") != "" {
		return cfg, fmt.Errorf("--resolver: set only with --zone (the zone whose names say which relay node holds the device)")
	}
	return cfg, nil
}

func runConnect(ctx context.Context, cmd *cli.Command) error {
	log, _, err := newLogger(cmd, cmd.Root().ErrWriter)
	if err != nil {
		return err
	}
	if dev := cmd.String("forget"); dev != "" {
		return forgetDevice(cmd, dev)
	}
	if cmd.Args().Len() != 1 {
		return fmt.Errorf("want exactly one DEVICE:PORT argument, e.g. nasreach connect --server relay.example.net:7443 nas1:443")
	}
	device, port, err := parseTarget(cmd.Args().First())
	if err != nil {
		return err
	}
	cfg, err := dialerConfigFromFlags(cmd, device)
	if err != nil {
		return err
	}
	cfg.Logger = log.With().Str("component", "connect").Logger()
	d, err := link.NewDialer(cfg)
	if err != nil {
		return err
	}
	defer d.Close()
	ln, err := net.Listen("tcp", cmd.String("listen"))
	if err != nil {
		return fmt.Errorf("listen %s: %w", cmd.String("listen"), err)
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ev := log.Info().Str("listen", ln.Addr().String()).Str("device", device).Uint16("port", port).Str("relay", cfg.Server)
	if known, err := knownDevicesPath(cmd); err == nil && known != "-" {
		ev = ev.Str("known_devices", known)
	}
	ev.Msg("forwarding connections")
	return d.Serve(ctx, ln, device, port)
}

// knownDevicesPath is the known devices file connect uses: --known-devices,
// else the default under the user's config directory.
func knownDevicesPath(cmd *cli.Command) (string, error) {
	if f := cmd.String("known-devices"); f != "" {
		return f, nil
	}
	return link.KnownDevicesFile()
}

// forgetDevice is connect --forget DEVICE.
func forgetDevice(cmd *cli.Command, device string) error {
	if cmd.Args().Len() != 0 {
		return fmt.Errorf("--forget takes no DEVICE:PORT argument")
	}
	file, err := knownDevicesPath(cmd)
	if err != nil {
		return err
	}
	if file == "-" {
		return fmt.Errorf("--forget: --known-devices - keeps no pinned keys")
	}
	server, device := cmd.String("server"), strings.ToLower(device)
	n, err := link.ForgetDevice(file, server, device)
	if err != nil {
		return err
	}
	if n == 0 {
		fmt.Fprintf(cmd.Root().Writer, "%s holds no key for %s on relay %s\n", file, device, server)
		return nil
	}
	fmt.Fprintf(cmd.Root().Writer, "removed the key pinned for %s on relay %s from %s; the next connection trusts the key it presents and records it\n",
		device, server, file)
	return nil
}

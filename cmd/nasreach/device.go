package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nasreach/nasreach/api/client"
	"github.com/nasreach/nasreach/daemon"
	"github.com/urfave/cli/v3"
)

// deviceCommand manages devices through the running daemon's API: bbolt
// allows one process per file, so the CLI never opens the store itself.
func deviceCommand() *cli.Command {
	return &cli.Command{
		Name:  "device",
		Usage: "manage devices through the running daemon",
		Description: describe("On the daemon's machine the commands talk to its local socket <data>/"+daemon.SocketFile+
			" (no token needed; run them as root or the daemon's user); with --server they use the HTTP API and the admin token.",
			"nasreach device --data /var/lib/nasreach list",
			"NASREACH_ADMIN_TOKEN=$(cat admin.token) nasreach device --server https://ddns.example.net list"),
		Flags: apiClientFlags(),
		Commands: []*cli.Command{
			{
				Name: "add", Usage: "register a device and print its token (shown once)", ArgsUsage: "NAME",
				Description: describe("The device updates its address with the token: dyndns2 (ddclient, inadyn, routers) or the REST API.",
					"nasreach device add nas1",
					"nasreach device add --uninitialized nas1"),
				Flags:  []cli.Flag{&cli.BoolFlag{Name: "uninitialized", Usage: "create it uninitialized (expires unless activated)"}},
				Action: deviceAdd,
			},
			{
				Name: "list", Usage: "list all devices",
				Description: describe("--json prints the devices as the API shows them, a JSON array of what 'device show' prints.",
					"nasreach device list",
					"nasreach device list --json | jq -r '.[] | select(.link) | .name'"),
				Flags:  []cli.Flag{jsonFlag()},
				Action: deviceList,
			},
			{
				Name: "show", Usage: "print everything stored about a device (JSON)", ArgsUsage: "NAME",
				Description: describe("", "nasreach device show nas1"),
				Action:      deviceShow,
			},
			{
				Name: "rm", Usage: "delete a device and all its data", ArgsUsage: "NAME",
				Description: describe("The name stops resolving in the next DNS answer and stays unavailable for the quarantine (24 h).",
					"nasreach device rm nas1"),
				Action: deviceRm,
			},
			{
				Name: "set", Usage: "change a device's switches", ArgsUsage: "NAME",
				Description: describe("",
					"nasreach device set --ddns=false nas1",
					"nasreach device set --link --access token nas1"),
				Flags: []cli.Flag{
					&cli.BoolFlag{Name: "ddns", Usage: "whether the name resolves"},
					&cli.BoolFlag{Name: "link", Usage: "whether Link sessions are allowed"},
					&cli.StringFlag{Name: "access", Usage: "who may connect through Link: public, or token (clients need an access code)"},
					&cli.StringFlag{Name: "state", Usage: "active or uninitialized"},
				},
				Action: deviceSet,
			},
			{
				Name: "set-address", Usage: "set or clear a device's addresses, as its DDNS client would", ArgsUsage: "NAME",
				Description: describe("The name resolves to the new address in the very next DNS answer.",
					"nasreach device set-address --ipv4 203.0.113.10 nas1",
					"nasreach device set-address --ipv6 2001:db8::10 --clear-ipv4 nas1"),
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "ipv4", Usage: "the device's IPv4 address"},
					&cli.StringFlag{Name: "ipv6", Usage: "the device's IPv6 address"},
					&cli.BoolFlag{Name: "clear-ipv4", Usage: "remove the IPv4 address (no A record)"},
					&cli.BoolFlag{Name: "clear-ipv6", Usage: "remove the IPv6 address (no AAAA record)"},
				},
				Action: deviceSetAddress,
			},
			accessCodeCommand(),
			tsigCommand(),
		},
	}
}

// apiClientFlags are the flags of the commands that call the daemon's API
// (device, backup): where it is and how to authenticate.
func apiClientFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "server", Value: "http://" + defaultHTTPAddr, Usage: "the daemon's HTTP API URL",
			DefaultText: "its local socket <data>/" + daemon.SocketFile + " when there, else http://" + defaultHTTPAddr, Sources: cli.EnvVars("NASREACH_SERVER")},
		&cli.StringFlag{Name: "admin-token", Usage: "admin token for --server", DefaultText: "read from <data>/" + daemon.AdminTokenFile, Sources: cli.EnvVars("NASREACH_ADMIN_TOKEN")},
		&cli.StringFlag{Name: "data", Value: defaultDataDir, Usage: "the daemon's data directory, to find its local socket or admin.token", Sources: cli.EnvVars("NASREACH_DATA", "STATE_DIRECTORY")},
	}
}

// jsonFlag is --json of the commands whose output a script may read.
func jsonFlag() cli.Flag {
	return &cli.BoolFlag{Name: "json", Usage: "print JSON instead of a table"}
}

// newAPIClient is the API client the admin commands use: the daemon's local
// socket, or --server with the admin token from --admin-token or the
// daemon's data directory.
func newAPIClient(cmd *cli.Command) (*client.Client, error) {
	// The local socket needs no token and is never locked out by failed
	// logins from the network; it is there when the daemon runs on this
	// machine and this user may open its data directory.
	if !cmd.IsSet("server") && !cmd.IsSet("admin-token") {
		sock := filepath.Join(cmd.String("data"), daemon.SocketFile)
		if info, err := os.Stat(sock); err == nil && info.Mode().Type() == fs.ModeSocket {
			return client.New(client.Config{Socket: sock})
		}
	}
	token := cmd.String("admin-token")
	if token == "" {
		file := filepath.Join(cmd.String("data"), daemon.AdminTokenFile)
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("no --admin-token given and cannot read %s (run as the daemon's user or pass --admin-token): %w", file, err)
		}
		token = strings.TrimSpace(string(b))
	}
	c, err := client.New(client.Config{Server: cmd.String("server"), Token: token})
	if err != nil {
		return nil, fmt.Errorf("bad --server: %w", err)
	}
	return c, nil
}

func oneName(cmd *cli.Command) (string, error) {
	if cmd.Args().Len() != 1 {
		return "", fmt.Errorf("%s: want exactly one device NAME", cmd.Name)
	}
	return cmd.Args().First(), nil
}

// nameAndClient reads the one NAME argument and builds the API client.
func nameAndClient(cmd *cli.Command) (string, *client.Client, error) {
	name, err := oneName(cmd)
	if err != nil {
		return "", nil, err
	}
	c, err := newAPIClient(cmd)
	return name, c, err
}

func deviceAdd(ctx context.Context, cmd *cli.Command) error {
	name, c, err := nameAndClient(cmd)
	if err != nil {
		return err
	}
	req := client.CreateRequest{Name: name}
	if cmd.Bool("uninitialized") {
		req.State = client.StateUninitialized
	}
	out, err := c.Create(ctx, req)
	if err != nil {
		return err
	}
	fmt.Fprintf(cmd.Root().Writer, "name:  %s\nfqdn:  %s\ntoken: %s\n(the token is shown only now; store it on the device)\n", out.Name, out.FQDN, out.Token)
	return nil
}

func deviceList(ctx context.Context, cmd *cli.Command) error {
	c, err := newAPIClient(cmd)
	if err != nil {
		return err
	}
	devices, err := c.Devices(ctx)
	if err != nil {
		return err
	}
	if cmd.Bool("json") {
		if devices == nil {
			devices = []client.Device{} // [], not null, for jq
		}
		return printJSON(cmd.Root().Writer, devices)
	}
	tw := tabwriter.NewWriter(cmd.Root().Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tIPV4\tIPV6\tDDNS\tLINK\tACCESS\tSTATE\tUPDATED")
	for _, d := range devices {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.Name, addrOrDash(d.IPv4), addrOrDash(d.IPv6), onOff(d.DDNS), onOff(d.Link),
			d.Access, d.State, d.Updated.UTC().Format(time.RFC3339))
	}
	return tw.Flush()
}

func addrOrDash(a netip.Addr) string {
	if !a.IsValid() {
		return "-"
	}
	return a.String()
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func deviceShow(ctx context.Context, cmd *cli.Command) error {
	name, c, err := nameAndClient(cmd)
	if err != nil {
		return err
	}
	d, err := c.Device(ctx, name)
	if err != nil {
		return err
	}
	return printJSON(cmd.Root().Writer, d)
}

// printJSON prints v as indented JSON, the form of every --json output.
func printJSON(w io.Writer, v any) error {
	out, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(out))
	return err
}

func deviceRm(ctx context.Context, cmd *cli.Command) error {
	name, c, err := nameAndClient(cmd)
	if err != nil {
		return err
	}
	if err := c.Delete(ctx, name); err != nil {
		return err
	}
	fmt.Fprintf(cmd.Root().Writer, "deleted %s\n", name)
	return nil
}

func deviceSet(ctx context.Context, cmd *cli.Command) error {
	name, err := oneName(cmd)
	if err != nil {
		return err
	}
	var patch client.Patch
	if cmd.IsSet("ddns") {
		patch.DDNS = new(cmd.Bool("ddns"))
	}
	if cmd.IsSet("link") {
		patch.Link = new(cmd.Bool("link"))
	}
	if cmd.IsSet("access") {
		patch.Access = new(client.Access(cmd.String("access")))
	}
	if cmd.IsSet("state") {
		patch.State = new(client.State(cmd.String("state")))
	}
	if patch == (client.Patch{}) {
		return errors.New("set: give at least one of --ddns, --link, --access, --state")
	}
	c, err := newAPIClient(cmd)
	if err != nil {
		return err
	}
	out, err := c.Update(ctx, name, patch)
	if err != nil {
		return err
	}
	fmt.Fprintf(cmd.Root().Writer, "%s: ddns %s, link %s, access %s, state %s\n", out.Name, onOff(out.DDNS), onOff(out.Link), out.Access, out.State)
	return nil
}

func deviceSetAddress(ctx context.Context, cmd *cli.Command) error {
	name, err := oneName(cmd)
	if err != nil {
		return err
	}
	var u client.AddressUpdate
	for _, f := range []struct {
		flag, family string
		is           func(netip.Addr) bool
		out          **string
	}{
		{"ipv4", "IPv4", netip.Addr.Is4, &u.IPv4},
		{"ipv6", "IPv6", func(a netip.Addr) bool { return a.Is6() && !a.Is4In6() }, &u.IPv6},
	} {
		clear := "clear-" + f.flag
		switch {
		case cmd.IsSet(f.flag) && cmd.Bool(clear):
			return fmt.Errorf("set-address: --%s sets the %s address and --%s removes it; give one of them", f.flag, f.family, clear)
		case cmd.Bool(clear):
			*f.out = new("")
		case cmd.IsSet(f.flag):
			a, err := netip.ParseAddr(cmd.String(f.flag))
			if err != nil || !f.is(a) {
				return fmt.Errorf("set-address: --%s %q is not an %s address", f.flag, cmd.String(f.flag), f.family)
			}
			*f.out = new(a.String())
		}
	}
	if u == (client.AddressUpdate{}) {
		return errors.New("set-address: give --ipv4, --ipv6, --clear-ipv4 or --clear-ipv6")
	}
	c, err := newAPIClient(cmd)
	if err != nil {
		return err
	}
	d, err := c.SetAddress(ctx, name, u)
	if err != nil {
		return err
	}
	w := cmd.Root().Writer
	fmt.Fprintf(w, "%s: ipv4 %s, ipv6 %s\n", d.Name, addrOrDash(d.IPv4), addrOrDash(d.IPv6))
	if !d.DDNS {
		fmt.Fprintf(w, "(ddns is off, so %s does not resolve; 'nasreach device set --ddns %s' turns it on)\n", d.FQDN, d.Name)
	}
	return nil
}

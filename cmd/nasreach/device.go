package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v3"
)

// deviceCommand manages devices through the running daemon's API: bbolt
// allows one process per file, so the CLI never opens the store itself.
func deviceCommand() *cli.Command {
	flags := []cli.Flag{
		&cli.StringFlag{Name: "server", Value: "http://" + defaultHTTPAddr, Usage: "the daemon's HTTP API", Sources: cli.EnvVars("NASREACH_SERVER")},
		&cli.StringFlag{Name: "admin-token", Usage: "admin token (default: read from <data>/admin.token)", Sources: cli.EnvVars("NASREACH_ADMIN_TOKEN")},
		&cli.StringFlag{Name: "data", Value: defaultDataDir, Usage: "the daemon's data directory, to find admin.token", Sources: cli.EnvVars("NASREACH_DATA", "STATE_DIRECTORY")},
	}
	return &cli.Command{
		Name:  "device",
		Usage: "manage devices through the running daemon",
		Flags: flags,
		Commands: []*cli.Command{
			{
				Name: "add", Usage: "register a device and print its token (shown once)", ArgsUsage: "NAME",
				Flags:  []cli.Flag{&cli.BoolFlag{Name: "uninitialized", Usage: "create it uninitialized (expires unless activated)"}},
				Action: deviceAdd,
			},
			{Name: "list", Usage: "list all devices", Action: deviceList},
			{Name: "show", Usage: "print everything stored about a device", ArgsUsage: "NAME", Action: deviceShow},
			{Name: "rm", Usage: "delete a device and all its data", ArgsUsage: "NAME", Action: deviceRm},
			{
				Name: "set", Usage: "change a device's switches", ArgsUsage: "NAME",
				Flags: []cli.Flag{
					&cli.BoolFlag{Name: "ddns", Usage: "whether the name resolves"},
					&cli.BoolFlag{Name: "link", Usage: "whether Link sessions are allowed"},
					&cli.StringFlag{Name: "access", Usage: "public or token"},
					&cli.StringFlag{Name: "state", Usage: "active or uninitialized"},
				},
				Action: deviceSet,
			},
		},
	}
}

// apiClient calls the daemon's API as admin.
type apiClient struct {
	base  string
	token string
	http  *http.Client
}

func newAPIClient(cmd *cli.Command) (*apiClient, error) {
	token := cmd.String("admin-token")
	if token == "" {
		file := filepath.Join(cmd.String("data"), adminTokenFile)
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("no --admin-token given and cannot read %s (run as the daemon's user or pass --admin-token): %w", file, err)
		}
		token = strings.TrimSpace(string(b))
	}
	return &apiClient{
		base:  strings.TrimSuffix(cmd.String("server"), "/"),
		token: token,
		http:  &http.Client{Timeout: 30 * time.Second},
	}, nil
}

// request sends a request and returns the response of a 2xx answer; any
// other answer becomes an error carrying the server's reason.
func (c *apiClient) request(ctx context.Context, method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, fmt.Errorf("bad --server %q: %w", c.base, err)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the daemon at %s (is nasreach serve running?): %w", c.base, err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(data, &e) == nil && e.Error != "" {
		return nil, fmt.Errorf("%s (HTTP %d)", e.Error, resp.StatusCode)
	}
	return nil, fmt.Errorf("HTTP %d from %s", resp.StatusCode, c.base)
}

// do sends a request and decodes the JSON answer into out (if not nil).
func (c *apiClient) do(ctx context.Context, method, path string, body, out any) error {
	resp, err := c.request(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("read answer from %s: %w", c.base, err)
	}
	if out != nil && len(data) > 0 {
		return json.Unmarshal(data, out)
	}
	return nil
}

func oneName(cmd *cli.Command) (string, error) {
	if cmd.Args().Len() != 1 {
		return "", fmt.Errorf("%s: want exactly one device NAME", cmd.Name)
	}
	return cmd.Args().First(), nil
}

// nameAndClient reads the one NAME argument and builds the API client.
func nameAndClient(cmd *cli.Command) (string, *apiClient, error) {
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
	body := map[string]string{"name": name}
	if cmd.Bool("uninitialized") {
		body["state"] = "uninitialized"
	}
	var out struct{ Name, FQDN, Token string }
	if err := c.do(ctx, http.MethodPost, "/v1/devices", body, &out); err != nil {
		return err
	}
	fmt.Fprintf(cmd.Root().Writer, "name:  %s\nfqdn:  %s\ntoken: %s\n(the token is shown only now; store it on the device)\n", out.Name, out.FQDN, out.Token)
	return nil
}

// deviceView is the subset of the API's device JSON the CLI prints.
type deviceView struct {
	Name    string    `json:"name"`
	FQDN    string    `json:"fqdn"`
	IPv4    string    `json:"ipv4"`
	IPv6    string    `json:"ipv6"`
	DDNS    bool      `json:"ddns"`
	Link    bool      `json:"link"`
	Access  string    `json:"access"`
	State   string    `json:"state"`
	Updated time.Time `json:"updated"`
}

func deviceList(ctx context.Context, cmd *cli.Command) error {
	c, err := newAPIClient(cmd)
	if err != nil {
		return err
	}
	var out struct {
		Devices []deviceView `json:"devices"`
	}
	if err := c.do(ctx, http.MethodGet, "/v1/devices", nil, &out); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(cmd.Root().Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tIPV4\tIPV6\tDDNS\tLINK\tACCESS\tSTATE\tUPDATED")
	for _, d := range out.Devices {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.Name, cmpOrDash(d.IPv4), cmpOrDash(d.IPv6), onOff(d.DDNS), onOff(d.Link),
			d.Access, d.State, d.Updated.UTC().Format(time.RFC3339))
	}
	return tw.Flush()
}

func cmpOrDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
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
	var out json.RawMessage
	if err := c.do(ctx, http.MethodGet, "/v1/devices/"+name, nil, &out); err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, out, "", "  "); err != nil {
		return err
	}
	fmt.Fprintln(cmd.Root().Writer, buf.String())
	return nil
}

func deviceRm(ctx context.Context, cmd *cli.Command) error {
	name, c, err := nameAndClient(cmd)
	if err != nil {
		return err
	}
	if err := c.do(ctx, http.MethodDelete, "/v1/devices/"+name, nil, nil); err != nil {
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
	patch := map[string]any{}
	for _, f := range []string{"ddns", "link"} {
		if cmd.IsSet(f) {
			patch[f] = cmd.Bool(f)
		}
	}
	for _, f := range []string{"access", "state"} {
		if cmd.IsSet(f) {
			patch[f] = cmd.String(f)
		}
	}
	if len(patch) == 0 {
		return errors.New("set: give at least one of --ddns, --link, --access, --state")
	}
	c, err := newAPIClient(cmd)
	if err != nil {
		return err
	}
	var out deviceView
	if err := c.do(ctx, http.MethodPatch, "/v1/devices/"+name, patch, &out); err != nil {
		return err
	}
	fmt.Fprintf(cmd.Root().Writer, "%s: ddns %s, link %s, access %s, state %s\n", out.Name, onOff(out.DDNS), onOff(out.Link), out.Access, out.State)
	return nil
}

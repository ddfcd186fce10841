package main

// The device subcommand against a daemon running in process (daemontest):
// what it prints, and that what it does shows in DNS.

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/daemon"
	"github.com/nasreach/nasreach/daemon/daemontest"
)

// clearCLIEnv removes the environment variables the device command reads, so
// that only the flags a test passes count.
func clearCLIEnv(t *testing.T) {
	for _, k := range []string{"NASREACH_SERVER", "NASREACH_ADMIN_TOKEN", "NASREACH_DATA", "STATE_DIRECTORY"} {
		t.Setenv(k, "") // restores the old value when the test ends
		os.Unsetenv(k)
	}
}

// runCLI runs the nasreach command tree in-process, as a user would type
// "nasreach device <flags…> <args…>", and returns what it printed.
func runCLI(t *testing.T, deviceFlags []string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	argv := append(append([]string{"nasreach", "device"}, deviceFlags...), args...)
	err = newApp(&out, &errOut).Run(ctx, argv)
	return out.String(), errOut.String(), err
}

func TestE2EDeviceCLI(t *testing.T) {
	clearCLIEnv(t)
	td := daemontest.Start(t)
	admin := []string{"--server", td.HTTP, "--admin-token", td.Admin}
	run := func(flags []string, args ...string) string {
		t.Helper()
		out, errOut, err := runCLI(t, flags, args...)
		if err != nil {
			t.Fatalf("nasreach device %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, errOut)
		}
		return out
	}

	out := run(admin, "add", "nas9")
	m := regexp.MustCompile(`(?m)^name:  nas9\nfqdn:  nas9\.myqnapcloud\.com\ntoken: (\S+)\n\(the token is shown only now; store it on the device\)\n\z`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("device add printed:\n%s\nwant name, fqdn, token and the shown-once note", out)
	}
	token := m[1]
	// The printed token is the one the NAS needs.
	td.DynDNS2("nas9", token, daemontest.FQDN("nas9"), "203.0.113.9", "good 203.0.113.9")
	td.WantAnswer("udp", daemontest.FQDN("nas9"), dns.TypeA, netip.MustParseAddr("203.0.113.9"))

	out = run(admin, "list")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !regexp.MustCompile(`^NAME\s+IPV4\s+IPV6\s+DDNS\s+LINK\s+ACCESS\s+STATE\s+UPDATED$`).MatchString(lines[0]) ||
		!regexp.MustCompile(`^nas9\s+203\.0\.113\.9\s+-\s+on\s+on\s+public\s+active\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$`).MatchString(lines[1]) {
		t.Fatalf("device list printed:\n%s\nwant a header and one row for nas9 with 203.0.113.9", out)
	}

	out = run(admin, "show", "nas9")
	var shown map[string]any
	if err := json.Unmarshal([]byte(out), &shown); err != nil {
		t.Fatalf("device show printed no JSON (%v):\n%s", err, out)
	}
	if shown["name"] != "nas9" || shown["fqdn"] != "nas9.myqnapcloud.com" || shown["ipv4"] != "203.0.113.9" || shown["ddns"] != true {
		t.Errorf("device show printed:\n%s\nwant name nas9, its fqdn, ipv4 203.0.113.9, ddns true", out)
	}
	if strings.Contains(out, token) {
		t.Errorf("device show printed the device token; it must be shown only once, at add")
	}

	if out = run(admin, "set", "--ddns=false", "nas9"); out != "nas9: ddns off, link on, access public, state active\n" {
		t.Errorf("device set --ddns=false printed %q", out)
	}
	td.WantNXDOMAIN("udp", daemontest.FQDN("nas9"), dns.TypeA)
	if out = run(admin, "set", "--ddns", "nas9"); out != "nas9: ddns on, link on, access public, state active\n" {
		t.Errorf("device set --ddns printed %q", out)
	}
	td.WantAnswer("udp", daemontest.FQDN("nas9"), dns.TypeA, netip.MustParseAddr("203.0.113.9"))
	if _, _, err := runCLI(t, admin, "set", "nas9"); err == nil || !strings.Contains(err.Error(), "give at least one of --ddns") {
		t.Errorf("device set without a switch: err %v, want one naming the switches", err)
	}

	// Without --admin-token the CLI reads <data>/admin.token, as on the server.
	byFile := []string{"--server", td.HTTP, "--data", td.Dir}
	if out = run(byFile, "list"); !strings.Contains(out, "nas9") {
		t.Errorf("device list with the token from %s printed:\n%s", td.Dir, out)
	}

	// A wrong token is refused with a message that says which token is wanted.
	out, _, err := runCLI(t, []string{"--server", td.HTTP, "--admin-token", "not-the-admin-token"}, "list")
	if err == nil || !strings.Contains(err.Error(), "admin token") || !strings.Contains(err.Error(), "HTTP 401") || out != "" {
		t.Errorf("device list with a wrong token: err %v, stdout %q; want an error naming the admin token and HTTP 401", err, out)
	}
	// No token and no token file: the error names the file it looked for.
	empty := t.TempDir()
	_, _, err = runCLI(t, []string{"--server", td.HTTP, "--data", empty}, "list")
	if err == nil || !strings.Contains(err.Error(), "--admin-token") || !strings.Contains(err.Error(), filepath.Join(empty, daemon.AdminTokenFile)) {
		t.Errorf("device list without any token: err %v, want one naming --admin-token and %s", err, filepath.Join(empty, daemon.AdminTokenFile))
	}

	if out = run(admin, "rm", "nas9"); out != "deleted nas9\n" {
		t.Errorf("device rm printed %q", out)
	}
	td.WantNXDOMAIN("udp", daemontest.FQDN("nas9"), dns.TypeA)
	if _, _, err := runCLI(t, admin, "show", "nas9"); err == nil || !strings.Contains(err.Error(), "no such device (HTTP 404)") {
		t.Errorf("device show after rm: err %v, want no such device (HTTP 404)", err)
	}
	if out = run(admin, "list"); strings.Contains(out, "nas9") {
		t.Errorf("device list after rm still shows nas9:\n%s", out)
	}
}

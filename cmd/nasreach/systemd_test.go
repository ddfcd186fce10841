package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/daemon"
	"github.com/nasreach/nasreach/daemon/daemontest"
)

// The shipped unit, dist/systemd/nasreach.service, checked offline with
// systemd-analyze, and its sandbox checked against what the daemon really
// does.

const (
	unitFile = "../../dist/systemd/nasreach.service"
	// maxExposure is the most `systemd-analyze security` may score the unit.
	// Debian's own units on the same check: nsd 5.0, knot 7.0, coturn 9.0.
	maxExposure = 1.5
	// unitExecStart is the unit's command line; the tests swap the path.
	unitExecStart = "ExecStart=/usr/local/bin/nasreach serve"
)

func needSystemdAnalyze(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skipf("systemd-analyze not installed (apt-get install systemd): %v", err)
	}
	return p
}

// unitText returns the shipped unit.
func unitText(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// unitSetting returns every value the unit assigns to key, in order.
func unitSetting(unit, key string) []string {
	var vals []string
	for line := range strings.SplitSeq(unit, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok && k == key {
			vals = append(vals, v)
		}
	}
	return vals
}

// unitCopy writes the unit, with ExecStart pointing at bin plus extra
// arguments, as dir/nasreach.service.
func unitCopy(t *testing.T, dir, bin string, args ...string) string {
	t.Helper()
	text := unitText(t)
	if !strings.Contains(text, unitExecStart) {
		t.Fatalf("%s has no line %q", unitFile, unitExecStart)
	}
	line := strings.Join(append([]string{"ExecStart=" + bin, "serve"}, args...), " ")
	path := filepath.Join(dir, "nasreach.service")
	if err := os.WriteFile(path, []byte(strings.Replace(text, unitExecStart, line, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestUnitPassesSystemdVerify(t *testing.T) {
	analyze := needSystemdAnalyze(t)
	// verify checks that ExecStart is executable, so point it at a real build.
	unit := unitCopy(t, t.TempDir(), buildNasreach(t))
	out, err := exec.Command(analyze, "verify", "--man=no", unit).CombinedOutput()
	// Unknown or misspelt settings are only warnings (exit 0), and systemd
	// would silently ignore them: any output is a failure.
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify %s: %v\n%s", unitFile, err, out)
	}
}

var exposureLine = regexp.MustCompile(`Overall exposure level for nasreach\.service: ([0-9.]+)`)

func TestUnitSandboxExposureAtMost1_5(t *testing.T) {
	analyze := needSystemdAnalyze(t)
	out, _ := exec.Command(analyze, "security", "--offline=yes", "--no-pager", unitFile).CombinedOutput()
	m := exposureLine.FindSubmatch(out)
	if m == nil {
		t.Fatalf("systemd-analyze security printed no overall exposure:\n%s", out)
	}
	score, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	var open []string
	for line := range strings.SplitSeq(string(out), "\n") {
		if strings.HasPrefix(line, "✗") {
			open = append(open, strings.Join(strings.Fields(line), " "))
		}
	}
	t.Logf("exposure %.1f; not restricted:\n%s", score, strings.Join(open, "\n"))
	if score > maxExposure {
		t.Fatalf("unit exposure %.1f is above %.1f; tighten one of the settings listed above", score, maxExposure)
	}
}

// TestUnitFitsWhatTheDaemonNeeds guards the settings a lower exposure score
// could tempt someone to drop, each of which would break the daemon.
func TestUnitFitsWhatTheDaemonNeeds(t *testing.T) {
	unit := unitText(t)
	for _, tc := range []struct {
		key, want, why string
	}{
		{"Type", "notify", "the daemon sends READY=1 once it serves"},
		{"NotifyAccess", "main", "only the daemon itself may report its state"},
		{"AmbientCapabilities", "CAP_NET_BIND_SERVICE", "a DynamicUser binds port 53 only with it"},
		{"CapabilityBoundingSet", "CAP_NET_BIND_SERVICE", "and nothing else"},
		{"RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX", "DNS and HTTP need IP sockets, READY=1 and the watchdog an AF_UNIX one"},
		{"StateDirectory", "nasreach", "ProtectSystem=strict leaves only it writable for the store"},
		{"DynamicUser", "yes", "no fixed uid owns anything outside the state directory"},
	} {
		if got := unitSetting(unit, tc.key); !slices.Contains(got, tc.want) {
			t.Errorf("%s=%v, want %s: %s", tc.key, got, tc.want, tc.why)
		}
	}
	if got := unitSetting(unit, "PrivateUsers"); slices.Contains(got, "yes") || slices.Contains(got, "true") {
		t.Errorf("PrivateUsers=yes: in a user namespace CAP_NET_BIND_SERVICE does not count for the host's network, so port 53 cannot be bound")
	}
	if got := unitSetting(unit, "ProcSubset"); slices.Contains(got, "pid") {
		t.Errorf("ProcSubset=pid hides /proc/sys/net/core/somaxconn, and Go then caps every listen backlog at 128")
	}
	wd := unitSetting(unit, "WatchdogSec")
	if len(wd) != 1 {
		t.Fatalf("WatchdogSec=%v, want one value so a hung daemon is restarted", wd)
	}
	if d, err := time.ParseDuration(wd[0]); err != nil || d < 10*time.Second {
		// The health check is a DNS query bounded by half the interval; a
		// busy server must not be restarted for one slow answer.
		t.Errorf("WatchdogSec=%s, want a duration of at least 10s", wd[0])
	}
}

// syscallGroups returns systemd's named system call sets (@system-service…)
// as systemd-analyze lists them, nested sets unresolved.
func syscallGroups(t *testing.T, analyze string) map[string][]string {
	t.Helper()
	out, err := exec.Command(analyze, "syscall-filter", "--no-pager").Output()
	if err != nil {
		t.Fatalf("systemd-analyze syscall-filter: %v", err)
	}
	groups := map[string][]string{}
	var cur string
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		line := sc.Text()
		switch f := strings.TrimSpace(line); {
		case f == "" || strings.HasPrefix(f, "#"):
		case !strings.HasPrefix(line, " ") && strings.HasPrefix(f, "@"):
			cur = f
		case cur != "":
			groups[cur] = append(groups[cur], f)
		}
	}
	if len(groups["@system-service"]) == 0 {
		t.Fatalf("systemd-analyze syscall-filter lists no @system-service:\n%s", out)
	}
	return groups
}

// expand resolves a SystemCallFilter= item (a call or a @set) into calls.
func expand(groups map[string][]string, item string, into map[string]bool) {
	if !strings.HasPrefix(item, "@") {
		into[item] = true
		return
	}
	for _, sub := range groups[item] {
		expand(groups, sub, into)
	}
}

// allowedSyscalls evaluates the unit's SystemCallFilter= lines the way
// systemd does: the first decides allow- or deny-list, later ones with '~'
// deny and without allow.
func allowedSyscalls(t *testing.T, groups map[string][]string, unit string) func(string) bool {
	t.Helper()
	lines := unitSetting(unit, "SystemCallFilter")
	if len(lines) == 0 {
		t.Fatal("unit has no SystemCallFilter=")
	}
	allowList := !strings.HasPrefix(lines[0], "~")
	set := map[string]bool{}
	for _, l := range lines {
		deny := strings.HasPrefix(l, "~")
		items := map[string]bool{}
		for _, it := range strings.Fields(strings.TrimPrefix(l, "~")) {
			expand(groups, it, items)
		}
		for sc := range items {
			set[sc] = allowList != deny // add to an allow-list or to a deny-list
		}
	}
	return func(sc string) bool { return set[sc] == allowList }
}

var straceCall = regexp.MustCompile(`^\d+\s+([a-z0-9_]+)\(`)

// TestUnitSyscallFilterAllowsEveryCallTheDaemonMakes traces the daemon through
// start, READY=1, watchdog pings, DNS over UDP and TCP, an HTTP write to the
// store and a SIGTERM shutdown, and checks every system call it made against
// the unit's SystemCallFilter=. A call the filter refuses would fail with
// EPERM under systemd: a daemon that starts here and breaks in production.
func TestUnitSyscallFilterAllowsEveryCallTheDaemonMakes(t *testing.T) {
	analyze := needSystemdAnalyze(t)
	strace, err := exec.LookPath("strace")
	if err != nil {
		t.Skipf("strace not installed (apt-get install strace): %v", err)
	}
	if out, err := exec.Command(strace, "-f", "-qq", "-o", os.DevNull, "true").CombinedOutput(); err != nil {
		t.Skipf("strace cannot trace here (ptrace not permitted?): %v %s", err, out)
	}
	allowed := allowedSyscalls(t, syscallGroups(t, analyze), unitText(t))

	// The daemon runs as strace's child: strace -o FILE -f BIN serve ...
	bin := buildNasreach(t)
	trace := filepath.Join(t.TempDir(), "strace.out")
	wrapper := filepath.Join(t.TempDir(), "traced-nasreach")
	script := fmt.Sprintf("#!/bin/sh\nexec %s -f -qq -o %s %s \"$@\"\n", strace, trace, bin)
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	creds := t.TempDir()
	if err := os.WriteFile(filepath.Join(creds, adminTokenCredential), []byte("traced-admin-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := newNotifySocket(t)
	p := startNasreach(t, wrapper, "NOTIFY_SOCKET="+sock.Path, "WATCHDOG_USEC=200000", "CREDENTIALS_DIRECTORY="+creds)
	ready := sock.waitFor("READY", "1", 60*time.Second)
	status := statusAddrs.FindStringSubmatch(ready.Fields["STATUS"])
	if status == nil {
		t.Fatalf("STATUS=%q does not say where the daemon listens", ready.Fields["STATUS"])
	}
	for _, transport := range []string{"udp", "tcp"} {
		q := new(dns.Msg).SetQuestion(dns.Fqdn(status[1]), dns.TypeSOA)
		if _, _, err := (&dns.Client{Net: transport, Timeout: 5 * time.Second}).Exchange(q, status[2]); err != nil {
			t.Fatalf("DNS over %s: %v", transport, err)
		}
	}
	req, _ := http.NewRequest(http.MethodPost, "http://"+status[3]+"/v1/devices", strings.NewReader(`{"name":"nas1"}`))
	req.Header.Set("Authorization", "Bearer traced-admin-token")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("create a device: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create a device with the credential's admin token: HTTP %d", resp.StatusCode)
	}
	sock.waitFor("WATCHDOG", "1", 5*time.Second)
	if err := syscall.Kill(ready.PID, syscall.SIGTERM); err != nil { // the daemon, not strace
		t.Fatal(err)
	}
	sock.waitFor("STOPPING", "1", 10*time.Second)
	select {
	case <-p.exited:
	case <-time.After(daemon.ShutdownTimeout + 10*time.Second):
		t.Fatal("traced daemon did not exit after SIGTERM")
	}

	b, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	for line := range strings.SplitSeq(string(b), "\n") {
		if m := straceCall.FindStringSubmatch(line); m != nil {
			used[m[1]] = true
		}
	}
	if len(used) < 20 {
		t.Fatalf("strace saw only %d distinct calls; the trace is not of the daemon:\n%s", len(used), b)
	}
	var refused []string
	for sc := range used {
		if sc != "execve" && !allowed(sc) { // execve is strace starting the daemon
			refused = append(refused, sc)
		}
	}
	slices.Sort(refused)
	t.Logf("daemon made %d distinct system calls", len(used))
	if len(refused) > 0 {
		t.Fatalf("the unit's SystemCallFilter refuses calls the daemon makes: %s", strings.Join(refused, " "))
	}
}

func TestAdminTokenFromSystemdCredential(t *testing.T) {
	creds := t.TempDir()
	t.Setenv("CREDENTIALS_DIRECTORY", creds)
	if err := os.WriteFile(filepath.Join(creds, adminTokenCredential), []byte("operator-chosen-token\n"), 0o400); err != nil {
		t.Fatal(err)
	}
	cfg, err := parseServeConfig(context.Background(), []string{"nasreach", "serve"})
	if err != nil {
		t.Fatal(err)
	}
	td := daemontest.Start(t, func(c *daemon.Config) { c.AdminToken = cfg.AdminToken })
	if td.Admin != "operator-chosen-token" {
		t.Fatalf("admin token %q, want the credential's", td.Admin)
	}
	td.AddDevice("nas1") // the API accepts it
	if _, err := os.Stat(filepath.Join(td.Dir, daemon.AdminTokenFile)); !os.IsNotExist(err) {
		t.Fatalf("a token was generated into the data directory although the credential is set: %v", err)
	}
}

func TestEmptyAdminTokenCredentialIsRefused(t *testing.T) {
	creds := t.TempDir()
	t.Setenv("CREDENTIALS_DIRECTORY", creds)
	file := filepath.Join(creds, adminTokenCredential)
	if err := os.WriteFile(file, []byte("\n"), 0o400); err != nil {
		t.Fatal(err)
	}
	// Not a silent fallback to a generated token the operator does not know.
	dataDir := t.TempDir()
	cfg, err := parseServeConfig(context.Background(), []string{"nasreach", "serve", "--data", dataDir})
	if err == nil {
		t.Fatalf("an empty admin-token credential was accepted; token %q", cfg.AdminToken)
	}
	if !strings.Contains(err.Error(), file) {
		t.Fatalf("error %q does not name the credential file %s", err, file)
	}
	if _, err := os.Stat(filepath.Join(dataDir, daemon.AdminTokenFile)); !os.IsNotExist(err) {
		t.Fatalf("a token was generated despite the broken credential: %v", err)
	}
}

// TestUnitStartsUnderSystemd installs the unit (ExecStart pointed at a fresh
// build, DNS on port 53 of a random 127/8 address) and starts it for real:
// systemd must see READY=1 with the whole sandbox applied, the DynamicUser
// must bind port 53 through its one capability, and stop must be clean.
func TestUnitStartsUnderSystemd(t *testing.T) {
	if comm, _ := os.ReadFile("/proc/1/comm"); strings.TrimSpace(string(comm)) != "systemd" {
		t.Skipf("PID 1 is %q, not systemd: the unit can only be verified and analysed here", strings.TrimSpace(string(comm)))
	}
	if os.Geteuid() != 0 {
		t.Skip("installing a system unit needs root")
	}
	systemctl, err := exec.LookPath("systemctl")
	if err != nil {
		t.Skipf("no systemctl: %v", err)
	}
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	name := "nasreach-test-" + hex.EncodeToString(rnd[:4])
	// PrivateTmp hides /tmp from the service, so the binary lives in /run.
	dir := filepath.Join("/run", name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "nasreach")
	if out, err := exec.Command("cp", buildNasreach(t), bin).CombinedOutput(); err != nil {
		t.Fatalf("copy binary: %v %s", err, out)
	}
	loop := fmt.Sprintf("127.%d.%d.%d", rnd[4]%254+1, rnd[5]%254+1, rnd[6]%253+2)
	unit := unitCopy(t, t.TempDir(), bin, "--dns", loop+":53", "--http", loop+":0", "--metrics", loop+":0",
		"--stun", loop+":0", "--link", loop+":0", "--link-tcp", loop+":0")
	text, _ := os.ReadFile(unit)
	// A unique name, and its own state directory, so nothing of a real
	// installation is touched.
	text = []byte(strings.ReplaceAll(string(text), "Directory=nasreach", "Directory="+name))
	text = []byte(strings.ReplaceAll(string(text), "EnvironmentFile=-/etc/nasreach/nasreach.env", ""))
	unitPath := filepath.Join("/run/systemd/system", name+".service")
	if err := os.WriteFile(unitPath, text, 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, systemctl, args...).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	t.Cleanup(func() {
		_, _ = run("stop", name)
		os.Remove(unitPath)
		_, _ = run("daemon-reload")
		if t.Failed() {
			out, _ := exec.Command("journalctl", "-u", name, "--no-pager", "-n", "50").CombinedOutput()
			t.Logf("journal:\n%s", out)
		}
	})
	if out, err := run("daemon-reload"); err != nil {
		t.Fatalf("daemon-reload: %v %s", err, out)
	}
	// For Type=notify, start returns only after READY=1.
	if out, err := run("start", name); err != nil {
		t.Fatalf("systemctl start: %v %s", err, out)
	}
	statusText, _ := run("show", "-p", "StatusText", "--value", name)
	status := statusAddrs.FindStringSubmatch(statusText)
	if status == nil || status[2] != loop+":53" {
		t.Fatalf("status %q, want the daemon serving on %s:53", statusText, loop)
	}
	q := new(dns.Msg).SetQuestion(dns.Fqdn(status[1]), dns.TypeSOA)
	if r, _, err := (&dns.Client{Net: "udp", Timeout: 2 * time.Second}).Exchange(q, status[2]); err != nil || r.Rcode != dns.RcodeSuccess {
		t.Fatalf("DNS query to the unit on %s: %v %v", status[2], err, r)
	}
	if out, err := run("stop", name); err != nil {
		t.Fatalf("systemctl stop: %v %s", err, out)
	}
	if result, _ := run("show", "-p", "Result", "--value", name); result != "success" {
		t.Fatalf("unit result after stop: %q, want success", result)
	}
}

package daemon_test

// Interoperability with the real clients and tools users run: Debian's
// ddclient, inadyn and dig, and coturn's turnutils_uclient, started with
// os/exec against the in-process daemon. Every client is configured so that it talks to nothing
// but 127.0.0.1: addresses are given or detected through our own /v1/ip, and
// inadyn's start-up DNS lookup of its hostname is avoided by seeding its cache.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nasreach/nasreach/daemon"
	"github.com/nasreach/nasreach/daemon/daemontest"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/turnserver"
)

// toolTimeout bounds every external command.
const toolTimeout = 30 * time.Second

// transcripts holds, per test, every external command and its output, so
// that a failing test logs them in the order they ran.
var transcripts sync.Map // *testing.T -> *transcript

type transcript struct {
	mu      sync.Mutex
	entries []string
}

func (tr *transcript) add(s string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.entries = append(tr.entries, s)
}

// recordCommand adds one command run to t's transcript, which is logged with
// t.Log if the test fails.
func recordCommand(t *testing.T, s string) {
	v, loaded := transcripts.LoadOrStore(t, &transcript{})
	tr := v.(*transcript)
	if !loaded {
		t.Cleanup(func() {
			transcripts.Delete(t)
			if t.Failed() {
				tr.mu.Lock()
				defer tr.mu.Unlock()
				t.Log("external commands run by this test, in order:\n" + strings.Join(tr.entries, "\n"))
			}
		})
	}
	tr.add(s)
}

// runTool runs bin with args under toolTimeout and returns its combined
// output and exit error; both are logged if the test fails.
func runTool(t *testing.T, bin string, args ...string) (string, error) {
	t.Helper()
	return runToolEnv(t, toolTimeout, nil, bin, args...)
}

// runToolEnv is runTool with a timeout of its own and env added to the
// environment.
func runToolEnv(t *testing.T, timeout time.Duration, env []string, bin string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(toolEnv(), env...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s timed out after %v: %w", filepath.Base(bin), timeout, err)
	}
	recordCommand(t, fmt.Sprintf("$ %s\n%s(exit: %v)\n", strings.Join(append([]string{filepath.Base(bin)}, args...), " "), out, exitStatus(err)))
	return string(out), err
}

// exitStatus describes how a command ended: "0" or its error.
func exitStatus(err error) string {
	if err != nil {
		return err.Error()
	}
	return "0"
}

// toolEnv is the environment for external clients: ours without proxy
// settings, so nothing is sent anywhere but to the daemon on 127.0.0.1.
func toolEnv() []string { return testutil.ToolEnv() }

// portOf returns the port of a host:port or http://host:port address.
func portOf(t *testing.T, addr string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(strings.TrimPrefix(addr, "http://"))
	if err != nil {
		t.Fatalf("port of %s: %v", addr, err)
	}
	return p
}

// digOutput runs dig against the daemon's DNS port only, ignoring ~/.digrc,
// and returns its output.
func digOutput(td *daemontest.Daemon, args ...string) string {
	td.T.Helper()
	bin := testutil.NeedTool(td.T, "dig")
	argv := append([]string{"-r", "@127.0.0.1", "-p", portOf(td.T, td.DNS), "+time=2", "+tries=1"}, args...)
	out, err := runTool(td.T, bin, argv...)
	if err != nil {
		td.T.Fatalf("dig %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// wantDig fails the test unless `dig name qtype +short` prints exactly want.
func wantDig(td *daemontest.Daemon, name, qtype, want string, extra ...string) {
	td.T.Helper()
	got := strings.TrimSpace(digOutput(td, append([]string{name, qtype, "+short"}, extra...)...))
	if got != want {
		td.T.Fatalf("dig %s %s +short %s printed %q, want %q", name, qtype, strings.Join(extra, " "), got, want)
	}
}

// writePrivateFile writes a client's config or cache, mode 0600 because a
// config holds a device token.
func writePrivateFile(t *testing.T, path, text string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// ddclientConf is a ddclient 3.10 configuration updating host through the
// daemon with dyndns2; addr is the address-detection line.
func ddclientConf(td *daemontest.Daemon, login, password, addr, host string) string {
	return fmt.Sprintf(`# ddclient for nasreach: dyndns2 over plain HTTP to the daemon on loopback
protocol=dyndns2
server=127.0.0.1:%s
ssl=no
min-interval=0
login=%s
password=%s
%s
%s
`, portOf(td.T, td.HTTP), login, password, addr, host)
}

// ddclient runs ddclient once in the foreground with conf and cache and
// returns its output and exit error.
func ddclient(t *testing.T, conf, cache string, extra ...string) (string, error) {
	t.Helper()
	bin := testutil.NeedTool(t, "ddclient")
	args := append([]string{"-daemon=0", "-foreground", "-noquiet", "-verbose", "-file", conf, "-cache", cache}, extra...)
	return runTool(t, bin, args...)
}

// ddclientSucceeded fails the test unless ddclient exited 0 after reporting
// setting host to ip.
func ddclientSucceeded(t *testing.T, out string, err error, host, ip string) {
	t.Helper()
	if err != nil || strings.Contains(out, "FAILED:") ||
		!regexp.MustCompile(`(?m)^SUCCESS:.*`+regexp.QuoteMeta(host)+`.*`+regexp.QuoteMeta(ip)+`\b`).MatchString(out) {
		t.Fatalf("ddclient (exit %v) did not report setting %s to %s:\n%s", exitStatus(err), host, ip, out)
	}
}

func TestInteropDdclientUpdatesAddress(t *testing.T) {
	testutil.NeedTool(t, "ddclient")
	td := daemontest.Start(t)
	tok := td.AddDevice("nas1")
	host := daemontest.FQDN("nas1")
	dir := t.TempDir()
	conf := filepath.Join(dir, "ddclient.conf")
	cache := filepath.Join(dir, "ddclient.cache")

	// `use=ip, ip=…` hands ddclient the address: no address discovery at all.
	writePrivateFile(t, conf, ddclientConf(td, "nas1", tok, "use=ip, ip=203.0.113.10", host))
	out, err := ddclient(t, conf, cache)
	ddclientSucceeded(t, out, err, host, "203.0.113.10")
	wantDig(td, host, "A", "203.0.113.10")

	// The address changes: ddclient compares with its cache and updates again.
	writePrivateFile(t, conf, ddclientConf(td, "nas1", tok, "use=ip, ip=203.0.113.11", host))
	out, err = ddclient(t, conf, cache)
	ddclientSucceeded(t, out, err, host, "203.0.113.11")
	wantDig(td, host, "A", "203.0.113.11")

	// A forced update with the same address gets "nochg", which ddclient must
	// not count as a failure.
	out, err = ddclient(t, conf, cache, "-force")
	if err != nil || strings.Contains(out, "FAILED:") || !strings.Contains(out, "nochg") {
		t.Fatalf("forced ddclient run with an unchanged address: want nochg and no failure:\n%s", out)
	}
	wantDig(td, host, "A", "203.0.113.11")

	// A wrong password: ddclient reports the failure and the record stays.
	bad := filepath.Join(dir, "bad.conf")
	writePrivateFile(t, bad, ddclientConf(td, "nas1", "not-the-device-token", "use=ip, ip=198.51.100.99", host))
	out, err = ddclient(t, bad, filepath.Join(dir, "bad.cache"))
	var exit *exec.ExitError
	if !errors.As(err, &exit) || !regexp.MustCompile(`(?m)^FAILED:.*`+regexp.QuoteMeta(host)).MatchString(out) || !strings.Contains(out, "badauth") || strings.Contains(out, "SUCCESS:") {
		t.Fatalf("ddclient with a wrong password: exit %v, want a non-zero exit and a failed update with badauth:\n%s", exitStatus(err), out)
	}
	wantDig(td, host, "A", "203.0.113.11")
}

func TestInteropDdclientDetectsAddressFromOwnIPEndpoint(t *testing.T) {
	testutil.NeedTool(t, "ddclient")
	td := daemontest.Start(t)
	tok := td.AddDevice("nas1")
	host := daemontest.FQDN("nas1")
	dir := t.TempDir()
	// use=web reads the first address in the page: our /v1/ip answers the
	// caller's address, 127.0.0.1 here.
	conf := writePrivateFile(t, filepath.Join(dir, "ddclient.conf"),
		ddclientConf(td, "nas1", tok, "use=web, web="+td.HTTP+"/v1/ip", host))
	out, err := ddclient(t, conf, filepath.Join(dir, "ddclient.cache"))
	ddclientSucceeded(t, out, err, host, "127.0.0.1")
	wantDig(td, host, "A", "127.0.0.1")
}

// inadynConf is an inadyn 2.10 configuration with a custom dyndns2 provider
// pointing at the daemon. globals go before the provider section, and
// checkip is the provider's address-detection setting(s).
func inadynConf(td *daemontest.Daemon, user, password, host, globals, checkip string) string {
	return fmt.Sprintf(`# inadyn for nasreach: a custom dyndns2 provider over plain HTTP on loopback
verify-address = false
%s
custom nasreach {
    ssl         = false
    username    = %s
    password    = %s
    ddns-server = "127.0.0.1:%s"
    ddns-path   = "/nic/update?hostname=%%h&myip=%%i"
    %s
    hostname    = %s
}
`, globals, user, password, portOf(td.T, td.HTTP), checkip, host)
}

// inadynCacheDir returns a cache directory in which inadyn believes it last
// sent previous for host. Without a cache file inadyn resolves the hostname
// through the system resolver at start-up, which would leave the machine.
func inadynCacheDir(t *testing.T, host, previous string) string {
	t.Helper()
	dir := t.TempDir()
	// inadyn writes the address without a newline and reads it back verbatim.
	writePrivateFile(t, filepath.Join(dir, host+".cache"), previous)
	return dir
}

// inadyn runs inadyn once in the foreground for host and returns its output
// and exit error. It fails the test if inadyn did not start from the cache in
// cacheDir: without it inadyn would have asked the system resolver for host.
func inadyn(t *testing.T, conf, cacheDir, host string) (string, error) {
	t.Helper()
	bin := testutil.NeedTool(t, "inadyn")
	out, err := runTool(t, bin, "--once", "--foreground", "--no-pidfile", "--loglevel=debug",
		"--config="+conf, "--cache-dir="+cacheDir)
	if !regexp.MustCompile(`Cached IP# \S+ for ` + regexp.QuoteMeta(host) + ` from previous invocation`).MatchString(out) {
		t.Fatalf("inadyn did not read its seeded cache in %s, so it may have resolved %s outside loopback:\n%s", cacheDir, host, out)
	}
	return out, err
}

// inadynSucceeded fails the test unless inadyn exited 0 after reporting a
// successful update of host to ip.
func inadynSucceeded(t *testing.T, out string, err error, host, ip string) {
	t.Helper()
	if err != nil || !regexp.MustCompile(`Successful alias table update for `+regexp.QuoteMeta(host)+` => new IP# `+regexp.QuoteMeta(ip)+`\b`).MatchString(out) {
		t.Fatalf("inadyn (err %v) did not report updating %s to %s:\n%s", err, host, ip, out)
	}
}

func TestInteropInadynUpdatesAddress(t *testing.T) {
	testutil.NeedTool(t, "inadyn")
	td := daemontest.Start(t)
	tok := td.AddDevice("nas1")
	host := daemontest.FQDN("nas1")
	dir := t.TempDir()
	conf := filepath.Join(dir, "inadyn.conf")
	cache := inadynCacheDir(t, host, "192.0.2.1")

	// checkip-command gives inadyn the address without any network lookup.
	writePrivateFile(t, conf, inadynConf(td, "nas1", tok, host, "", `checkip-command = "echo 203.0.113.20"`))
	out, err := inadyn(t, conf, cache, host)
	inadynSucceeded(t, out, err, host, "203.0.113.20")
	wantDig(td, host, "A", "203.0.113.20")

	// The address changes; inadyn sees it differs from its cache and updates.
	writePrivateFile(t, conf, inadynConf(td, "nas1", tok, host, "", `checkip-command = "echo 203.0.113.21"`))
	out, err = inadyn(t, conf, cache, host)
	inadynSucceeded(t, out, err, host, "203.0.113.21")
	wantDig(td, host, "A", "203.0.113.21")

	// A wrong password: inadyn exits non-zero naming the authentication
	// failure, and the record stays.
	bad := writePrivateFile(t, filepath.Join(dir, "bad.conf"),
		inadynConf(td, "nas1", "not-the-device-token", host, "", `checkip-command = "echo 198.51.100.99"`))
	out, err = inadyn(t, bad, inadynCacheDir(t, host, "192.0.2.1"), host)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || !strings.Contains(out, "Authentication failure") || !strings.Contains(out, "badauth") {
		t.Fatalf("inadyn with a wrong password: err %v, want a non-zero exit and an authentication failure with badauth:\n%s", err, out)
	}
	wantDig(td, host, "A", "203.0.113.21")
}

func TestInteropInadynDetectsAddressFromOwnIPEndpoint(t *testing.T) {
	testutil.NeedTool(t, "inadyn")
	td := daemontest.Start(t)
	tok := td.AddDevice("nas1")
	host := daemontest.FQDN("nas1")
	// checkip over loopback finds 127.0.0.1, which inadyn only accepts with
	// verify-address = false (set in every config here).
	checkip := fmt.Sprintf(`checkip-server = "127.0.0.1:%s"
    checkip-path   = "/v1/ip"
    checkip-ssl    = false`, portOf(t, td.HTTP))
	conf := writePrivateFile(t, filepath.Join(t.TempDir(), "inadyn.conf"), inadynConf(td, "nas1", tok, host, "", checkip))
	out, err := inadyn(t, conf, inadynCacheDir(t, host, "192.0.2.1"), host)
	inadynSucceeded(t, out, err, host, "127.0.0.1")
	wantDig(td, host, "A", "127.0.0.1")
}

func TestInteropInadynUpdatesIPv6AndKeepsIPv4(t *testing.T) {
	testutil.NeedTool(t, "inadyn")
	td := daemontest.Start(t)
	tok := td.AddDevice("nas1")
	host := daemontest.FQDN("nas1")
	td.DynDNS2("nas1", tok, host, "203.0.113.30", "good 203.0.113.30")
	conf := writePrivateFile(t, filepath.Join(t.TempDir(), "inadyn.conf"),
		inadynConf(td, "nas1", tok, host, "allow-ipv6 = true", `checkip-command = "echo 2001:db8::30"`))
	out, err := inadyn(t, conf, inadynCacheDir(t, host, "192.0.2.1"), host)
	inadynSucceeded(t, out, err, host, "2001:db8::30")
	wantDig(td, host, "AAAA", "2001:db8::30")
	wantDig(td, host, "A", "203.0.113.30")
}

func TestInteropDigOverTCPAndNXDOMAIN(t *testing.T) {
	testutil.NeedTool(t, "dig")
	td := daemontest.Start(t)
	tok := td.AddDevice("nas1")
	td.DynDNS2("nas1", tok, daemontest.FQDN("nas1"), "203.0.113.40", "good 203.0.113.40")

	out := digOutput(td, "+tcp", daemontest.FQDN("nas1"), "A")
	if !regexp.MustCompile(`(?m)^;; SERVER: 127\.0\.0\.1#\d+\(127\.0\.0\.1\) \(TCP\)`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^nas1\.myqnapcloud\.com\.\s+\d+\s+IN\s+A\s+203\.0\.113\.40$`).MatchString(out) {
		t.Fatalf("dig +tcp: want the A record of nas1 received over TCP:\n%s", out)
	}
	wantDig(td, daemontest.FQDN("nas1"), "A", "203.0.113.40", "+tcp")

	for _, transport := range []string{"+notcp", "+tcp"} {
		out := digOutput(td, transport, daemontest.FQDN("nosuchnas"), "A")
		if !strings.Contains(out, "status: NXDOMAIN") {
			t.Errorf("dig %s for an unknown name: want status: NXDOMAIN:\n%s", transport, out)
		}
		if !regexp.MustCompile(`(?m)^;; flags: qr aa\b`).MatchString(out) {
			t.Errorf("dig %s for an unknown name: want an authoritative answer (flags: qr aa):\n%s", transport, out)
		}
		if !regexp.MustCompile(`(?m)^;; AUTHORITY SECTION:\nmyqnapcloud\.com\.\s+\d+\s+IN\s+SOA\s+ns1\.myqnapcloud\.com\. `).MatchString(out) {
			t.Errorf("dig %s for an unknown name: want the zone's SOA in the authority section:\n%s", transport, out)
		}
	}
}

// deviceAtAddress starts a daemon with nas1 at ip and returns it with nas1's
// token and FQDN, and a check that fails the test unless nas1 still resolves
// to ip and its export (everything stored, the updated time too) is what it
// was.
func deviceAtAddress(t *testing.T, ip string) (td *daemontest.Daemon, tok, host string, unchanged func(after string)) {
	t.Helper()
	td = daemontest.Start(t)
	tok = td.AddDevice("nas1")
	host = daemontest.FQDN("nas1")
	td.DynDNS2("nas1", tok, host, ip, "good "+ip)
	before := deviceJSON(td, "nas1")
	return td, tok, host, func(after string) {
		t.Helper()
		wantDig(td, host, "A", ip)
		if now := deviceJSON(td, "nas1"); !reflect.DeepEqual(now, before) {
			t.Fatalf("%s changed the device:\nbefore %v\nafter  %v", after, before, now)
		}
	}
}

// TestInteropDdclientReportsAnUnusableAddressAndNothingChanges: ddclient
// takes 203.0.113.010 for an IPv4 address (its pattern allows leading zeros)
// and sends 0.0.0.0 when told to with use=ip; the daemon answers badagent,
// ddclient reports the update as failed, and the name keeps its address.
func TestInteropDdclientReportsAnUnusableAddressAndNothingChanges(t *testing.T) {
	testutil.NeedTool(t, "ddclient")
	td, tok, host, unchanged := deviceAtAddress(t, "203.0.113.10")
	dir := t.TempDir()
	for i, ip := range []string{"203.0.113.010", "0.0.0.0"} {
		conf := writePrivateFile(t, filepath.Join(dir, fmt.Sprintf("ddclient%d.conf", i)), ddclientConf(td, "nas1", tok, "use=ip, ip="+ip, host))
		out, err := ddclient(t, conf, filepath.Join(dir, fmt.Sprintf("ddclient%d.cache", i)))
		var exit *exec.ExitError
		if !errors.As(err, &exit) || strings.Contains(out, "SUCCESS:") ||
			!regexp.MustCompile(`(?m)^FAILED:\s+updating `+regexp.QuoteMeta(host)+`: unexpected status \(badagent myip `).MatchString(out) {
			t.Fatalf("ddclient with ip=%s: exit %v, want a non-zero exit and a failed update answered badagent:\n%s", ip, exitStatus(err), out)
		}
		unchanged("ddclient with ip=" + ip)
	}
}

// TestInteropInadynReportsAnUnusableAddressAndNothingChanges: inadyn sends
// what its checkip command found (0.0.0.0 passes with verify-address =
// false) or what a hand-written ddns-path says; for either the daemon
// answers badagent, inadyn reports a fatal error and exits non-zero (it does
// not retry), and the name keeps its address.
func TestInteropInadynReportsAnUnusableAddressAndNothingChanges(t *testing.T) {
	testutil.NeedTool(t, "inadyn")
	td, tok, host, unchanged := deviceAtAddress(t, "203.0.113.20")
	confs := map[string]string{
		"checkip finds 0.0.0.0": inadynConf(td, "nas1", tok, host, "", `checkip-command = "echo 0.0.0.0"`),
		"ddns-path says myip=garbage": strings.Replace(inadynConf(td, "nas1", tok, host, "", `checkip-command = "echo 203.0.113.21"`),
			"myip=%i", "myip=garbage", 1),
	}
	for what, text := range confs {
		conf := writePrivateFile(t, filepath.Join(t.TempDir(), "inadyn.conf"), text)
		out, err := inadyn(t, conf, inadynCacheDir(t, host, "192.0.2.1"), host)
		var exit *exec.ExitError
		if !errors.As(err, &exit) || strings.Contains(out, "Successful alias table update") ||
			!strings.Contains(out, "Fatal error in DDNS server response") || !strings.Contains(out, "badagent myip") {
			t.Fatalf("inadyn, %s: err %v, want a non-zero exit and a fatal error naming badagent:\n%s", what, err, out)
		}
		unchanged("inadyn, " + what + ",")
	}
}

var uclientTotals = regexp.MustCompile(`start_mclient: tot_send_msgs=(\d+), tot_recv_msgs=(\d+)`)

// coturn's turnutils_uclient in its default mode, as coturn users run it
// (issue 16): a first allocation with EVEN-PORT and the port above reserved,
// which uclient keeps, then the RTP allocation taking the reserved port by
// its RESERVATION-TOKEN and the RTCP allocation reserving anew, and data
// both ways through an echo peer on an even port and the one above. Before,
// the token reached a listening socket that had not made it about every
// other time, and uclient got 508 from the second run on. Now three runs in
// a row relay every message, with device credentials over UDP and REST
// credentials over TCP, and the daemon refuses nothing.
func TestCoturnUclientDefaultModeRunAfterRun(t *testing.T) {
	bin := testutil.NeedTool(t, "turnutils_uclient")
	const secret = "rest-secret"
	td := daemontest.Start(t, daemontest.WithTURN, func(c *daemon.Config) { c.TURN.Secret = secret })
	token := td.AddDevice("nas1")
	peer := strconv.Itoa(daemontest.UDPEchoPair(t))
	port := portOf(t, td.STUN)
	tests := []struct {
		name string
		args []string
	}{
		{"device over udp", []string{"-u", "nas1", "-w", turnserver.DevicePassword(token)}},
		{"rest over tcp", []string{"-t", "-u", "alice", "-W", secret}},
	}
	t.Run("runs", func(t *testing.T) {
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel() // uclient mostly waits on its own timers
				for run := 1; run <= 3; run++ {
					out, err := runTool(t, bin, append(tc.args, "-p", port, "-e", "127.0.0.1", "-r", peer, "-n", "10", "-l", "100", "127.0.0.1")...)
					m := uclientTotals.FindStringSubmatch(out)
					if err != nil || m == nil || m[1] != "20" || m[2] != "20" || !strings.Contains(out, "Total lost packets 0 ") {
						t.Fatalf("run %d: want 20 messages sent and received (RTP and RTCP), none lost; got %v:\n%s", run, err, out)
					}
				}
			})
		}
	})
	fams, _ := scrape(t, td)
	for _, l := range fams["nasreach_turn_refused_total"] {
		if l.value != 0 {
			t.Errorf("turn refusals %v = %v, want none", l.labels, l.value)
		}
	}
}

package daemon_test

// Secondaries: real Knot (knotd) and NSD as secondaries of an in-process
// daemon, configured with the README's snippets, updated through dyndns2,
// and kdig checking who may transfer.
//
// Addresses: Knot and NSD take a port number in their config and cannot be
// handed a socket, and a test must not bind a port, free it and hope to bind
// it again. So each secondary gets an address of its own in 127.0.0.0/8
// (every one of them is local on Linux), drawn at random from 127.100–199.x.x
// (away from 127.0.0.1 and resolved's 127.0.0.53/54), with the fixed port
// 5300, checked to have no listener before the server starts. Unique
// addresses also let the daemon tell the secondaries apart by source
// address, which is what --secondary lists: each secondary sends from its own
// address (Knot's via, NSD's outgoing-interface, both in the README).

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/daemon"
	"github.com/nasreach/nasreach/daemon/daemontest"
	"github.com/nasreach/nasreach/dnsserver"
	"github.com/nasreach/nasreach/internal/testutil"
)

// secondaryPort is the port every test secondary listens on, each on an
// address of its own.
const secondaryPort = 5300

// secondaryDeadline is how fast a change must reach the secondaries.
const secondaryDeadline = time.Second

// testKeySecret is the TSIG key the kdig tests sign with.
const (
	testKeyName   = "xfr-key"
	testKeySecret = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTMyYnk="
)

// secondary is a running Knot or NSD.
type secondary struct {
	t      *testing.T
	kind   string // "knot" or "nsd"
	addr   netip.Addr
	dir    string
	conf   string
	log    *testutil.Buffer
	cmd    *exec.Cmd
	exited chan struct{}
}

// uniqueLoopback draws a loopback address nobody listens on at
// secondaryPort.
func uniqueLoopback(t *testing.T) netip.Addr {
	t.Helper()
	for range 20 {
		a := netip.AddrFrom4([4]byte{127, byte(100 + rand.IntN(100)), byte(rand.IntN(256)), byte(1 + rand.IntN(254))})
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(a, secondaryPort).String(), 200*time.Millisecond)
		if err == nil {
			c.Close()
			continue
		}
		return a
	}
	t.Fatal("no free loopback address for a secondary in 20 draws")
	return netip.Addr{}
}

// readmeSecondaryConfig finds the README's config of each kind of
// secondary: the first block after the file it goes in.
var readmeSecondaryConfig = map[string]*regexp.Regexp{
	"knot": regexp.MustCompile("(?s)`/etc/knot/knot\\.conf`.*?```yaml\n(.*?)```"),
	"nsd":  regexp.MustCompile("(?s)`/etc/nsd/nsd\\.conf\\.d/nasreach\\.conf`.*?```text\n(.*?)```"),
}

// readmeSnippet returns the README's config block for kind, with the
// README's addresses, zone and paths replaced by the test's.
func readmeSnippet(t *testing.T, kind string, primary netip.AddrPort, self netip.Addr, dir string) string {
	t.Helper()
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := readmeSecondaryConfig[kind].FindSubmatch(readme)
	if m == nil {
		t.Fatalf("README.md has no %s secondary config (%s)", kind, readmeSecondaryConfig[kind])
	}
	return strings.NewReplacer(
		"203.0.113.53@53", fmt.Sprintf("%s@%d", primary.Addr(), primary.Port()),
		"203.0.113.53", primary.Addr().String(),
		"198.51.100.7", self.String(), // the Knot example's address
		"192.0.2.9", self.String(), // the NSD example's
		"nas.example.net", daemontest.Zone,
		"/var/lib/nsd", dir,
	).Replace(string(m[1]))
}

// startSecondary writes kind's config, the test's server section and the
// README's snippet, in a new directory, and starts it in the foreground on
// addr. It is stopped when the test ends.
func startSecondary(t *testing.T, kind string, primary netip.AddrPort, addr netip.Addr) *secondary {
	t.Helper()
	s := &secondary{t: t, kind: kind, addr: addr, dir: t.TempDir()}
	snippet := readmeSnippet(t, kind, primary, s.addr, s.dir)
	listen := fmt.Sprintf("%s@%d", s.addr, secondaryPort)
	var conf string
	switch kind {
	case "knot":
		conf = fmt.Sprintf(`server:
    rundir: %[1]q
    listen: %[2]s

log:
  - target: stderr
    any: info

database:
    storage: %[1]q

template:
  - id: default
    storage: %[1]q
    file: "%%s.zone"

%[3]s`, s.dir, listen, snippet)
	case "nsd":
		conf = fmt.Sprintf(`server:
    ip-address: %[2]s
    username: ""
    chroot: ""
    zonesdir: %[1]q
    database: ""
    zonelistfile: "%[1]s/zone.list"
    xfrdfile: "%[1]s/xfrd.state"
    xfrdir: %[1]q
    pidfile: "%[1]s/nsd.pid"
    verbosity: 2
    xfrd-reload-timeout: 0

remote-control:
    control-enable: no

%[3]s`, s.dir, listen, snippet)
	}
	s.conf = filepath.Join(s.dir, kind+".conf")
	if err := os.WriteFile(s.conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	s.start()
	t.Cleanup(s.stop)
	return s
}

// start runs the server on its config and directory.
func (s *secondary) start() {
	s.t.Helper()
	var bin string
	var args []string
	switch s.kind {
	case "knot":
		bin, args = testutil.NeedTool(s.t, "knotd"), []string{"-c", s.conf}
	case "nsd":
		bin, args = testutil.NeedTool(s.t, "nsd"), []string{"-d", "-c", s.conf}
	}
	s.log = &testutil.Buffer{}
	s.cmd = exec.Command(bin, args...)
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	// Its own process group: NSD forks its xfrd and server processes, and
	// stop ends them all.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("start %s: %v", s.kind, err)
	}
	s.exited = make(chan struct{})
	go func() {
		s.cmd.Wait() //nolint:errcheck // the log says why
		close(s.exited)
	}()
	recordCommand(s.t, fmt.Sprintf("$ %s %s\n", filepath.Base(bin), strings.Join(args, " ")))
}

// stop ends the server and every process of its group, and waits.
func (s *secondary) stop() {
	if s.cmd == nil {
		return
	}
	pgid := s.cmd.Process.Pid
	syscall.Kill(-pgid, syscall.SIGTERM) //nolint:errcheck // gone already is fine
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		syscall.Kill(-pgid, syscall.SIGKILL) //nolint:errcheck
		<-s.exited
	}
	// NSD's children may outlive the main process by a moment.
	syscall.Kill(-pgid, syscall.SIGKILL) //nolint:errcheck
	s.cmd = nil
	if s.t.Failed() {
		s.t.Logf("%s log:\n%s", s.kind, s.log.String())
	}
}

// query asks the secondary over UDP.
func (s *secondary) query(name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg).SetQuestion(dns.Fqdn(name), qtype)
	r, _, err := (&dns.Client{Net: "udp", Timeout: 500 * time.Millisecond}).Exchange(m, netip.AddrPortFrom(s.addr, secondaryPort).String())
	return r, err
}

// serial is the secondary's SOA serial, or 0 while it has none.
func (s *secondary) serial() uint32 {
	r, err := s.query(daemontest.Zone, dns.TypeSOA)
	if err != nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		return 0
	}
	return r.Answer[0].(*dns.SOA).Serial
}

// waitFor polls the secondary until check passes on the answer for
// name/qtype, and returns how long that took from since; it fails the test
// after secondaryDeadline.
func (s *secondary) waitFor(since time.Time, what, name string, qtype uint16, check func(*dns.Msg) bool) time.Duration {
	s.t.Helper()
	return s.waitWithin(secondaryDeadline, since, what, name, qtype, check)
}

// waitWithin is waitFor with another deadline, for steps that set a test up
// rather than check the promise (a loaded machine may take longer there).
func (s *secondary) waitWithin(deadline time.Duration, since time.Time, what, name string, qtype uint16, check func(*dns.Msg) bool) time.Duration {
	s.t.Helper()
	for {
		r, err := s.query(name, qtype)
		if err == nil && check(r) {
			return time.Since(since)
		}
		if time.Since(since) > deadline {
			s.t.Fatalf("%s at %s: %s not seen within %s; last answer %v, %v", s.kind, s.addr, what, deadline, r, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func hasA(ip string) func(*dns.Msg) bool {
	return func(r *dns.Msg) bool { return daemontest.CheckAnswer(r, dns.TypeA, netip.MustParseAddr(ip)) == nil }
}

func isNXDOMAIN(r *dns.Msg) bool { return r.Rcode == dns.RcodeNameError }

// startWithSecondaries starts Knot and NSD (kinds) as secondaries of a new
// daemon and waits for their first transfer. The daemon's DNS port must be
// known before the secondaries' configs can name it, and the secondaries'
// addresses before the daemon can list them: the addresses are drawn first.
func startWithSecondaries(t *testing.T, kinds ...string) (*daemontest.Daemon, []*secondary) {
	t.Helper()
	for _, k := range kinds {
		testutil.NeedTool(t, map[string]string{"knot": "knotd", "nsd": "nsd"}[k])
	}
	key, err := dnsserver.ParseKey(testKeyName + ":hmac-sha256:" + testKeySecret)
	if err != nil {
		t.Fatal(err)
	}
	addrs := make([]netip.Addr, len(kinds))
	for i := range kinds {
		addrs[i] = uniqueLoopback(t)
	}
	td := daemontest.Start(t, func(c *daemon.Config) {
		for _, a := range addrs {
			c.Transfer.Secondaries = append(c.Transfer.Secondaries, dnsserver.Secondary{Addr: netip.AddrPortFrom(a, secondaryPort)})
		}
		c.Transfer.TSIGKeys = []dnsserver.Key{key}
	})
	primary := netip.MustParseAddrPort(td.DNS)
	var secs []*secondary
	for i, k := range kinds {
		s := startSecondary(t, k, primary, addrs[i])
		secs = append(secs, s)
	}
	for _, s := range secs {
		testutil.WaitFor(t, 20*time.Second, s.kind+"'s first transfer", func() bool {
			return s.serial() == td.Daemon.Store().Serial()
		})
	}
	return td, secs
}

func TestSecondariesFollowUpdatesAndErasureWithinASecond(t *testing.T) {
	td, secs := startWithSecondaries(t, "knot", "nsd")
	tok := td.AddDevice("nas1")
	host := daemontest.FQDN("nas1")
	hiddenTok := td.AddDevice("hidden")
	td.DynDNS2("hidden", hiddenTok, daemontest.FQDN("hidden"), "192.0.2.77", "good 192.0.2.77")
	if code, body := td.Do("PATCH", "/v1/devices/hidden", td.Admin, map[string]any{"ddns": false}); code != 200 {
		t.Fatalf("ddns off: HTTP %d %s", code, body)
	}

	// The updates are a second apart, as DDNS clients send them: Knot 3.2
	// acts on a NOTIFY that comes in the calendar second after its last
	// refresh only when that refresh is a second old (its refresh handler
	// plans its own NOTIFY event one second ahead, and its event timer
	// counts whole seconds), so back-to-back updates reach it up to a second
	// after the one before.
	var took []time.Duration
	for i := range 5 {
		ip := fmt.Sprintf("203.0.113.%d", 10+i)
		time.Sleep(time.Second)
		start := time.Now()
		td.DynDNS2("nas1", tok, host, ip, "good "+ip)
		for _, s := range secs {
			took = append(took, s.waitFor(start, "nas1 at "+ip, host, dns.TypeA, hasA(ip)))
		}
	}
	t.Logf("dyndns2 update to answered by knot and nsd: %v", took)

	// A DDNS-off device is in no transfer: the secondaries never learn it.
	for _, s := range secs {
		if r, err := s.query(daemontest.FQDN("hidden"), dns.TypeA); err != nil || !isNXDOMAIN(r) {
			t.Errorf("%s answers for the DDNS-off device: %v %v, want NXDOMAIN", s.kind, r, err)
		}
	}

	// Erasure reaches the copies.
	time.Sleep(time.Second)
	start := time.Now()
	if code, body := td.Do("DELETE", "/v1/devices/nas1", tok, nil); code != 200 && code != 204 {
		t.Fatalf("delete: HTTP %d %s", code, body)
	}
	for _, s := range secs {
		d := s.waitFor(start, "nas1 deleted", host, dns.TypeA, isNXDOMAIN)
		t.Logf("delete to NXDOMAIN at %s: %v", s.kind, d)
	}
}

func TestKnotThatWasDownCatchesUpByIXFR(t *testing.T) {
	td, secs := startWithSecondaries(t, "knot")
	knot := secs[0]
	tok := td.AddDevice("nas1")
	host := daemontest.FQDN("nas1")
	td.DynDNS2("nas1", tok, host, "203.0.113.1", "good 203.0.113.1")
	knot.waitWithin(10*time.Second, time.Now(), "nas1", host, dns.TypeA, hasA("203.0.113.1"))

	knot.stop()
	for i := range 3 {
		ip := fmt.Sprintf("203.0.113.%d", 20+i)
		td.DynDNS2("nas1", tok, host, ip, "good "+ip)
	}
	gone := td.AddDevice("gone")
	td.DynDNS2("gone", gone, daemontest.FQDN("gone"), "203.0.113.99", "good 203.0.113.99")
	if code, body := td.Do("DELETE", "/v1/devices/gone", gone, nil); code != 200 && code != 204 {
		t.Fatalf("delete: HTTP %d %s", code, body)
	}
	before, _ := scrape(t, td)
	ixfrBefore, _ := lookup(before, "nasreach_dns_transfers_total", map[string]string{"kind": "ixfr", "outcome": "ok"})

	knot.start()
	testutil.WaitFor(t, 20*time.Second, "knot to catch up", func() bool { return knot.serial() == td.Daemon.Store().Serial() })
	if r, err := knot.query(host, dns.TypeA); err != nil || !hasA("203.0.113.22")(r) {
		t.Errorf("knot after catching up: %v %v, want nas1 at 203.0.113.22", r, err)
	}
	if r, err := knot.query(daemontest.FQDN("gone"), dns.TypeA); err != nil || !isNXDOMAIN(r) {
		t.Errorf("knot after catching up: the device deleted while it was down answers %v %v", r, err)
	}
	restarted := knot.log.String()
	if !regexp.MustCompile(`IXFR, incoming, remote 127\.0\.0\.1@\d+, finished`).MatchString(restarted) {
		t.Errorf("knot's log shows no incoming IXFR after its restart:\n%s", restarted)
	}
	after, _ := scrape(t, td)
	if ixfrAfter, _ := lookup(after, "nasreach_dns_transfers_total", map[string]string{"kind": "ixfr", "outcome": "ok"}); ixfrAfter <= ixfrBefore {
		t.Errorf("nasreach_dns_transfers_total{kind=ixfr,outcome=ok} %v before knot's return, %v after: no IXFR served", ixfrBefore, ixfrAfter)
	}
}

// kdig runs kdig against the daemon and returns its output.
func kdig(td *daemontest.Daemon, args ...string) (string, error) {
	td.T.Helper()
	bin := testutil.NeedTool(td.T, "kdig")
	ap := netip.MustParseAddrPort(td.DNS)
	return runTool(td.T, bin, append([]string{"@" + ap.Addr().String(), "-p", fmt.Sprint(ap.Port()), "+time=2", "+retry=0"}, args...)...)
}

func TestKdigTransferNeedsAKeyOrAListedAddress(t *testing.T) {
	testutil.NeedTool(t, "kdig")
	listed := uniqueLoopback(t)
	key, err := dnsserver.ParseKey(testKeyName + ":hmac-sha256:" + testKeySecret)
	if err != nil {
		t.Fatal(err)
	}
	td := daemontest.Start(t, func(c *daemon.Config) {
		c.Transfer.Secondaries = []dnsserver.Secondary{{Addr: netip.AddrPortFrom(listed, secondaryPort)}}
		c.Transfer.TSIGKeys = []dnsserver.Key{key}
	})
	tok := td.AddDevice("nas1")
	td.DynDNS2("nas1", tok, daemontest.FQDN("nas1"), "203.0.113.5", "good 203.0.113.5")
	hidden := td.AddDevice("hidden")
	td.DynDNS2("hidden", hidden, daemontest.FQDN("hidden"), "203.0.113.6", "good 203.0.113.6")
	if code, body := td.Do("PATCH", "/v1/devices/hidden", td.Admin, map[string]any{"ddns": false}); code != 200 {
		t.Fatalf("ddns off: HTTP %d %s", code, body)
	}

	wrongSecret := "YW5vdGhlci1zZWNyZXQtYW5vdGhlci1zZWNyZXQtMzI="
	for _, c := range []struct {
		what string
		args []string
		want string // in kdig's output
		ok   bool
	}{
		{"signed with the key, from an address not listed", []string{"-y", "hmac-sha256:" + testKeyName + ":" + testKeySecret}, "nas1.myqnapcloud.com.", true},
		{"unsigned from the listed address", []string{"-b", listed.String()}, "nas1.myqnapcloud.com.", true},
		{"unsigned from an address not listed", nil, "REFUSED", false},
		{"signed with an unknown key", []string{"-y", "hmac-sha256:nosuch-key:" + testKeySecret}, "BADKEY", false},
		{"signed with the wrong secret", []string{"-y", "hmac-sha256:" + testKeyName + ":" + wrongSecret}, "BADSIG", false},
		{"signed with the wrong secret from the listed address", []string{"-b", listed.String(), "-y", "hmac-sha256:" + testKeyName + ":" + wrongSecret}, "BADSIG", false},
	} {
		out, err := kdig(td, append(c.args, daemontest.Zone, "AXFR")...)
		if !strings.Contains(out, c.want) || (err == nil) != c.ok {
			t.Errorf("AXFR %s: kdig exit %v, want %q in:\n%s", c.what, exitStatus(err), c.want, out)
		}
		if c.ok && strings.Contains(out, "hidden.") {
			t.Errorf("AXFR %s holds the DDNS-off device:\n%s", c.what, out)
		}
	}
	// Not over UDP, even for a listed address.
	out, _ := kdig(td, "+notcp", "-b", listed.String(), daemontest.Zone, "AXFR")
	if strings.Contains(out, "nas1.myqnapcloud.com.") {
		t.Errorf("AXFR over UDP transferred the zone:\n%s", out)
	}
}

// TestBenchUpdateReachesKnot measures how long a dyndns2 update takes to be
// answered by a Knot secondary, from the request to the first answer with
// the new address (polled every 2 ms): updates a second apart, as DDNS
// clients send them, and a stream of ten a second to different devices
// (where Knot 3.2 acts on some NOTIFYs only a second after its previous
// refresh). It prints p50, p99 and the worst; it runs only under make
// bench-xfr (NASREACH_BENCH_XFR=1).
func TestBenchUpdateReachesKnot(t *testing.T) {
	if os.Getenv("NASREACH_BENCH_XFR") == "" {
		t.Skip("a benchmark: make bench-xfr runs it")
	}
	td, secs := startWithSecondaries(t, "knot")
	knot := secs[0]
	const devices = 20
	toks := make([]string, devices)
	for i := range toks {
		toks[i] = td.AddDevice(fmt.Sprintf("bench%d", i))
	}
	sent := 0 // every update gets an address not used before
	measure := func(what string, n int, gap time.Duration) {
		var took []time.Duration
		for i := range n {
			dev := fmt.Sprintf("bench%d", i%devices)
			sent++
			ip := fmt.Sprintf("198.51.%d.%d", 100+sent/250, 1+sent%250)
			time.Sleep(gap)
			start := time.Now()
			td.DynDNS2(dev, toks[i%devices], daemontest.FQDN(dev), ip, "good "+ip)
			for {
				if r, err := knot.query(daemontest.FQDN(dev), dns.TypeA); err == nil && hasA(ip)(r) {
					break
				}
				if time.Since(start) > 5*time.Second {
					t.Fatalf("%s: update %d not at knot after 5 s", what, i)
				}
				time.Sleep(2 * time.Millisecond)
			}
			took = append(took, time.Since(start))
		}
		slices.Sort(took)
		pct := func(p float64) time.Duration { return took[min(len(took)-1, int(p*float64(len(took))))] }
		fmt.Printf("xfr update-to-knot %s n=%d p50_ms=%.1f p99_ms=%.1f max_ms=%.1f\n", what, n,
			pct(0.50).Seconds()*1000, pct(0.99).Seconds()*1000, took[len(took)-1].Seconds()*1000)
	}
	measure("spaced-1s", 30, 1100*time.Millisecond)
	measure("stream-10/s", 100, 100*time.Millisecond)
}

// TestReloadAppliesSecondariesAndKeys: as knotc reload does for ACLs, a
// reload changes who may transfer, without a restart.
func TestReloadAppliesSecondariesAndKeys(t *testing.T) {
	td := daemontest.Start(t)
	td.AddDevice("nas1")
	axfr := func() error {
		m := new(dns.Msg).SetAxfr(daemontest.Zone + ".")
		m.SetTsig(testKeyName+".", dns.HmacSHA256, 300, time.Now().Unix())
		ch, err := (&dns.Transfer{TsigSecret: map[string]string{testKeyName + ".": testKeySecret}}).In(m, td.DNS)
		if err != nil {
			return err
		}
		for env := range ch {
			if env.Error != nil {
				err = env.Error
			}
		}
		return err
	}
	if err := axfr(); err == nil {
		t.Fatal("a signed transfer before any key is configured succeeded")
	}
	key, err := dnsserver.ParseKey(testKeyName + ":hmac-sha256:" + testKeySecret)
	if err != nil {
		t.Fatal(err)
	}
	next := td.Daemon.Config()
	next.Transfer = daemon.TransferConfig{TSIGKeys: []dnsserver.Key{key},
		Secondaries: []dnsserver.Secondary{{Addr: netip.AddrPortFrom(uniqueLoopback(t), secondaryPort)}}}
	applied, restart := td.Daemon.Reload(next)
	if !slices.Equal(applied, []string{"secondary", "tsig-key"}) || len(restart) != 0 {
		t.Fatalf("reload applied %v, needs restart %v; want secondary and tsig-key applied", applied, restart)
	}
	if err := axfr(); err != nil {
		t.Errorf("a transfer signed with the key the reload added: %v", err)
	}
}

package daemon_test

// Dynamic update (RFC 2136) as its users run it: BIND's nsupdate with the
// key the API issued (-y), and ddclient's nsupdate protocol with a BIND key
// file (-k), each followed by dig and by a restart of the daemon: an
// acknowledged update is committed, as a dyndns2 "good" is.

import (
	"fmt"
	"net/http"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/daemon/daemontest"
	"github.com/nasreach/nasreach/internal/testutil"
)

// nsupdate runs BIND's nsupdate with args and the commands given, the
// daemon's DNS port as its server and our zone, and returns its output and
// exit error.
func nsupdate(td *daemontest.Daemon, args []string, commands ...string) (string, error) {
	td.T.Helper()
	bin := testutil.NeedTool(td.T, "nsupdate")
	script := fmt.Sprintf("server 127.0.0.1 %s\nzone %s\n%s\nsend\n", portOf(td.T, td.DNS), daemontest.Zone, strings.Join(commands, "\n"))
	file := writePrivateFile(td.T, filepath.Join(td.T.TempDir(), "nsupdate.txt"), script)
	recordCommand(td.T, "nsupdate script:\n"+script)
	return runTool(td.T, bin, append(args, file)...)
}

// nsupdateKey is nsupdate's -y for key k, as the README writes it.
func nsupdateKey(k daemontest.TSIGKey) []string {
	return []string{"-y", k.Algorithm + ":" + k.Name + ":" + k.Secret}
}

// wantNsupdateFailure fails the test unless nsupdate exited non-zero
// saying "update failed: RCODE".
func wantNsupdateFailure(t *testing.T, out string, err error, rcode string) {
	t.Helper()
	if err == nil || !strings.Contains(out, "update failed: "+rcode) {
		t.Fatalf("nsupdate (exit %v): want a failure with %s:\n%s", exitStatus(err), rcode, out)
	}
}

func TestInteropNsupdateAddsDeletesAndChecksPrerequisites(t *testing.T) {
	testutil.NeedTool(t, "nsupdate")
	td := daemontest.Start(t)
	tok := td.AddDevice("nas1")
	td.AddDevice("nas2")
	key := td.IssueTSIGKey("nas1", tok)
	if key.Name != "nas1."+daemontest.Zone || key.Algorithm != "hmac-sha256" {
		t.Fatalf("issued key %+v, want name nas1.%s and hmac-sha256", key, daemontest.Zone)
	}
	host := daemontest.FQDN("nas1")

	// Replace the address the way ddclient and most scripts do (over UDP,
	// nsupdate's default): the next query answers it.
	out, err := nsupdate(td, nsupdateKey(key),
		"update delete "+host+" A", "update add "+host+" 300 A 203.0.113.20", "update add "+host+" 300 AAAA 2001:db8::20")
	if err != nil {
		t.Fatalf("nsupdate: %v\n%s", err, out)
	}
	wantDig(td, host, "A", "203.0.113.20")
	wantDig(td, host, "AAAA", "2001:db8::20")

	// Over TCP (-v), with a prerequisite that holds.
	out, err = nsupdate(td, append(nsupdateKey(key), "-v"),
		"prereq yxrrset "+host+" A 203.0.113.20", "update delete "+host+" A", "update add "+host+" 300 A 203.0.113.21")
	if err != nil {
		t.Fatalf("nsupdate -v with a prerequisite that holds: %v\n%s", err, out)
	}
	wantDig(td, host, "A", "203.0.113.21")

	// Prerequisites that fail, and updates the key may not make: nothing
	// changes, and nsupdate says why.
	for _, c := range []struct {
		rcode    string
		commands []string
	}{
		{"YXRRSET", []string{"prereq nxrrset " + host + " A", "update delete " + host + " A"}},
		{"NXRRSET", []string{"prereq yxrrset " + host + " A 192.0.2.1", "update delete " + host + " A"}},
		{"YXDOMAIN", []string{"prereq nxdomain " + host, "update delete " + host + " A"}},
		{"NXDOMAIN", []string{"prereq yxdomain nosuch." + daemontest.Zone, "update delete " + host + " A"}},
		{"REFUSED", []string{"update add " + daemontest.FQDN("nas2") + " 300 A 203.0.113.66"}},
		{"REFUSED", []string{"update add " + host + " 300 MX 10 mail.example."}},
		{"REFUSED", []string{"update add " + host + " 300 A 203.0.113.66"}}, // a second IPv4 address
	} {
		out, err := nsupdate(td, nsupdateKey(key), c.commands...)
		wantNsupdateFailure(t, out, err, c.rcode)
	}
	wantDig(td, host, "A", "203.0.113.21")
	wantDig(td, daemontest.FQDN("nas2"), "A", "")

	// The wrong secret, and no key at all.
	wrong := key
	wrong.Secret = "bm90LXRoZS1rZXktbm90LXRoZS1rZXktbm90LXRoZS0="
	out, err = nsupdate(td, nsupdateKey(wrong), "update delete "+host+" A")
	if err == nil || !strings.Contains(out, "NOTAUTH") {
		t.Fatalf("nsupdate with a wrong secret (exit %v): want NOTAUTH:\n%s", exitStatus(err), out)
	}
	out, err = nsupdate(td, nil, "update delete "+host+" A")
	wantNsupdateFailure(t, out, err, "NOTAUTH")
	wantDig(td, host, "A", "203.0.113.21")

	// The ACME challenge value, at the challenge name only.
	challenge := testutil.ChallengeValue(0)
	if out, err := nsupdate(td, nsupdateKey(key), "update add _acme-challenge."+host+` 60 TXT "`+challenge+`"`); err != nil {
		t.Fatalf("nsupdate TXT: %v\n%s", err, out)
	}
	wantDig(td, "_acme-challenge."+host, "TXT", `"`+challenge+`"`)
	out, err = nsupdate(td, nsupdateKey(key), "update add "+host+` 60 TXT "`+challenge+`"`)
	wantNsupdateFailure(t, out, err, "REFUSED")

	// An acknowledged update is committed: it survives a restart.
	td.Restart()
	wantDig(td, host, "A", "203.0.113.21")
	wantDig(td, host, "AAAA", "2001:db8::20")
	wantDig(td, "_acme-challenge."+host, "TXT", `"`+challenge+`"`)

	// Deleting every record at the name leaves it without addresses.
	if out, err := nsupdate(td, nsupdateKey(key), "update delete "+host); err != nil {
		t.Fatalf("nsupdate delete: %v\n%s", err, out)
	}
	wantDig(td, host, "A", "")
	wantDig(td, host, "AAAA", "")

	// A new key replaces the old one at once; a revoked key stops at once.
	newKey := td.IssueTSIGKey("nas1", td.Admin)
	out, err = nsupdate(td, nsupdateKey(key), "update add "+host+" 300 A 203.0.113.22")
	if err == nil || !strings.Contains(out, "NOTAUTH") {
		t.Fatalf("nsupdate with the replaced key (exit %v): want NOTAUTH:\n%s", exitStatus(err), out)
	}
	if out, err := nsupdate(td, nsupdateKey(newKey), "update add "+host+" 300 A 203.0.113.22"); err != nil {
		t.Fatalf("nsupdate with the new key: %v\n%s", err, out)
	}
	wantDig(td, host, "A", "203.0.113.22")
	if code, body := td.Do(http.MethodDelete, "/v1/devices/nas1/tsig", tok, nil); code != http.StatusNoContent {
		t.Fatalf("revoke: HTTP %d %s", code, body)
	}
	out, err = nsupdate(td, nsupdateKey(newKey), "update delete "+host+" A")
	if err == nil || !strings.Contains(out, "NOTAUTH") {
		t.Fatalf("nsupdate with a revoked key (exit %v): want NOTAUTH:\n%s", exitStatus(err), out)
	}
	wantDig(td, host, "A", "203.0.113.22")
}

// bindKeyFile is key k as a BIND key file, what tsig-keygen prints and
// nsupdate -k (so ddclient's nsupdate protocol) reads.
func bindKeyFile(k daemontest.TSIGKey) string {
	return fmt.Sprintf("key \"%s\" {\n\talgorithm %s;\n\tsecret \"%s\";\n};\n", k.Name, k.Algorithm, k.Secret)
}

// ddclientNsupdateConf is a ddclient 3.10 configuration updating host
// through the daemon's DNS port with nsupdate and the key in keyFile.
// ddclient 3.10's nsupdate protocol never records a success as such, so
// that its next run within min-error-interval (5 minutes) skips a changed
// address as if the last attempt had failed; the test runs it again at
// once.
func ddclientNsupdateConf(td *daemontest.Daemon, keyFile, addr, host string, tcp bool) string {
	return fmt.Sprintf(`# ddclient for nasreach: RFC 2136 dynamic update with nsupdate
protocol=nsupdate
server=127.0.0.1:%s
zone=%s
password=%s
ttl=60
tcp=%s
min-interval=0
min-error-interval=0
%s
%s
`, portOf(td.T, td.DNS), daemontest.Zone, keyFile, map[bool]string{true: "yes", false: "no"}[tcp], addr, host)
}

func TestInteropDdclientNsupdateProtocol(t *testing.T) {
	testutil.NeedTool(t, "ddclient")
	testutil.NeedTool(t, "nsupdate")
	td := daemontest.Start(t)
	tok := td.AddDevice("nas1")
	host := daemontest.FQDN("nas1")
	dir := t.TempDir()
	keyFile := writePrivateFile(t, filepath.Join(dir, "nas1.key"), bindKeyFile(td.IssueTSIGKey("nas1", tok)))
	conf := filepath.Join(dir, "ddclient.conf")
	cache := filepath.Join(dir, "ddclient.cache")

	for _, c := range []struct {
		ip, qtype string
		tcp       bool
	}{
		{"203.0.113.30", "A", false},
		{"203.0.113.31", "A", true},
		{"2001:db8::31", "AAAA", false},
	} {
		writePrivateFile(t, conf, ddclientNsupdateConf(td, keyFile, "use=ip, ip="+c.ip, host, c.tcp))
		out, err := ddclient(t, conf, cache)
		ddclientSucceeded(t, out, err, host, c.ip)
		wantDig(td, host, c.qtype, c.ip)
	}
	td.Restart()
	wantDig(td, host, "A", "203.0.113.31")
	wantDig(td, host, "AAAA", "2001:db8::31")

	// A key file with another secret: ddclient reports the failure, the
	// record stays.
	bad := daemontest.TSIGKey{Name: host, Algorithm: "hmac-sha256", Secret: "bm90LXRoZS1rZXktbm90LXRoZS1rZXktbm90LXRoZS0="}
	writePrivateFile(t, keyFile, bindKeyFile(bad))
	writePrivateFile(t, conf, ddclientNsupdateConf(td, keyFile, "use=ip, ip=203.0.113.99", host, false))
	out, err := ddclient(t, conf, filepath.Join(dir, "bad.cache"))
	if !regexp.MustCompile(`(?m)^FAILED:.*`+regexp.QuoteMeta(host)).MatchString(out) || strings.Contains(out, "SUCCESS:") {
		t.Fatalf("ddclient with a wrong key (exit %v): want a failed update:\n%s", exitStatus(err), out)
	}
	wantDig(td, host, "A", "203.0.113.31")
}

// Dynamic updates are counted by outcome (via dns) and those a device's key
// signed are in the connection log, masked, like dyndns2's.
func TestDynamicUpdatesAreCountedAndLoggedMasked(t *testing.T) {
	td := daemontest.Start(t)
	tok := td.AddDevice("nas1")
	key := td.IssueTSIGKey("nas1", tok)
	host := dns.Fqdn(daemontest.FQDN("nas1"))
	update := func(k daemontest.TSIGKey, rrs ...string) int {
		m := new(dns.Msg).SetUpdate(dns.Fqdn(daemontest.Zone))
		for _, s := range rrs {
			rr, err := dns.NewRR(s)
			if err != nil {
				t.Fatal(err)
			}
			m.Ns = append(m.Ns, rr)
		}
		r, _ := td.Update("udp", k, m)
		return r.Rcode
	}
	if rc := update(key, host+" 60 IN A 203.0.113.40"); rc != dns.RcodeSuccess {
		t.Fatalf("update: %s", dns.RcodeToString[rc])
	}
	if rc := update(key, "nas2."+dns.Fqdn(daemontest.Zone)+" 60 IN A 203.0.113.40"); rc != dns.RcodeRefused {
		t.Fatalf("update of another name: %s", dns.RcodeToString[rc])
	}
	if rc := update(daemontest.TSIGKey{}, host+" 60 IN A 203.0.113.41"); rc != dns.RcodeNotAuth {
		t.Fatalf("unsigned update: %s", dns.RcodeToString[rc])
	}
	var fams map[string][]labelled
	// Each update's hook runs after its reply is sent, in the goroutine
	// miekg/dns gave the packet: wait for all three, not for the last.
	testutil.WaitFor(t, 5*time.Second, "the updates to be counted", func() bool {
		fams, _ = scrape(t, td)
		for _, outcome := range []string{"good", "refused", "badauth"} {
			if n, _ := lookup(fams, "nasreach_updates_total", map[string]string{"via": "dns", "outcome": outcome}); n < 1 {
				return false
			}
		}
		return true
	})
	for outcome, want := range map[string]float64{"good": 1, "refused": 1, "badauth": 1} {
		if got := value(t, fams, "nasreach_updates_total", map[string]string{"via": "dns", "outcome": outcome}); got != want {
			t.Errorf("dns updates %s = %v, want %v", outcome, got, want)
		}
	}
	td.Stop()
	all := connlogText(t, td)
	// Two lines: the unsigned update may come from a forged address.
	if n := strings.Count(all, `"service":"dns","kind":"update"`); n != 2 ||
		!strings.Contains(all, `"outcome":"good","device":"nas1","client":"127.0.0.0"`) ||
		!strings.Contains(all, `"outcome":"refused","device":"nas1"`) || strings.Contains(all, "127.0.0.1") {
		t.Errorf("want two masked dns update events of nas1 in the connection log, got %d:\n%s", n, all)
	}
}

// On etcd, a key issued through one node signs updates to every node (each
// learns it through its watch), and an update taken by one node is
// answered by the others.
func TestDynamicUpdateOnEtcdWorksOnEveryNode(t *testing.T) {
	a, b := startTwoNodesOnEtcd(t)
	key := a.IssueTSIGKey("nas1", a.AddDevice("nas1"))
	host := dns.Fqdn(daemontest.FQDN("nas1"))
	add, err := dns.NewRR(host + " 60 IN A 203.0.113.50")
	if err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 5*time.Second, "node b to take the key node a issued", func() bool {
		m := new(dns.Msg).SetUpdate(dns.Fqdn(daemontest.Zone))
		m.Ns = []dns.RR{add}
		r, err := b.Update("udp", key, m)
		return r.Rcode == dns.RcodeSuccess && err == nil
	})
	testutil.WaitFor(t, 5*time.Second, "node a to answer with the address node b took", func() bool {
		return daemontest.CheckAnswer(a.Query("udp", host, dns.TypeA), dns.TypeA, netip.MustParseAddr("203.0.113.50")) == nil
	})
}

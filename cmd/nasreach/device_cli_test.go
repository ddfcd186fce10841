package main

// The device subcommands that go beyond the basics in device_test.go:
// set-address, the access codes, the TSIG key, list --json.

import (
	"encoding/base64"
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/api/client"
)

func TestDeviceSetAddressResolvesInTheNextAnswer(t *testing.T) {
	clearCLIEnv(t)
	data, d := startLocalDaemon(t)
	local := []string{"--data", data}
	if _, _, err := runCLI(t, local, "add", "nas1"); err != nil {
		t.Fatal(err)
	}
	query := func(qtype uint16) []dns.RR {
		t.Helper()
		m := new(dns.Msg)
		m.SetQuestion("nas1.example.net.", qtype)
		r, _, err := new(dns.Client).Exchange(m, d.Addrs().DNS.String())
		if err != nil {
			t.Fatal(err)
		}
		return r.Answer
	}
	out, _, err := runCLI(t, local, "set-address", "--ipv4", "203.0.113.10", "--ipv6", "2001:db8::10", "nas1")
	if err != nil || out != "nas1: ipv4 203.0.113.10, ipv6 2001:db8::10\n" {
		t.Fatalf("set-address printed %q, %v", out, err)
	}
	if a := query(dns.TypeA); len(a) != 1 || a[0].(*dns.A).A.String() != "203.0.113.10" {
		t.Errorf("A answer after set-address: %v", a)
	}
	out, _, err = runCLI(t, local, "set-address", "--clear-ipv4", "nas1")
	if err != nil || out != "nas1: ipv4 -, ipv6 2001:db8::10\n" {
		t.Fatalf("set-address --clear-ipv4 printed %q, %v", out, err)
	}
	if a := query(dns.TypeA); len(a) != 0 {
		t.Errorf("A answer after --clear-ipv4: %v", a)
	}
	if aaaa := query(dns.TypeAAAA); len(aaaa) != 1 || aaaa[0].(*dns.AAAA).AAAA.String() != "2001:db8::10" {
		t.Errorf("AAAA answer after --clear-ipv4: %v", aaaa)
	}
	if _, _, err := runCLI(t, local, "set", "--ddns=false", "nas1"); err != nil {
		t.Fatal(err)
	}
	if out, _, _ = runCLI(t, local, "set-address", "--ipv4", "203.0.113.11", "nas1"); !strings.Contains(out, "ddns is off") {
		t.Errorf("set-address on a device with ddns off printed %q, want a note that the name does not resolve", out)
	}

	wantDeviceErrors(t, local, []deviceError{
		{[]string{"set-address", "nas1"}, "give --ipv4, --ipv6, --clear-ipv4 or --clear-ipv6"},
		{[]string{"set-address", "--ipv4", "2001:db8::1", "nas1"}, `--ipv4 "2001:db8::1" is not an IPv4 address`},
		{[]string{"set-address", "--ipv6", "::ffff:192.0.2.1", "nas1"}, "is not an IPv6 address"},
		{[]string{"set-address", "--ipv4", "192.0.2.1", "--clear-ipv4", "nas1"}, "give one of them"},
		{[]string{"set-address", "--ipv4", "0.0.0.0", "nas1"}, "names no host (HTTP 400)"},
		{[]string{"set-address", "--ipv4", "192.0.2.1", "nas9"}, "no such device (HTTP 404)"},
		{[]string{"set-address", "--ipv4", "192.0.2.1"}, "want exactly one device NAME"},
	})
}

// deviceError is a device command line and what its error must say.
type deviceError struct {
	args []string
	want string
}

// wantDeviceErrors runs each "nasreach device <flags> <args>" and checks
// that it fails saying what it should.
func wantDeviceErrors(t *testing.T, flags []string, cases []deviceError) {
	t.Helper()
	for _, c := range cases {
		if _, _, err := runCLI(t, flags, c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("device %s: err %v, want one saying %s", strings.Join(c.args, " "), err, c.want)
		}
	}
}

func TestDeviceCodeAddListRm(t *testing.T) {
	clearCLIEnv(t)
	data, d := startLocalDaemon(t)
	local := []string{"--data", data}
	if _, _, err := runCLI(t, local, "add", "nas1"); err != nil {
		t.Fatal(err)
	}
	out, _, err := runCLI(t, local, "code", "add", "nas1")
	m := regexp.MustCompile(`^id:   (\S+)\ncode: (\S+)\n\(the code is shown only now; Link clients pass it with --access-code\)\n`).FindStringSubmatch(out)
	if err != nil || m == nil {
		t.Fatalf("code add printed %q, %v; want the id, the code and the shown-once note", out, err)
	}
	id, code := m[1], m[2]
	if !d.Store().CheckAccessCode("nas1", code) {
		t.Fatal("the printed access code does not check")
	}
	if !strings.Contains(out, "nasreach device set --access token nas1") {
		t.Errorf("code add for a public device printed %q, want a note on how to require codes", out)
	}

	out, _, err = runCLI(t, local, "code", "list", "nas1")
	if err != nil || !regexp.MustCompile(`^ID\s+CREATED\n`+regexp.QuoteMeta(id)+`\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\n$`).MatchString(out) {
		t.Errorf("code list printed %q, %v; want a header and the id with its time", out, err)
	}
	if strings.Contains(out, code) {
		t.Error("code list printed the code; it is shown once, at add")
	}

	if out, _, err = runCLI(t, local, "code", "rm", "nas1", id); err != nil || out != "revoked access code "+id+" of nas1\n" {
		t.Fatalf("code rm printed %q, %v", out, err)
	}
	if d.Store().CheckAccessCode("nas1", code) {
		t.Error("a revoked access code still checks")
	}
	if _, _, err = runCLI(t, local, "code", "rm", "nas1", id); err == nil ||
		!strings.Contains(err.Error(), "no such access code (HTTP 404)") || !strings.Contains(err.Error(), "nasreach device code list nas1") {
		t.Errorf("revoking twice: %v; want no such access code and where to see the codes", err)
	}
	if out, _, err = runCLI(t, local, "code", "list", "nas1"); err != nil || !strings.Contains(out, "nas1 has no access codes") {
		t.Errorf("code list with none printed %q, %v", out, err)
	}
	wantDeviceErrors(t, local, []deviceError{
		{[]string{"code", "add", "nas9"}, "issue an access code for nas9: no such device (HTTP 404)"},
		{[]string{"code", "rm", "nas9", id}, "no such device (HTTP 404)"},
		{[]string{"code", "rm", "nas1"}, "want a device NAME and an access code ID"},
		{[]string{"code", "list", "nas9"}, "no such device (HTTP 404)"},
	})
}

func TestDeviceTSIGAddPrintsOrWritesAKeyNsupdateTakes(t *testing.T) {
	clearCLIEnv(t)
	data, d := startLocalDaemon(t)
	local := []string{"--data", data}
	if _, _, err := runCLI(t, local, "add", "nas1"); err != nil {
		t.Fatal(err)
	}
	out, _, err := runCLI(t, local, "tsig", "add", "nas1")
	m := regexp.MustCompile(`^name:      nas1\.example\.net\nalgorithm: hmac-sha256\nsecret:    (\S+)\n\(the secret is shown only now; nsupdate -y hmac-sha256:nas1\.example\.net:SECRET takes it\)\n$`).FindStringSubmatch(out)
	if err != nil || m == nil {
		t.Fatalf("tsig add printed %q, %v", out, err)
	}
	if k, ok := d.Store().TSIGKey("nas1"); !ok || base64.StdEncoding.EncodeToString(k.Secret) != m[1] {
		t.Fatal("the printed secret is not the key in force")
	}

	// A key file replaces the key, is private, and nsupdate -k takes it.
	file := filepath.Join(t.TempDir(), "nas1.key")
	if err := os.WriteFile(file, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _, err = runCLI(t, local, "tsig", "add", "--key-file", file, "nas1")
	if err != nil || out != "wrote TSIG key nas1.example.net (hmac-sha256) to "+file+"\n(nsupdate -k "+file+"; ddclient: protocol=nsupdate, password="+file+")\n" {
		t.Fatalf("tsig add --key-file printed %q, %v", out, err)
	}
	k, _ := d.Store().TSIGKey("nas1")
	text, _ := os.ReadFile(file)
	if fi, _ := os.Stat(file); fi.Mode().Perm() != 0o600 ||
		string(text) != "key \"nas1.example.net\" {\n\talgorithm hmac-sha256;\n\tsecret \""+base64.StdEncoding.EncodeToString(k.Secret)+"\";\n};\n" {
		t.Fatalf("key file (mode %v):\n%s", fi.Mode(), text)
	}
	if strings.Contains(out, base64.StdEncoding.EncodeToString(k.Secret)) {
		t.Error("tsig add --key-file printed the secret")
	}
	if nsupdate, err := exec.LookPath("nsupdate"); err == nil {
		_, port, _ := net.SplitHostPort(d.Addrs().DNS.String())
		cmd := exec.Command(nsupdate, "-k", file)
		cmd.Stdin = strings.NewReader("server 127.0.0.1 " + port + "\nzone example.net\nupdate add nas1.example.net 60 A 203.0.113.12\nsend\n")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("nsupdate -k with the key file: %v\n%s", err, out)
		}
		if rec, _ := d.Store().Lookup("nas1"); rec.IPv4 != netip.MustParseAddr("203.0.113.12") {
			t.Errorf("after nsupdate -k nas1 resolves to %v", rec.IPv4)
		}
	}

	if out, _, err = runCLI(t, local, "tsig", "rm", "nas1"); err != nil || out != "revoked the TSIG key of nas1 (if it had one)\n" {
		t.Fatalf("tsig rm printed %q, %v", out, err)
	}
	if _, ok := d.Store().TSIGKey("nas1"); ok {
		t.Error("the key is in force after tsig rm")
	}
	wantDeviceErrors(t, local, []deviceError{
		{[]string{"tsig", "add", "nas9"}, "issue a TSIG key for nas9: no such device (HTTP 404)"},
		{[]string{"tsig", "rm", "nas9"}, "no such device (HTTP 404)"},
		{[]string{"tsig", "add"}, "want exactly one device NAME"},
	})
}

func TestDeviceListJSONIsTheAPIsDevices(t *testing.T) {
	clearCLIEnv(t)
	data, _ := startLocalDaemon(t)
	local := []string{"--data", data}
	if out, _, err := runCLI(t, local, "list", "--json"); err != nil || out != "[]\n" {
		t.Errorf("list --json with no devices printed %q, %v; want []", out, err)
	}
	for _, args := range [][]string{{"add", "nas1"}, {"add", "nas2"}, {"set-address", "--ipv4", "203.0.113.10", "nas1"}} {
		if _, _, err := runCLI(t, local, args...); err != nil {
			t.Fatal(err)
		}
	}
	out, _, err := runCLI(t, local, "list", "--json")
	var list []client.Device
	if err != nil || json.Unmarshal([]byte(out), &list) != nil || len(list) != 2 {
		t.Fatalf("list --json printed %q, %v; want a JSON array of two devices", out, err)
	}
	shown, _, _ := runCLI(t, local, "show", "nas1")
	var one client.Device
	json.Unmarshal([]byte(shown), &one)
	if list[0].Name != "nas1" || list[0].IPv4 != netip.MustParseAddr("203.0.113.10") || list[0].FQDN != "nas1.example.net" ||
		!list[0].Updated.Equal(one.Updated) || list[0].TokenSHA256 != one.TokenSHA256 || list[1].Name != "nas2" {
		t.Errorf("list --json printed\n%s\nwant nas1 as show prints it:\n%s", out, shown)
	}
}

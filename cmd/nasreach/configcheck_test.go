package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/nasreach/nasreach/internal/testutil"
)

// runNasreach runs the command line with args after "nasreach" and returns what
// it printed and its error.
func runNasreach(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	err := newApp(&out, &out).Run(context.Background(), append([]string{"nasreach"}, args...))
	return out.String(), err
}

// TestConfigCheckReportsEveryProblemInFileOrder is the first-hour complaint:
// a bad zone, an impossible port and an in-zone nameserver without glue used
// to pass as "configuration ok". Now each is an error with its line, all in
// one report, in the order of the file.
func TestConfigCheckReportsEveryProblemInFileOrder(t *testing.T) {
	file := writeConfig(t, `dns = "0.0.0.0:99999"
zone = "bad..zone"
bogus = 1
ttl = "soon"
`)
	_, err := runNasreach(t, "config", "check", "--config", file)
	if err == nil {
		t.Fatal("config check accepted a bad zone, port, key and TTL")
	}
	lines := strings.Split(err.Error(), "\n")
	want := []string{
		`line 1: dns: listen address "0.0.0.0:99999": port "99999" is not a number from 0 to 65535`,
		`line 2: zone "bad..zone" is not a domain name`,
		`line 3: unknown key "bogus"`,
		`line 4: key "ttl": invalid value "soon"`,
	}
	if len(lines) != len(want) {
		t.Fatalf("config check reported %d problems, want %d:\n%s", len(lines), len(want), err)
	}
	for i, w := range want {
		if !strings.Contains(lines[i], file+" "+w) {
			t.Errorf("problem %d = %q\nwant it to contain %q", i+1, lines[i], w)
		}
	}

	file = writeConfig(t, "zone = \"nas.example.net\"\nns = [\"ns1\"]\n")
	if _, err := runNasreach(t, "config", "check", "--config", file); err == nil ||
		!strings.Contains(err.Error(), "line 2: nameserver ns1.nas.example.net. is inside the zone and needs its address for glue (ns1=IP)") {
		t.Errorf("in-zone nameserver without an address: config check says %v", err)
	}
}

// TestConfigCheckTakesServeFlags checks what its help promises: the
// configuration serve would run with, flags included.
func TestConfigCheckTakesServeFlags(t *testing.T) {
	out, err := runNasreach(t, "config", "check", "--zone", "nas.example.net", "--dns", "127.0.0.1:53", "--ns", "ns1=192.0.2.53")
	if err != nil || !strings.Contains(out, "configuration ok") {
		t.Fatalf("config check with serve flags: %v\n%s", err, out)
	}
	if _, err := runNasreach(t, "config", "check", "--http", "127.0.0.1:http-alt"); err == nil || !strings.Contains(err.Error(), "http: listen address") {
		t.Errorf("config check --http with a named port: %v, want the address refused", err)
	}
}

// TestServeRefusesABadConfigBeforeTouchingTheDisk: serve with a bad zone used
// to create admin.token and nasreach.db first, then refuse.
func TestServeRefusesABadConfigBeforeTouchingTheDisk(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	_, err := runNasreach(t, "serve", "--data", data, "--zone", "bad..zone",
		"--dns", "127.0.0.1:0", "--http", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--stun", "", "--link", "")
	if err == nil || !strings.Contains(err.Error(), `zone "bad..zone" is not a domain name`) {
		t.Fatalf("serve --zone bad..zone: %v", err)
	}
	if _, err := os.Stat(data); !os.IsNotExist(err) {
		entries, _ := os.ReadDir(data)
		t.Errorf("serve refused its config but created %s (%d entries)", data, len(entries))
	}
}

// TestREADMEProductionConfigPassesCheck runs the README's production snippet
// through config check as an operator would after pasting it, with the
// certificate and key it names made up in a temporary /etc/nasreach.
func TestREADMEProductionConfigPassesCheck(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)A production zone needs at least:\n\n```toml\n(.*?)```").FindSubmatch(readme)
	if m == nil {
		t.Fatal("README.md has no production config snippet after \"A production zone needs at least:\"")
	}
	etc := t.TempDir()
	testutil.WriteCert(t, filepath.Join(etc, "fullchain.pem"), filepath.Join(etc, "privkey.pem"), "nas.example.net")
	snippet := strings.ReplaceAll(string(m[1]), "/etc/nasreach", etc)
	if !strings.Contains(snippet, etc) {
		t.Fatal("the README's production snippet no longer names files in /etc/nasreach; update this test")
	}
	out, err := runNasreach(t, "config", "check", "--config", writeConfig(t, snippet))
	if err != nil || !strings.Contains(out, "configuration ok") {
		t.Fatalf("config check on the README's production snippet:\n%s\n%v", snippet, err)
	}
}

// TestREADMEClusterConfigPassesCheck runs the README's cluster node snippet
// ("Link across nodes") through config check, with its certificate made up
// and the mesh key as systemd would pass it.
func TestREADMEClusterConfigPassesCheck(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)the rest is the same on every node \\(systemd unit unchanged\\):\n\n```toml\n(.*?)```").FindSubmatch(readme)
	if m == nil {
		t.Fatal("README.md has no cluster node snippet in \"Link across nodes\"")
	}
	etc := t.TempDir()
	testutil.WriteCert(t, filepath.Join(etc, "relay.example.net.crt"), filepath.Join(etc, "relay.example.net.key"), "relay.example.net")
	snippet := strings.ReplaceAll(string(m[1]), "/etc/nasreach", etc)
	creds := t.TempDir()
	if err := os.WriteFile(filepath.Join(creds, meshKeyCredential), []byte("bWVzaCBrZXkgb2YgdGhlIHJlYWRtZSB0ZXN0Cg==\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CREDENTIALS_DIRECTORY", creds)
	out, err := runNasreach(t, "config", "check", "--config", writeConfig(t, snippet))
	if err != nil || !strings.Contains(out, "configuration ok") {
		t.Fatalf("config check on the README's cluster snippet:\n%s\n%s\n%v", snippet, out, err)
	}
	// The same settings on bbolt are refused, naming them.
	bbolt := strings.Replace(snippet, `store = "etcd"`, `store = "bbolt"`, 1)
	bbolt = regexp.MustCompile(`(?m)^etcd-endpoints.*$`).ReplaceAllString(bbolt, "")
	out, err = runNasreach(t, "config", "check", "--config", writeConfig(t, bbolt))
	if err == nil || !strings.Contains(err.Error(), "link-advertise") || !strings.Contains(err.Error(), "link-mesh-key") {
		t.Errorf("config check of cluster settings on bbolt: want link-advertise and link-mesh-key refused, got %v:\n%s", err, out)
	}
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/daemon"
	"github.com/nasreach/nasreach/daemon/daemontest"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/rs/zerolog"
)

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "nasreach.toml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigPrecedenceFlagThenEnvThenFileThenDefault(t *testing.T) {
	file := writeConfig(t, "ttl = \"120s\"\nzone = \"example.net\"\nns = [\"ns1=192.0.2.53\", \"ns2=192.0.2.54\"]\nopen-registration = true\n")
	ctx := context.Background()
	parse := func(args ...string) daemon.Config {
		t.Helper()
		cfg, err := parseServeConfig(ctx, append([]string{"nasreach", "serve", "--config", file}, args...))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	cfg := parse()
	if cfg.TTL != 120*time.Second || cfg.Zone != "example.net" || len(cfg.NameServers) != 2 || !cfg.OpenRegistration {
		t.Fatalf("file values not applied: %+v", cfg)
	}
	if cfg.DNSAddr != defaultDNSAddr {
		t.Errorf("a key the file leaves out keeps its default: dns = %q", cfg.DNSAddr)
	}
	t.Setenv("NASREACH_TTL", "90s")
	if cfg := parse(); cfg.TTL != 90*time.Second || cfg.Zone != "example.net" {
		t.Errorf("environment must beat the file: ttl %s", cfg.TTL)
	}
	if cfg := parse("--ttl", "30s"); cfg.TTL != 30*time.Second {
		t.Errorf("a flag must beat environment and file: ttl %s", cfg.TTL)
	}
	if cfg := parse("--ns", "ns9=192.0.2.99"); len(cfg.NameServers) != 1 || cfg.NameServers[0].Name != "ns9" {
		t.Errorf("a list flag replaces the file's list: %+v", cfg.NameServers)
	}
}

func TestConfigErrorsNameTheKeyAndLine(t *testing.T) {
	for _, c := range []struct{ name, text, want string }{
		{"unknown key", "ttl = \"60s\"\n\nzoen = \"x\"\n", `line 3: unknown key "zoen"`},
		{"invalid duration", "zone = \"example.net\"\nttl = \"soon\"\n", `line 2: key "ttl": invalid value "soon"`},
		{"invalid boolean", "open-registration = \"perhaps\"\n", `line 1: key "open-registration"`},
		{"list for a single value", "zone = [\"a\", \"b\"]\n", `line 1: key "zone" takes one value`},
		{"table", "[dns]\naddr = \"x\"\n", `line 1: key "dns": tables are not used`},
		{"syntax", "zone = \"unterminated\n", "line 1"},
		{"invalid setting caught by validation", "ns = [\"ns1=not-an-ip\"]\n", `"not-an-ip" is not an IP address`},
	} {
		t.Run(c.name, func(t *testing.T) {
			file := writeConfig(t, c.text)
			var out bytes.Buffer
			err := newApp(&out, &out).Run(context.Background(), []string{"nasreach", "config", "check", "--config", file})
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), file) && !strings.Contains(c.name, "validation") {
				t.Fatalf("config check: %v; want an error containing %q and the file name", err, c.want)
			}
		})
	}
}

func TestDefaultConfigIsCommittedAndEveryKeyParses(t *testing.T) {
	var out bytes.Buffer
	if err := newApp(&out, &out).Run(context.Background(), []string{"nasreach", "config", "default"}); err != nil {
		t.Fatal(err)
	}
	committed, err := os.ReadFile("../../dist/nasreach.toml")
	if err != nil || !bytes.Equal(committed, out.Bytes()) {
		t.Fatalf("dist/nasreach.toml differs from 'nasreach config default' (regenerate it with: go run ./cmd/nasreach config default > dist/nasreach.toml): %v", err)
	}
	// Uncommenting every setting gives a valid file equal to the defaults.
	uncommented := regexp.MustCompile(`(?m)^#([a-z0-9-]+ = )`).ReplaceAll(committed, []byte("$1"))
	file := writeConfig(t, string(uncommented))
	got, err := parseServeConfig(context.Background(), []string{"nasreach", "serve", "--config", file})
	if err != nil {
		t.Fatalf("the uncommented default config does not parse: %v", err)
	}
	want, _ := parseServeConfig(context.Background(), []string{"nasreach", "serve"})
	if got.TTL != want.TTL || got.DNSAddr != want.DNSAddr || got.Privacy.LogRetention != want.Privacy.LogRetention || got.Zone != want.Zone {
		t.Errorf("uncommented defaults differ from built-in ones: %+v vs %+v", got, want)
	}
}

// logField waits for the first record with message in log, the JSON lines
// of a subcommand or of the daemon, and returns its field.
func logField(t *testing.T, log *testutil.Buffer, message, field string) string {
	t.Helper()
	var value string
	testutil.WaitFor(t, 30*time.Second, fmt.Sprintf("a %q record in the log", message), func() bool {
		for _, line := range strings.Split(log.String(), "\n") {
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) == nil && rec["message"] == message {
				value, _ = rec[field].(string)
				return true
			}
		}
		return false
	})
	return value
}

func TestReloadChangesTTLWithoutLosingAQuery(t *testing.T) {
	bin := buildNasreach(t)
	file := writeConfig(t, "ttl = \"60s\"\n")
	p := startNasreach(t, bin, "NASREACH_CONFIG="+file)
	addr := logField(t, p.stderr, "nasreach ready", "dns")
	ttlNow := func(c *dns.Client) (uint32, error) {
		m := new(dns.Msg).SetQuestion("nobody.myqnapcloud.com.", dns.TypeA)
		r, _, err := c.Exchange(m, addr)
		if err != nil {
			return 0, err
		}
		if len(r.Ns) != 1 {
			return 0, os.ErrInvalid
		}
		return r.Ns[0].Header().Ttl, nil // the negative TTL follows --ttl
	}
	c := &dns.Client{Net: "udp", Timeout: time.Second}
	if ttl, err := ttlNow(c); err != nil || ttl != 60 {
		t.Fatalf("before reload: ttl %d, %v", ttl, err)
	}
	// A query loop runs across the reload; every query must be answered.
	var sent, failed, newTTL atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		lc := &dns.Client{Net: "udp", Timeout: time.Second}
		for {
			select {
			case <-stop:
				return
			default:
			}
			sent.Add(1)
			switch ttl, err := ttlNow(lc); {
			case err != nil:
				failed.Add(1)
			case ttl == 300:
				newTTL.Add(1)
			}
		}
	}()
	stopLoop := sync.OnceFunc(func() { close(stop); <-done })
	defer stopLoop()
	// The loop is under way before the reload…
	testutil.WaitFor(t, 10*time.Second, "the query loop's first queries", func() bool { return sent.Load() >= 10 })
	if err := os.WriteFile(file, []byte("ttl = \"300s\"\nzone = \"example.net\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, "the TTL to be 300 after SIGHUP", func() bool {
		ttl, err := ttlNow(c)
		return err == nil && ttl == 300
	})
	// …and goes on after it, answered with the new TTL.
	testutil.WaitFor(t, 10*time.Second, "the query loop's answers with the new TTL", func() bool { return newTTL.Load() >= 10 })
	stopLoop()
	if failed.Load() != 0 || sent.Load() < 10 {
		t.Fatalf("%d of %d queries failed across the reload", failed.Load(), sent.Load())
	}
	if log := p.stderr.String(); !strings.Contains(log, `"needs_restart":["zone"]`) || !strings.Contains(log, `"applied":["ttl"]`) {
		t.Errorf("the reload must report ttl applied and zone needing a restart:\n%s", log)
	}
	// A broken file is refused whole; the daemon keeps serving what it had.
	os.WriteFile(file, []byte("ttl = \"5s\"\nbogus = 1\n"), 0o600)
	p.cmd.Process.Signal(syscall.SIGHUP)
	testutil.WaitFor(t, 10*time.Second, "the broken config to be refused (reload refused in the log)", func() bool {
		return strings.Contains(p.stderr.String(), "reload refused")
	})
	if ttl, err := ttlNow(c); err != nil || ttl != 300 {
		t.Fatalf("after a refused reload: ttl %d, %v; want 300 still", ttl, err)
	}
	t.Logf("%d queries answered across the reload, none lost", sent.Load())
}

// TestEveryServeFlagIsADaemonSetting ties the flags to daemon.Config's
// setting tags: Reload compares every tagged field and reports a change as
// needing a restart unless it has a live setter, so a flag without a field
// (or a field named after no flag) would escape that check.
func TestEveryServeFlagIsADaemonSetting(t *testing.T) {
	var flags []string
	for _, f := range serveCommand().Flags {
		switch name := f.Names()[0]; name {
		case "config", "log-format": // which file to read; how cmd writes the log
		default:
			flags = append(flags, name)
		}
	}
	settings := daemon.SettingNames()
	slices.Sort(flags)
	slices.Sort(settings)
	if !slices.Equal(flags, settings) {
		t.Errorf("serve flags and daemon settings differ:\nflags    %v\nsettings %v", flags, settings)
	}
}

// TestReloadReportsEveryOtherSettingAsNeedingARestart changes every setting
// at once: those with a live setter are applied, all others are reported.
func TestReloadReportsEveryOtherSettingAsNeedingARestart(t *testing.T) {
	var level zerolog.Level = -99
	td := daemontest.Start(t, func(c *daemon.Config) {
		c.LogLevel = zerolog.InfoLevel
		c.SetLogLevel = func(l zerolog.Level) { level = l }
	})
	dir := t.TempDir()
	next, err := parseServeConfig(context.Background(), []string{"nasreach", "serve",
		"--data", dir, "--zone", "example.net", "--dns", "127.0.0.1:1", "--http", "127.0.0.1:2", "--metrics", "127.0.0.1:3",
		"--admin-token", "another-admin-token-0123456789", "--ns", "ns9=127.0.0.9", "--ttl", "5m", "--open-registration",
		"--reserved", "www", "--trusted-proxy", "127.0.0.0/8", "--exact-names",
		"--log-level", "warn", "--log-queries", "--link-max-agents", "7", "--link-idle-timeout", "1m",
		"--turn-user", "u:p", "--turn-max-allocations", "3"})
	if err != nil {
		t.Fatal(err)
	}
	applied, restart := td.Daemon.Reload(next)
	// The test daemon's Link limits are zero (the defaults), so all four
	// change together; it runs no relay, with direct paths off; so does its
	// rate limiting (off) against serve's defaults.
	wantApplied := []string{"exact-names", "link-direct", "link-max-agents", "link-max-streams", "link-stream-burst", "link-stream-rate",
		"log-level", "log-queries", "open-registration",
		"rrl-error-rate", "rrl-exempt", "rrl-nxdomain-rate", "rrl-rate", "rrl-slip",
		"trusted-proxy", "ttl", "turn-user"}
	if !slices.Equal(applied, wantApplied) {
		t.Errorf("applied %v, want %v", applied, wantApplied)
	}
	if level != zerolog.WarnLevel {
		t.Errorf("log level set to %v, want warn", level)
	}
	for _, name := range []string{"data", "zone", "dns", "http", "metrics", "admin-token", "ns", "reserved", "link-idle-timeout", "turn-max-allocations"} {
		if !slices.Contains(restart, name) {
			t.Errorf("%s changed but is not reported as needing a restart (got %v)", name, restart)
		}
	}
	// What needs a restart was not applied: the next reload reports it again.
	if _, again := td.Daemon.Reload(next); !slices.Equal(again, restart) {
		t.Errorf("second reload needs restart %v, want %v again", again, restart)
	}
}

package main

// What the daemon writes to its connection log, and what `nasreach logs
// stats` makes of that log.

import (
	"bytes"
	"context"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nasreach/nasreach/daemon"
	"github.com/nasreach/nasreach/daemon/daemontest"
)

func TestConnectionLogHoldsOnlyMaskedAddresses(t *testing.T) {
	td := daemontest.Start(t, func(c *daemon.Config) {
		c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	})
	token := td.AddDevice("nas1")
	for _, tc := range []struct{ user, pass, from string }{
		{"nas1", token, "198.51.100.77"},
		{"nas1", "wrong", "203.0.113.201"},
		{"nas1", token, "2001:db8:abcd:1234:5678::77"},
	} {
		req, _ := http.NewRequest(http.MethodGet, td.HTTP+"/nic/update?hostname=nas1.myqnapcloud.com&myip=192.0.2.1", nil)
		req.SetBasicAuth(tc.user, tc.pass)
		req.Header.Set("X-Forwarded-For", tc.from)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	td.Stop() // flushes the log
	files, _ := filepath.Glob(filepath.Join(td.Dir, "logs", "conn-*.jsonl"))
	if len(files) != 1 {
		t.Fatalf("want one daily log file, got %v", files)
	}
	b, _ := os.ReadFile(files[0])
	log := string(b)
	for _, full := range []string{"198.51.100.77", "203.0.113.201", "2001:db8:abcd:1234"} {
		if strings.Contains(log, full) {
			t.Errorf("connection log contains %s unmasked:\n%s", full, log)
		}
	}
	for _, want := range []string{`"client":"198.51.100.0"`, `"client":"203.0.113.0"`, `"client":"2001:db8:abcd::"`, `"outcome":"badauth"`, `"outcome":"good"`} {
		if !strings.Contains(log, want) {
			t.Errorf("connection log lacks %s:\n%s", want, log)
		}
	}
	if info, _ := os.Stat(files[0]); info.Mode().Perm() != 0o600 {
		t.Errorf("log file mode %v, want 0600", info.Mode().Perm())
	}
	var out bytes.Buffer
	err := newApp(&out, &out).Run(context.Background(), []string{"nasreach", "logs", "stats", "--dir", filepath.Join(td.Dir, "logs")})
	if err != nil || !strings.Contains(out.String(), "ddns") || strings.Contains(out.String(), "nas1") || strings.Contains(out.String(), "198.51.100") {
		t.Fatalf("logs stats: %v\n%s", err, out.String())
	}
}

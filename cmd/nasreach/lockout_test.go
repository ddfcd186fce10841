package main

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nasreach/nasreach/daemon"
)

// TestOperatorIsNotLockedOutByFailedLogins is the first-hour lock-out: ten
// wrong admin tokens from 127.0.0.1 locked the operator out of device list,
// rm and backup for five minutes. The device commands now go through the
// daemon's local socket when they run on its machine, which failed logins
// from the network cannot block; over HTTP the block holds for every call.
func TestOperatorIsNotLockedOutByFailedLogins(t *testing.T) {
	clearCLIEnv(t)
	data, err := os.MkdirTemp("", "nr") // short: a socket path has at most 107 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(data) })
	d, err := daemon.New(daemon.Config{
		DataDir: data, Zone: "example.net",
		DNSAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		d.Shutdown(ctx)
	})
	if info, err := os.Stat(filepath.Join(data, daemon.SocketFile)); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("local socket: %v, mode %v; want mode 0600", err, info.Mode().Perm())
	}
	server := "http://" + d.Addrs().HTTP.String()
	for range 10 {
		req, _ := http.NewRequest("GET", server+"/v1/devices", nil)
		req.Header.Set("Authorization", "Bearer not-the-admin-token-at-all")
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}
	if _, _, err := runCLI(t, []string{"--data", data, "--server", server}, "list"); err == nil || !strings.Contains(err.Error(), "too many failed logins") {
		t.Fatalf("device list over HTTP from the blocked address: %v, want the block", err)
	}
	for _, args := range [][]string{{"add", "nas1"}, {"list"}, {"rm", "nas1"}} {
		if out, _, err := runCLI(t, []string{"--data", data}, args...); err != nil {
			t.Fatalf("device %v on the daemon's machine: %v\n%s", args, err, out)
		}
	}
	var out, errOut strings.Builder
	backups := t.TempDir()
	if err := newApp(&out, &errOut).Run(context.Background(), []string{"nasreach", "backup", "--data", data, "--out", backups}); err != nil {
		t.Fatalf("backup on the daemon's machine: %v\n%s", err, errOut.String())
	}
}

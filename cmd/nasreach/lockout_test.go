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
	data, d := startLocalDaemon(t)
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

// startLocalDaemon runs a daemon in a data directory short enough for its
// local socket (a Unix socket path has at most 107 bytes) and returns the
// directory.
func startLocalDaemon(t *testing.T) (string, *daemon.Daemon) {
	t.Helper()
	data, err := os.MkdirTemp("", "nr")
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
	return data, d
}

// TestASecondBackupOnADayKeepsTheFirst: the second snapshot of a day used to
// replace the first without a word.
func TestASecondBackupOnADayKeepsTheFirst(t *testing.T) {
	clearCLIEnv(t)
	data, _ := startLocalDaemon(t)
	out := t.TempDir()
	var printed []string
	for i := range 3 {
		if i == 1 {
			if _, _, err := runCLI(t, []string{"--data", data}, "add", "nas1"); err != nil {
				t.Fatal(err)
			}
		}
		var stdout, stderr strings.Builder
		if err := newApp(&stdout, &stderr).Run(context.Background(), []string{"nasreach", "backup", "--data", data, "--out", out}); err != nil {
			t.Fatalf("backup %d: %v\n%s", i+1, err, stderr.String())
		}
		printed = append(printed, stdout.String())
	}
	day := time.Now().UTC().Format(time.DateOnly)
	for i, name := range []string{"nasreach-" + day + ".db", "nasreach-" + day + ".2.db", "nasreach-" + day + ".3.db"} {
		if _, err := os.Stat(filepath.Join(out, name)); err != nil {
			t.Errorf("backup %d: %v", i+1, err)
		}
		if !strings.Contains(printed[i], name) {
			t.Errorf("backup %d printed %q, want it to name %s", i+1, printed[i], name)
		}
	}
	first, _ := os.ReadFile(filepath.Join(out, "nasreach-"+day+".db"))
	second, _ := os.ReadFile(filepath.Join(out, "nasreach-"+day+".2.db"))
	if len(first) == 0 || string(first) == string(second) {
		t.Error("the first snapshot of the day does not hold the store as it was before nas1 was added")
	}
	if ents, _ := os.ReadDir(out); len(ents) != 3 {
		t.Errorf("%d files in the backup directory, want the 3 snapshots and no leftovers", len(ents))
	}
}

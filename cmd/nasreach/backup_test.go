package main

// `nasreach backup` against a running daemon, and a daemon restored from
// the snapshot it wrote.

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/daemon"
	"github.com/nasreach/nasreach/daemon/daemontest"
	"github.com/nasreach/nasreach/store"
)

func TestBackupSnapshotRestoresAndOldSnapshotsExpire(t *testing.T) {
	td := daemontest.Start(t)
	token := td.AddDevice("nas1")
	td.Do(http.MethodPut, "/v1/devices/nas1/address", token, map[string]string{"ipv4": "198.51.100.61"})
	out := t.TempDir()
	old := filepath.Join(out, "nasreach-2020-01-01.db")
	os.WriteFile(old, []byte("old"), 0o600)
	var stdout bytes.Buffer
	err := newApp(&stdout, &stdout).Run(context.Background(), []string{"nasreach", "backup", "--server", td.HTTP, "--admin-token", td.Admin, "--out", out})
	if err != nil {
		t.Fatalf("backup: %v\n%s", err, stdout.String())
	}
	if _, err := os.Stat(old); err == nil {
		t.Error("a snapshot older than six months survived")
	}
	snap := filepath.Join(out, "nasreach-"+time.Now().UTC().Format(time.DateOnly)+".db")
	// Restore: a new daemon on a copy of the snapshot answers as the old one did.
	restored := t.TempDir()
	b, err := os.ReadFile(snap)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(restored, store.FileName), b, 0o600)
	td2 := daemontest.Start(t, func(c *daemon.Config) { c.DataDir = restored })
	r := td2.Query("udp", "nas1.myqnapcloud.com", dns.TypeA)
	if len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "198.51.100.61" {
		t.Fatalf("restored daemon answers %v", r.Answer)
	}
	if code, _ := td2.Do(http.MethodGet, "/v1/devices/nas1", token, nil); code != http.StatusOK {
		t.Fatalf("device token after restore: HTTP %d", code)
	}
}

// TestBackupIfHousekeepingOnOneNodeTakesIt: a node on its own store does its
// own housekeeping, so the cluster's daily timer line works there too.
func TestBackupIfHousekeepingOnOneNodeTakesIt(t *testing.T) {
	td := daemontest.Start(t)
	out := t.TempDir()
	var stdout bytes.Buffer
	err := newApp(&stdout, &stdout).Run(context.Background(), []string{"nasreach", "backup", "--if-housekeeping", "--server", td.HTTP, "--admin-token", td.Admin, "--out", out})
	if err != nil {
		t.Fatalf("backup --if-housekeeping: %v\n%s", err, stdout.String())
	}
	if err := checkSnapshot(filepath.Join(out, "nasreach-"+time.Now().UTC().Format(time.DateOnly)+".db")); err != nil {
		t.Fatalf("no sound snapshot: %v\n%s", err, stdout.String())
	}
}

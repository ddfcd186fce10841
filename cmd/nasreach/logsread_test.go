package main

import (
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nasreach/nasreach/connlog"
)

// TestLogsReadHonoursDir: logs read took only file paths and ignored --dir.
// Now it reads every file in the log directory, or the files named there.
func TestLogsReadHonoursDir(t *testing.T) {
	dir := t.TempDir()
	day1 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	now := day1
	l, err := connlog.New(connlog.Config{Dir: dir, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	l.Log(connlog.Event{Time: day1, Service: "ddns", Kind: "update", Outcome: "ok", Device: "nas1", Client: netip.MustParseAddr("198.51.100.7")})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	now = day1.Add(24 * time.Hour)
	l, err = connlog.New(connlog.Config{Dir: dir, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	l.Log(connlog.Event{Time: now, Service: "link", Kind: "session", Outcome: "closed", Device: "nas2"})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	out, err := runNasreach(t, "logs", "read", "--dir", dir)
	if err != nil {
		t.Fatalf("logs read --dir: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], `"nas1"`) || !strings.Contains(lines[1], `"nas2"`) {
		t.Errorf("logs read --dir printed\n%s\nwant nas1's record, then nas2's", out)
	}
	if strings.Contains(out, "198.51.100.7") || !strings.Contains(out, "198.51.100.0") {
		t.Errorf("logs read shows an address unmasked:\n%s", out)
	}
	out, err = runNasreach(t, "logs", "read", "--dir", dir, "conn-2026-12-01.jsonl")
	if err != nil || strings.Count(out, "\n") != 1 || !strings.Contains(out, `"nas2"`) {
		t.Errorf("logs read --dir with a file name: %v\n%s", err, out)
	}
	if _, err := runNasreach(t, "logs", "read", "--dir", filepath.Join(dir, "none")); err == nil {
		t.Error("logs read of a directory that does not exist succeeded")
	}
	if _, err := runNasreach(t, "logs", "read", "--dir", t.TempDir()); err == nil || !strings.Contains(err.Error(), "no connection log files") {
		t.Errorf("logs read of an empty directory: %v", err)
	}
}

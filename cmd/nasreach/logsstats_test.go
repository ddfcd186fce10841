package main

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/nasreach/nasreach/connlog"
)

func TestLogsStatsJSON(t *testing.T) {
	dir := t.TempDir()
	day := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	l, err := connlog.New(connlog.Config{Dir: dir, Now: func() time.Time { return day }})
	if err != nil {
		t.Fatal(err)
	}
	l.Log(connlog.Event{Time: day, Service: "ddns", Kind: "update", Outcome: "ok", Device: "nas1", Client: netip.MustParseAddr("198.51.100.7")})
	l.Log(connlog.Event{Time: day, Service: "link", Kind: "session", Outcome: "closed", Device: "nas2", Client: netip.MustParseAddr("203.0.113.9"), BytesIn: 10, BytesOut: 200})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	out, err := runNasreach(t, "logs", "stats", "--dir", dir, "--json")
	var st connlog.Stats
	if err != nil || json.Unmarshal([]byte(out), &st) != nil {
		t.Fatalf("logs stats --json printed %q, %v", out, err)
	}
	if len(st.Rows) != 2 || st.Rows[1].Service != "link" || st.Rows[1].BytesOut != 200 || st.Rows[1].Outcomes["closed"] != 1 ||
		st.Networks["2026-11-30"] != 2 || !strings.Contains(out, `"distinct_networks"`) || !strings.Contains(out, `"bytes_out": 200`) {
		t.Errorf("logs stats --json printed\n%s\nwant a ddns and a link row, 200 bytes out, 2 networks", out)
	}
	if strings.Contains(out, "nas1") || strings.Contains(out, "198.51.100") || strings.Contains(out, `"devices"`) {
		t.Errorf("logs stats --json names a device or an address without --by-device:\n%s", out)
	}
	if out, err = runNasreach(t, "logs", "stats", "--dir", dir, "--json", "--by-device"); err != nil || !strings.Contains(out, `"nas1": 1`) {
		t.Errorf("logs stats --json --by-device printed %q, %v; want nas1's count", out, err)
	}
	if out, err = runNasreach(t, "logs", "stats", "--dir", t.TempDir(), "--json"); err != nil || !strings.Contains(out, `"rows": []`) {
		t.Errorf("logs stats --json of no logs printed %q, %v; want empty rows", out, err)
	}
	if out, err = runNasreach(t, "logs", "stats", "--dir", dir); err != nil || !strings.HasPrefix(out, "DAY         SERVICE  EVENTS") {
		t.Errorf("logs stats without --json printed %q, %v; want the table", out, err)
	}
}

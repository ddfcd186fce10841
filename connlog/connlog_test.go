package connlog

import (
	"bytes"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/nasreach/nasreach/internal/testutil"
)

var update = flag.Bool("update", false, "rewrite golden files")

func newTestLog(t *testing.T, cfg Config) *Log {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	l, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// readAll returns the concatenated plain contents of every file in dir.
func readAll(t *testing.T, dir string) string {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	var all strings.Builder
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		all.Write(b)
	}
	return all.String()
}

func TestOnlyMaskedAddressesReachDisk(t *testing.T) {
	dir := t.TempDir()
	l := newTestLog(t, Config{Dir: dir})
	v4 := netip.MustParseAddr("198.51.100.77")
	v6 := netip.MustParseAddr("2001:db8:4321:8765:aaaa:bbbb:cccc:dddd")
	mapped := netip.MustParseAddr("::ffff:203.0.113.99")
	events := []Event{
		{Service: "ddns", Kind: "update", Outcome: "ok", Device: "nas1", Client: v4, Detail: "myip=198.51.100.77"},
		{Service: "ddns", Kind: "update", Outcome: "badauth", Client: v6, Detail: "from [2001:db8:4321:8765:aaaa:bbbb:cccc:dddd]:5555 owner bob@example.org"},
		{Service: "dns", Kind: "query", Outcome: "NOERROR", Client: mapped, Detail: "nas1.myqnapcloud.com A"},
		{Service: "link", Kind: "session", Outcome: "ok", Device: "nas1", Client: v4, Port: 443, Start: time.Now(), BytesIn: 10, BytesOut: 20},
		{Service: "turn", Kind: "allocation", Outcome: "ok", Device: "nas1", Client: v6, Peers: 2, Detail: "peer 203.0.113.99:3478"},
	}
	for _, e := range events {
		l.Log(e)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	all := readAll(t, dir)
	for _, full := range []string{"198.51.100.77", "2001:db8:4321:8765", "203.0.113.99", "bob@example.org", "aaaa:bbbb"} {
		if strings.Contains(all, full) {
			t.Errorf("log contains unmasked %q:\n%s", full, all)
		}
	}
	for _, masked := range []string{"198.51.100.0", "2001:db8:4321::", "203.0.113.0", "[email]"} {
		if !strings.Contains(all, masked) {
			t.Errorf("log lacks masked %q:\n%s", masked, all)
		}
	}
	if n := strings.Count(all, "\n"); n != len(events) {
		t.Errorf("%d lines written, want %d", n, len(events))
	}
}

func TestCloseWritesEveryQueuedEvent(t *testing.T) {
	dir := t.TempDir()
	l := newTestLog(t, Config{Dir: dir, Queue: 20000})
	const n = 10000
	for i := range n {
		l.Log(Event{Service: "dns", Kind: "query", Outcome: "NOERROR", Port: uint16(i)})
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Count(readAll(t, dir), "\n"); got != n || l.Dropped() != 0 {
		t.Fatalf("wrote %d lines and dropped %d, want %d and 0", got, l.Dropped(), n)
	}
}

func TestFullQueueDropsAndCountsButNeverBlocks(t *testing.T) {
	dir := t.TempDir()
	l := newTestLog(t, Config{Dir: dir, Queue: 1})
	const n = 20000
	start := time.Now()
	for range n {
		l.Log(Event{Service: "dns", Kind: "query"})
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("logging %d events took %s: callers waited for the disk", n, d)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	lines := uint64(strings.Count(readAll(t, dir), "\n"))
	if lines+l.Dropped() != n || lines != l.Written() {
		t.Fatalf("written %d (counter %d) + dropped %d != %d logged: an event vanished uncounted", lines, l.Written(), l.Dropped(), n)
	}
}

func TestOneFilePerUTCDay(t *testing.T) {
	dir := t.TempDir()
	c := testutil.NewClock(time.Date(2026, 3, 1, 23, 59, 0, 0, time.UTC))
	l := newTestLog(t, Config{Dir: dir, Now: c.Now})
	l.Log(Event{Service: "ddns", Kind: "update"})
	waitWritten(t, l, 1)
	c.Set(time.Date(2026, 3, 2, 0, 0, 1, 0, time.UTC))
	l.Log(Event{Service: "ddns", Kind: "update"})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"conn-2026-03-01.jsonl", "conn-2026-03-02.jsonl"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || strings.Count(string(b), "\n") != 1 {
			t.Errorf("%s: %q, %v; want one line", name, b, err)
		}
	}
}

func waitWritten(t *testing.T, l *Log, n uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for l.Written() < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d events written", l.Written(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestRetentionDeletesFilesOlderThanSixMonths(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	keep := []string{"conn-2026-11-23.jsonl", "conn-2026-05-24.jsonl", "unrelated.txt"}
	gone := []string{"conn-2026-05-21.jsonl", "conn-2025-01-01.jsonl.age", "conn-2026-05-20.2.jsonl.age"}
	for _, n := range append(keep, gone...) {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("{}\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c := testutil.NewClock(now)
	l := newTestLog(t, Config{Dir: dir, Now: c.Now})
	for _, n := range keep {
		if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
			t.Errorf("%s was deleted though it is within retention", n)
		}
	}
	for _, n := range gone {
		if _, err := os.Stat(filepath.Join(dir, n)); err == nil {
			t.Errorf("%s survived past the 183-day retention", n)
		}
	}
	// A day later the next file falls out too.
	c.Set(now.Add(72 * time.Hour))
	removed, err := l.Prune()
	if err != nil || len(removed) != 1 || removed[0] != "conn-2026-05-24.jsonl" {
		t.Fatalf("Prune three days later removed %v, %v; want conn-2026-05-24.jsonl", removed, err)
	}
}

func TestDiskCapDeletesOldestDaysFirst(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	for _, n := range []string{"conn-2026-11-20.jsonl", "conn-2026-11-21.jsonl", "conn-2026-11-22.jsonl"} {
		if err := os.WriteFile(filepath.Join(dir, n), bytes.Repeat([]byte("x"), 1000), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c := testutil.NewClock(now)
	newTestLog(t, Config{Dir: dir, Now: c.Now, MaxBytes: 2500})
	if _, err := os.Stat(filepath.Join(dir, "conn-2026-11-20.jsonl")); err == nil {
		t.Error("oldest day kept although the directory is over its cap")
	}
	if _, err := os.Stat(filepath.Join(dir, "conn-2026-11-22.jsonl")); err != nil {
		t.Error("newest day deleted although removing the oldest was enough")
	}
}

func TestEncryptedLogIsUnreadableWithoutTheKey(t *testing.T) {
	dir := t.TempDir()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	l := newTestLog(t, Config{Dir: dir, Recipients: []age.Recipient{id.Recipient()}})
	l.Log(Event{Service: "link", Kind: "session", Device: "secretnas", Client: netip.MustParseAddr("192.0.2.55")})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// A second run on the same day starts a new segment instead of appending
	// to a finished age stream.
	l2 := newTestLog(t, Config{Dir: dir, Recipients: []age.Recipient{id.Recipient()}})
	l2.Log(Event{Service: "link", Kind: "session", Device: "secretnas"})
	if err := l2.Close(); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 2 {
		t.Fatalf("want two encrypted segments, got %d", len(ents))
	}
	if all := readAll(t, dir); strings.Contains(all, "secretnas") || strings.Contains(all, "192.0.2") {
		t.Fatal("encrypted log contains plaintext")
	}
	var got []Record
	for _, e := range ents {
		path := filepath.Join(dir, e.Name())
		if err := ReadFile(path, nil, func(Record) error { return nil }); err == nil {
			t.Fatalf("%s read without a key", e.Name())
		}
		other, _ := age.GenerateX25519Identity()
		if err := ReadFile(path, []age.Identity{other}, func(Record) error { return nil }); err == nil {
			t.Fatalf("%s decrypted with the wrong key", e.Name())
		}
		if err := ReadFile(path, []age.Identity{id}, func(r Record) error { got = append(got, r); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	clients := map[string]bool{}
	for _, r := range got {
		clients[r.Client] = r.Device == "secretnas"
	}
	if len(got) != 2 || !clients["192.0.2.0"] || !clients[""] {
		t.Fatalf("decrypted records = %+v, want both events with the address masked", got)
	}
}

func TestStatsHoldNoNamesOrAddressesUnlessAsked(t *testing.T) {
	dir := t.TempDir()
	c := testutil.NewClock(time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC))
	l := newTestLog(t, Config{Dir: dir, Now: c.Now})
	log := func(e Event) { e.Time = c.Now(); l.Log(e) }
	log(Event{Service: "ddns", Kind: "update", Outcome: "ok", Device: "alice-nas", Client: netip.MustParseAddr("198.51.100.7")})
	log(Event{Service: "ddns", Kind: "update", Outcome: "badauth", Client: netip.MustParseAddr("198.51.100.8")})
	log(Event{Service: "link", Kind: "session", Outcome: "ok", Device: "alice-nas", Client: netip.MustParseAddr("203.0.113.1"), BytesIn: 100, BytesOut: 5000})
	waitWritten(t, l, 3)
	c.Set(c.Now().Add(24 * time.Hour))
	log(Event{Service: "turn", Kind: "allocation", Outcome: "ok", Device: "bob-nas", Client: netip.MustParseAddr("2001:db8:1:2::3"), BytesIn: 1, BytesOut: 2})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := Summarize(dir, StatsOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := st.WriteText(&out); err != nil {
		t.Fatal(err)
	}
	for _, leak := range []string{"alice", "bob", "198.51.100", "203.0.113", "2001:db8"} {
		if strings.Contains(out.String(), leak) {
			t.Errorf("stats without --by-device show %q:\n%s", leak, out.String())
		}
	}
	golden(t, "stats.golden", out.Bytes())

	st, err = Summarize(dir, StatsOptions{ByDevice: true, From: time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC)})
	if err != nil {
		t.Fatal(err)
	}
	if st.Devices["bob-nas"] != 1 || st.Devices["alice-nas"] != 0 || len(st.Rows) != 1 {
		t.Fatalf("by-device stats from 2026-11-23 = %+v", st)
	}
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs (run go test -update if the change is intended):\ngot:\n%s\nwant:\n%s", name, got, want)
	}
}

// TestLoggingResumesAfterADiskFull: a write that fails (here the day's file
// is /dev/full, which answers every write with ENOSPC) loses the events in
// flight, counted as dropped, and logging resumes with the next event once
// writes succeed again, instead of losing every later event to the
// buffered writer's remembered error.
func TestLoggingResumesAfterADiskFull(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full on this system")
	}
	dir := t.TempDir()
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	day := filepath.Join(dir, "conn-2026-12-02.jsonl")
	if err := os.Symlink("/dev/full", day); err != nil {
		t.Fatal(err)
	}
	l := newTestLog(t, Config{Dir: dir, Now: func() time.Time { return now }})
	l.Log(Event{Service: "ddns", Kind: "update", Outcome: "ok", Device: "lost"})
	testutil.WaitFor(t, 5*time.Second, "the failed write to be counted as a drop", func() bool { return l.Dropped() == 1 })
	if err := os.Remove(day); err != nil { // the disk has room again
		t.Fatal(err)
	}
	l.Log(Event{Service: "ddns", Kind: "update", Outcome: "ok", Device: "kept"})
	if err := l.Close(); err != nil {
		t.Fatalf("Close after the disk had room again: %v", err)
	}
	got := readAll(t, dir)
	if !strings.Contains(got, `"device":"kept"`) || strings.Contains(got, `"device":"lost"`) {
		t.Errorf("log holds\n%s\nwant the event after the disk full and not the one lost in it", got)
	}
	if l.Written() != 1 || l.Dropped() != 1 {
		t.Errorf("written %d, dropped %d; want 1 and 1", l.Written(), l.Dropped())
	}
}

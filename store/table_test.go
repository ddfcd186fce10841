package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestDevTableAgreesWithAMap drives the compact table through the writes an
// index sees (new names, updates, hidden entries, tombstones, challenge
// values and keys coming and going), through many rebuilds, and checks it
// against a plain map after every step.
func TestDevTableAgreesWithAMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	tab := newDevTable(0)
	want := map[string]entry{}
	key := &TSIGKey{Algorithm: TSIGAlgorithm, Secret: []byte("s")}
	names := make([]string, 5000)
	for i := range names {
		// One to 63 bytes, as DNS labels go.
		n := 1 + rng.IntN(63)
		names[i] = fmt.Sprintf("%0*d", n, i)[:n]
		if len(names[i]) < 4 {
			names[i] = fmt.Sprintf("n%d", i)
		}
	}
	rebuilds := 0
	for step := range 60_000 {
		name := names[rng.IntN(len(names))]
		e := entry{rev: uint64(step + 1), hidden: rng.IntN(5) == 0}
		if rng.IntN(3) > 0 {
			e.rec.IPv4 = netip.AddrFrom4([4]byte{100, 64, byte(step >> 8), byte(step)})
		}
		if rng.IntN(2) == 0 {
			e.rec.IPv6 = netip.MustParseAddr(fmt.Sprintf("2001:db8::%x", step))
		}
		if rng.IntN(50) == 0 {
			e.rec.ACME = []string{fmt.Sprintf("challenge-%d", step)}
		}
		if rng.IntN(40) == 0 {
			e.key = key
		}
		nt := tab.set(name, e)
		if nt != tab {
			rebuilds++
			tab = nt
		}
		want[name] = e
		if step%997 == 0 {
			checkTable(t, tab, want)
		}
	}
	checkTable(t, tab, want)
	if rebuilds < 3 {
		t.Errorf("the table was rebuilt %d times; the test means to cross several rebuilds", rebuilds)
	}
	// Live bytes stay close to what the current entries take: the old
	// versions are dropped at each rebuild.
	if tab.used > 2*tab.live+minTableRoom*2 {
		t.Errorf("the arena holds %d bytes for %d live ones", tab.used, tab.live)
	}
}

func checkTable(t *testing.T, tab *devTable, want map[string]entry) {
	t.Helper()
	visible := 0
	for name, w := range want {
		got, ok := tab.get(name)
		if !ok {
			t.Fatalf("%q is missing", name)
		}
		if got.rev != w.rev || got.hidden != w.hidden || !got.rec.Equal(w.rec) || got.key != w.key {
			t.Fatalf("%q: got %+v, want %+v", name, got, w)
		}
		if gb, _ := tab.getBytes([]byte(name)); gb.rev != w.rev {
			t.Fatalf("%q by bytes: rev %d, want %d", name, gb.rev, w.rev)
		}
		if !w.hidden {
			visible++
		}
	}
	if _, ok := tab.get("absent-name"); ok {
		t.Fatal("a name never set was found")
	}
	if int(tab.visible.Load()) != visible {
		t.Fatalf("visible = %d, want %d", tab.visible.Load(), visible)
	}
	var seen []string
	for name := range tab.all() {
		seen = append(seen, name)
	}
	if len(seen) != len(want) {
		t.Fatalf("all yields %d names, want %d", len(seen), len(want))
	}
	slices.Sort(seen)
	if len(slices.Compact(seen)) != len(want) {
		t.Fatal("all yields a name twice")
	}
}

// TestIndexReadersSeeWholeEntries reads the index with no lock while a
// writer rewrites the same devices and forces rebuilds: every entry a reader
// gets is one the writer wrote whole (its IPv4 and IPv6 addresses carry the
// same counter), and never older than one the reader saw before. Run it
// with -race.
func TestIndexReadersSeeWholeEntries(t *testing.T) {
	var idx memIndex
	idx.tab.Store(newDevTable(0))
	const devices = 64
	names := make([]string, devices)
	for i := range names {
		names[i] = fmt.Sprintf("nas-%d", i)
	}
	var done atomic.Bool
	var wg sync.WaitGroup
	for r := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			last := make([]uint64, devices)
			for n := 0; !done.Load(); n++ {
				i := (n + r) % devices
				e, ok := idx.tab.Load().get(names[i])
				if !ok {
					continue
				}
				v4, v6 := e.rec.IPv4.As4(), e.rec.IPv6.As16()
				if [4]byte(v6[12:]) != v4 || uint64(v4[0])<<24|uint64(v4[1])<<16|uint64(v4[2])<<8|uint64(v4[3]) != e.rev&0xffffffff {
					t.Errorf("%s: torn entry %+v", names[i], e)
					return
				}
				if e.rev < last[i] {
					t.Errorf("%s: rev %d after %d", names[i], e.rev, last[i])
					return
				}
				last[i] = e.rev
			}
		}()
	}
	for rev := uint64(1); rev <= 30_000; rev++ {
		name := names[rev%devices]
		b := [4]byte{byte(rev >> 24), byte(rev >> 16), byte(rev >> 8), byte(rev)}
		v6 := [16]byte{0x20, 0x01, 0x0d, 0xb8}
		copy(v6[12:], b[:])
		idx.mu.Lock()
		idx.setEntry(name, entry{rev: rev, rec: Record{IPv4: netip.AddrFrom4(b), IPv6: netip.AddrFrom16(v6)}})
		idx.mu.Unlock()
	}
	done.Store(true)
	wg.Wait()
}

// TestIndexDecodeAgreesWithEncodingJSON checks the start-up's decoder of
// device records (goccy/go-json, index fields only) against what
// encoding/json makes of the same records through entryFor, for records
// with every field the index reads, and that a record neither can read is
// refused.
func TestIndexDecodeAgreesWithEncodingJSON(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	devices := []Device{
		{Name: "nas1", TokenSHA256: strings.Repeat("ab", 32), IPv4: netip.MustParseAddr("192.0.2.1"),
			IPv6: netip.MustParseAddr("2001:db8::1"), DDNS: true, Link: true, State: StateActive, Created: now, Updated: now},
		{Name: "v6-only", IPv6: netip.MustParseAddr("2001:db8::2"), DDNS: true, PublicKey: strings.Repeat("A", 2000)},
		{Name: "ddns-off", IPv4: netip.MustParseAddr("192.0.2.3"), DDNS: false, TSIGKey: &TSIGKey{Algorithm: TSIGAlgorithm, Secret: []byte("0123456789abcdef"), Created: now}},
		{Name: "cert", DDNS: false, ACMEChallenges: []ACMEChallenge{{Value: "a\"b\\c\u00e9", Expires: now}, {Value: "second", Expires: now}}},
		{Name: "x", State: StateUninitialized},
	}
	for _, d := range devices {
		v, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		name, got, err := decodeEntry(v, 7)
		if err != nil {
			t.Fatalf("%s: %v", d.Name, err)
		}
		var std Device
		if err := json.Unmarshal(v, &std); err != nil {
			t.Fatal(err)
		}
		want := entryFor(7, std, false)
		if name != d.Name || got.rev != want.rev || got.hidden != want.hidden || !got.rec.Equal(want.rec) ||
			(got.key == nil) != (want.key == nil) || (got.key != nil && (got.key.Algorithm != want.key.Algorithm || !bytes.Equal(got.key.Secret, want.key.Secret))) {
			t.Errorf("%s: decoded %q %+v, encoding/json makes %+v", d.Name, name, got, want)
		}
	}
	for _, bad := range []string{`{"name":`, `{"name":"a","ipv4":"not an address"}`, `[1,2]`, ``} {
		if _, _, err := decodeEntry([]byte(bad), 1); err == nil {
			t.Errorf("%q: decoded without an error", bad)
		}
	}
}

// FuzzScanIndexFields checks the start-up's own reader of device records
// against encoding/json: wherever it reads a record, encoding/json reads
// the same fields from it.
func FuzzScanIndexFields(f *testing.F) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	for _, d := range []Device{
		{Name: "nas1", TokenSHA256: strings.Repeat("ab", 32), IPv4: netip.MustParseAddr("192.0.2.1"),
			IPv6: netip.MustParseAddr("2001:db8::1"), DDNS: true, Link: true, State: StateActive, Created: now, Updated: now},
		{Name: "v6-only", IPv6: netip.MustParseAddr("2001:db8::2"), DDNS: true, PublicKey: "QUJD"},
		{Name: "cert", ACMEChallenges: []ACMEChallenge{{Value: "v", Expires: now}}},
		{Name: "key", TSIGKey: &TSIGKey{Algorithm: TSIGAlgorithm, Secret: []byte("s")}},
	} {
		v, _ := json.Marshal(d)
		f.Add(v)
	}
	for _, s := range []string{`{}`, ` { "name" : "a" , "ddns" : true } `, `{"NAME":"a"}`, `{"name":"a","name":"b"}`,
		`{"x":[1,-2.5e3,{"y":null}],"name":"a"}`, `{"ipv4":""}`, `{"ddns":null}`, `{"acme_challenges":[]}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, v []byte) {
		got, ok := scanIndexFields(v)
		if !ok {
			return
		}
		var want indexFields
		if err := json.Unmarshal(v, &want); err != nil {
			t.Fatalf("scanIndexFields read %q, which encoding/json refuses: %v", v, err)
		}
		if got.Name != want.Name || got.IPv4 != want.IPv4 || got.IPv6 != want.IPv6 || got.DDNS != want.DDNS ||
			len(want.ACMEChallenges) != 0 || want.TSIGKey != nil {
			t.Fatalf("%q: scanIndexFields read %+v, encoding/json %+v", v, got, want)
		}
	})
}

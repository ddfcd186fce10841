package store

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/testutil"
	bolt "go.etcd.io/bbolt"
)

// These tests damage store files the ways they get damaged (a backup cut
// short, a zeroed or empty file, garbage pages) and check that Check and Open
// refuse each with one line that says what is wrong, and leave the file
// byte for byte as it was.

// healthyStore returns a sound store file holding n devices, as a snapshot:
// exactly as long as its pages in use.
func healthyStore(t testing.TB, n int) []byte {
	t.Helper()
	s, err := Open(Config{Dir: t.TempDir(), SweepEvery: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	err = s.db.Update(func(tx *bolt.Tx) error {
		for i := range n {
			name := fmt.Sprintf("nas%d", i)
			d := &Device{Name: name, TokenSHA256: HashToken(name), IPv4: v4a, DDNS: true, Link: true,
				Access: AccessPublic, State: StateActive, Created: now, Updated: now}
			if err := putDevice(tx.Bucket(bucketDevices), name, d); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := s.Backup(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// writeStore writes data as the store file of a new data directory and
// returns the directory and the file's path.
func writeStore(t testing.TB, data []byte) (dir, path string) {
	t.Helper()
	dir = t.TempDir()
	path = filepath.Join(dir, FileName)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir, path
}

// pageSizeOf reads the page size from a store file's first meta page.
func pageSizeOf(data []byte) int { return int(byteOrder.Uint32(data[pageHeaderSize+8:])) }

// headerOf reads the header of a sound store file.
func headerOf(t testing.TB, data []byte) header {
	t.Helper()
	h, err := readHeader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// pagesOf lists the pages of a store file below its high-water mark by kind,
// as bbolt sees them.
func pagesOf(t testing.TB, data []byte) (byKind map[string][]int) {
	t.Helper()
	_, path := writeStore(t, data)
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, PreLoadFreelist: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	byKind = map[string][]int{}
	db.View(func(tx *bolt.Tx) error {
		for id := 2; ; id++ {
			p, err := tx.Page(id)
			if err != nil {
				t.Fatal(err)
			}
			if p == nil {
				return nil
			}
			byKind[p.Type] = append(byKind[p.Type], id)
		}
	})
	return byKind
}

// damagedStores are the damaged files (testutil.DamagedStores) and
// more that only a store test can make, each from a sound file of 300
// devices.
func damagedStores(t testing.TB) []testutil.DamagedStore {
	healthy := healthyStore(t, 300)
	ps := pageSizeOf(healthy)
	cases := testutil.DamagedStores(t, healthy)
	edit := func(name, want string, f func(b []byte)) {
		b := bytes.Clone(healthy)
		f(b)
		cases = append(cases, testutil.DamagedStore{Name: name, Data: b, Want: want})
	}
	cases = append(cases,
		testutil.DamagedStore{Name: "cut mid-page", Data: healthy[:len(healthy)-100], Want: "not a whole number of 4096-byte pages (truncated)"},
		testutil.DamagedStore{Name: "one page", Data: healthy[:ps], Want: "shorter than its two 4096-byte header pages (truncated)"},
		testutil.DamagedStore{Name: "a few bytes", Data: healthy[:40], Want: "the file is 40 bytes, too short for a bbolt header (truncated)"},
		testutil.DamagedStore{Name: "not a database", Data: bytes.Repeat([]byte("#!/bin/sh\n"), 2000), Want: "it is not a bbolt database"},
	)
	edit("both meta checksums wrong", "neither header page is valid: page 0 fails its checksum and page 1 fails its checksum", func(b []byte) {
		b[pageHeaderSize+metaSummed]++
		b[ps+pageHeaderSize+metaSummed]++
	})
	edit("newer bbolt format", "its header says bbolt format version 3, and this nasreach reads version 2", func(b []byte) {
		for _, off := range []int{0, ps} {
			byteOrder.PutUint32(b[off+pageHeaderSize+4:], 3)
		}
	})
	h := headerOf(t, healthy)
	var leaf int // a page only the devices bucket reaches
	for _, id := range pagesOf(t, healthy)["leaf"] {
		if uint64(id) != h.root {
			leaf = id
		}
	}
	if leaf == 0 {
		t.Fatal("the healthy file has no leaf page but the root; the test needs a devices bucket of several pages")
	}
	edit("garbage header on a data page", "reading its pages failed", func(b []byte) {
		copy(b[leaf*ps:], "\xde\xad\xbe\xef\xde\xad\xbe\xef\x00\x00")
	})
	edit("key past the end of the file", "a page points outside the file, where reading it faults", func(b []byte) {
		// The first leaf element (flags, pos, ksize, vsize) of that page:
		// its key starts where bbolt's mapping of the file goes on past the
		// file's end, so reading it is a SIGBUS.
		elem := leaf*ps + pageHeaderSize
		byteOrder.PutUint32(b[elem+4:], uint32(len(b)+100-elem))
	})
	return cases
}

func TestDamagedStoreIsRefusedWithOneLineAndLeftByteForByte(t *testing.T) {
	for _, c := range damagedStores(t) {
		t.Run(c.Name, func(t *testing.T) {
			dir, path := writeStore(t, c.Data)
			before := testutil.FileSum(t, path)
			stat, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}

			_, checkErr := Check(path, true)
			s, openErr := Open(Config{Dir: dir})
			if openErr == nil {
				s.Close()
			}
			for what, err := range map[string]error{"Check": checkErr, "Open": openErr} {
				var de *DamagedError
				if !errors.As(err, &de) || !errors.Is(err, ErrDamaged) {
					t.Fatalf("%s = %v, want a *DamagedError", what, err)
				}
				msg := err.Error()
				if !strings.Contains(msg, c.Want) || !strings.Contains(msg, path) || !strings.Contains(msg, "restore a backup") ||
					strings.Contains(msg, "\n") {
					t.Errorf("%s error %q\nwant one line naming %s, saying %q and to restore a backup", what, msg, path, c.Want)
				}
			}
			t.Logf("%s", openErr)

			if testutil.FileSum(t, path) != before {
				t.Error("the damaged file was modified")
			}
			after, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if !os.SameFile(stat, after) || after.Size() != stat.Size() {
				t.Error("the damaged file was replaced")
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 1 {
				t.Errorf("the data directory holds %d entries, want only the damaged file", len(entries))
			}
		})
	}
}

func TestSoundStorePassesCheckWithItsCounts(t *testing.T) {
	_, path := writeStore(t, healthyStore(t, 300))
	for _, full := range []bool{false, true} {
		r, err := Check(path, full)
		if err != nil {
			t.Fatalf("Check(full=%v): %v", full, err)
		}
		if r.Devices != 300 || r.Schema != SchemaVersion || r.PageSize != 4096 || r.Full != full ||
			r.Bytes != int64(r.Pages)*int64(r.PageSize) || r.TxID == 0 {
			t.Errorf("Check(full=%v) = %+v, want 300 devices, schema %d, a whole snapshot", full, r, SchemaVersion)
		}
	}
	s := openStore(t, Config{Dir: filepath.Dir(path), FullCheck: true})
	if s.Len() != 300 {
		t.Errorf("Open of the sound file has %d devices, want 300", s.Len())
	}
}

// TestHeaderAgreesWithBbolt checks the meta page parser against bbolt's own
// view of the same file.
func TestHeaderAgreesWithBbolt(t *testing.T) {
	data := healthyStore(t, 50)
	h := headerOf(t, data)
	_, path := writeStore(t, data)
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, PreLoadFreelist: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.View(func(tx *bolt.Tx) error {
		if int64(h.pages*h.pageSize) != tx.Size() || h.txid != uint64(tx.ID()) || int(h.pageSize) != db.Info().PageSize {
			t.Errorf("readHeader: %d pages of %d, txid %d; bbolt: size %d, page size %d, txid %d",
				h.pages, h.pageSize, h.txid, tx.Size(), db.Info().PageSize, tx.ID())
		}
		return nil
	})
	if s := db.Stats(); h.free != s.FreePageN+s.PendingPageN {
		t.Errorf("readHeader counts %d free pages, bbolt %d free and %d pending", h.free, s.FreePageN, s.PendingPageN)
	}
}

// TestOlderMetaPageMayBeDamaged damages the older of the two meta pages as a
// torn write would: bbolt uses the newer one and overwrites the older with
// its next commit, so the file is sound.
func TestOlderMetaPageMayBeDamaged(t *testing.T) {
	data := healthyStore(t, 10)
	ps := pageSizeOf(data)
	h := headerOf(t, data)
	older := int(1 - h.txid%2) // bbolt writes meta page txid%2
	for i := range metaSize {
		data[older*ps+pageHeaderSize+i] = 0
	}
	dir, path := writeStore(t, data)
	if _, err := Check(path, true); err != nil {
		t.Fatalf("Check with the older meta page zeroed: %v", err)
	}
	s := openStore(t, Config{Dir: dir})
	if s.Len() != 10 {
		t.Errorf("%d devices, want 10", s.Len())
	}
}

// TestFullCheckFindsWhatTheQuickOneCannot lists a page in use as free too:
// pages and headers look sound, but the next write would overwrite live data.
// Only bbolt's consistency check, on request, finds it.
func TestFullCheckFindsWhatTheQuickOneCannot(t *testing.T) {
	data := healthyStore(t, 300)
	h := headerOf(t, data)
	fl := data[h.freelist*h.pageSize:]
	n := byteOrder.Uint16(fl[10:])
	byteOrder.PutUint64(fl[pageHeaderSize+8*int(n):], h.root)
	byteOrder.PutUint16(fl[10:], n+1)
	dir, path := writeStore(t, data)
	before := testutil.FileSum(t, path)

	if _, err := Check(path, false); err != nil {
		t.Fatalf("quick Check: %v, want it to pass", err)
	}
	_, err := Check(path, true)
	if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), "consistency check found") {
		t.Fatalf("full Check = %v, want the consistency check's finding", err)
	}
	if _, err := Open(Config{Dir: dir, FullCheck: true}); !errors.Is(err, ErrDamaged) {
		t.Fatalf("Open with FullCheck = %v, want ErrDamaged", err)
	}
	if testutil.FileSum(t, path) != before {
		t.Error("the file was modified")
	}
}

func TestNewStoreIsCreatedOnlyWhereNoFileExists(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, Config{Dir: dir})
	mustCreate(t, s, "nas1")
	s.Close()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != FileName {
		t.Errorf("the data directory holds %v, want only %s", entries, FileName)
	}
	if s := openStore(t, Config{Dir: dir}); s.Len() != 1 {
		t.Errorf("reopened store has %d devices, want 1", s.Len())
	}
}

func TestCheckWaitsForTheLockThenSaysLocked(t *testing.T) {
	dir := t.TempDir()
	openStore(t, Config{Dir: dir})
	path := filepath.Join(dir, FileName)
	start := time.Now()
	_, err := Check(path, false)
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), path) {
		t.Fatalf("Check of an open store = %v, want ErrLocked naming %s", err, path)
	}
	if took := time.Since(start); took < 800*time.Millisecond || took > 10*time.Second {
		t.Errorf("Check gave up after %v, want about 1s", took)
	}
}

func TestCheckOfAMissingFileSaysSo(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	if _, err := Check(path, false); !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("Check of a missing file = %v", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Error("Check created the file")
	}
}

// smallStore returns a sound bbolt file with 1 KiB pages and a bucket of n
// keys, as a snapshot: small seeds make the fuzzer fast.
func smallStore(t testing.TB, n int) []byte {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), FileName), 0o600, &bolt.Options{PageSize: minPageSize})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var buf bytes.Buffer
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket(bucketDevices)
		for i := range n {
			err = errors.Join(err, b.Put(fmt.Appendf(nil, "nas%d", i), bytes.Repeat([]byte{'x'}, 100)))
		}
		return err
	})
	if err == nil {
		err = db.View(func(tx *bolt.Tx) error { _, err := tx.WriteTo(&buf); return err })
	}
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// FuzzReadHeader feeds readHeader any file: it must not panic, must not
// accept a file bbolt would fault on, and must say what is wrong as a
// one-line damage error (a bytes.Reader fails only reading past the end,
// which readHeader never does). Seeds: testdata/fuzz/FuzzReadHeader and a
// small file damaged every way testutil.DamagedStores knows.
func FuzzReadHeader(f *testing.F) {
	healthy := smallStore(f, 30)
	f.Add(healthy)
	for _, c := range testutil.DamagedStores(f, healthy) {
		f.Add(c.Data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := readHeader(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			var d damage
			if !errors.As(err, &d) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("readHeader error %q is not a one-line damage error", err)
			}
			return
		}
		if h.pages*h.pageSize > uint64(len(data)) || h.root >= h.pages || h.pageSize < minPageSize {
			t.Fatalf("readHeader accepted %+v for a %d-byte file", h, len(data))
		}
	})
}

// TestOpeningACurrentStoreWritesNothing: a file at the current schema is
// opened without a commit, so the daemon starts, and serves what it has, on
// a full disk.
func TestOpeningACurrentStoreWritesNothing(t *testing.T) {
	dir, path := writeStore(t, healthyStore(t, 10))
	before := testutil.FileSum(t, path)
	s := openStore(t, Config{Dir: dir, SweepEvery: -1})
	if s.Len() != 10 {
		t.Errorf("%d devices, want 10", s.Len())
	}
	s.Close()
	if testutil.FileSum(t, path) != before {
		t.Error("opening and closing a current store changed its file")
	}
}

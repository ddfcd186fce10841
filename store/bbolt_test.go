package store

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// These tests check what is particular to *Store and its bbolt file: the lock,
// the schema, shared commits, what the file holds, and that acknowledged
// writes survive kill -9. The behaviour every Backend shares is tested in
// store_test.go and lifecycle_test.go, against each implementation.

func TestOpenRequiresDir(t *testing.T) {
	if _, err := Open(Config{}); err == nil || !strings.Contains(err.Error(), "Dir") {
		t.Fatalf("Open without Dir = %v, want an error naming Config.Dir", err)
	}
}

func TestTokenIsOnlyStoredAsItsHash(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	d, tok := mustCreate(t, s, "nas1")
	if d.TokenSHA256 != HashToken(tok) {
		t.Fatalf("TokenSHA256 = %q, want HashToken(token)", d.TokenSHA256)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, FileName))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte(tok)) {
		t.Fatal("the database file contains the clear-text token")
	}
	if !bytes.Contains(raw, []byte(HashToken(tok))) {
		t.Fatal("the database file does not contain the token hash; is the test reading the right file?")
	}
}

func TestSecondOpenOfTheSameDirFailsAsLocked(t *testing.T) {
	dir := t.TempDir()
	openStore(t, Config{Dir: dir})
	start := time.Now()
	s2, err := Open(Config{Dir: dir})
	took := time.Since(start)
	if err == nil {
		s2.Close()
		t.Fatal("a second Open of the same directory succeeded")
	}
	if !strings.Contains(err.Error(), "locked") || !strings.Contains(err.Error(), dir) {
		t.Errorf("second Open error %q should say the file at %s is locked", err, dir)
	}
	if took < 800*time.Millisecond || took > 10*time.Second {
		t.Errorf("second Open gave up after %v, want about 1s", took)
	}
}

// setSchema writes a schema version into a closed store file.
func setSchema(t *testing.T, dir string, v uint64) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, FileName), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error { return putUint(tx.Bucket(bucketMeta), keySchema, v) }); err != nil {
		t.Fatal(err)
	}
}

func TestFileFromNewerVersionIsRefusedAndLeftAlone(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, "nas1")
	s.Close()
	setSchema(t, dir, SchemaVersion+1)

	if s, err := Open(Config{Dir: dir}); err == nil {
		s.Close()
		t.Fatal("Open accepted a file written by a newer schema")
	} else if !strings.Contains(err.Error(), "newer") || !strings.Contains(err.Error(), fmt.Sprint(SchemaVersion+1)) {
		t.Fatalf("Open error %q should say the file is from a newer version and which", err)
	}

	db, err := bolt.Open(filepath.Join(dir, FileName), 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.View(func(tx *bolt.Tx) error {
		if v := getUint(tx.Bucket(bucketMeta), keySchema); v != SchemaVersion+1 {
			t.Errorf("refused Open rewrote the schema version to %d", v)
		}
		if tx.Bucket(bucketDevices).Get([]byte("nas1")) == nil {
			t.Error("refused Open lost a device")
		}
		return nil
	})
}

func TestNewFileRecordsTheSchemaVersionAndEveryOlderOneHasAMigration(t *testing.T) {
	if len(migrations) != SchemaVersion-1 {
		t.Fatalf("%d migrations for schema version %d; an older file could not be opened", len(migrations), SchemaVersion)
	}
	dir := t.TempDir()
	s, err := Open(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	db, err := bolt.Open(filepath.Join(dir, FileName), 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.View(func(tx *bolt.Tx) error {
		if v := getUint(tx.Bucket(bucketMeta), keySchema); v != SchemaVersion {
			t.Errorf("new file has schema version %d, want %d", v, SchemaVersion)
		}
		return nil
	})
}

func TestConcurrentWritesShareCommits(t *testing.T) {
	s := openStore(t, Config{MaxBatchDelay: 200 * time.Millisecond, SweepEvery: -1})
	ctx := context.Background()
	const n = 32
	var created sync.WaitGroup
	for i := range n {
		created.Go(func() {
			if _, _, err := s.Create(ctx, fmt.Sprintf("nas%d", i), CreateOptions{}); err != nil {
				t.Error(err)
			}
		})
	}
	created.Wait()
	txid := func() (id int) {
		s.db.View(func(tx *bolt.Tx) error { id = tx.ID(); return nil })
		return id
	}
	before := txid()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			ip := netip.AddrFrom4([4]byte{203, 0, 113, byte(i + 1)})
			if _, _, err := s.SetAddress(ctx, fmt.Sprintf("nas%d", i), AddressUpdate{IPv4: ip}); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	commits := txid() - before
	if commits > n/2 {
		t.Fatalf("%d concurrent writes took %d commits; they should share commits", n, commits)
	}
	for i := range n {
		want := netip.AddrFrom4([4]byte{203, 0, 113, byte(i + 1)})
		if rec, _ := s.Lookup(fmt.Sprintf("nas%d", i)); rec.IPv4 != want {
			t.Errorf("nas%d resolves to %v, want %v", i, rec.IPv4, want)
		}
	}
	t.Logf("%d writes, %d commits", n, commits)
}

// TestAcknowledgedWritesSurviveKill9 runs a writer in a child process, kills
// it with SIGKILL while it is writing, and checks that every write the child
// saw acknowledged is in the file.
func TestAcknowledgedWritesSurviveKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a child process")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashWriterChild$")
	cmd.Env = append(os.Environ(), "NASREACH_STORE_CRASH_DIR="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	type acked struct {
		name, token string
		ip          netip.Addr
	}
	var got []acked
	sc := bufio.NewScanner(out)
	for sc.Scan() && len(got) < 40 {
		f := strings.Fields(sc.Text())
		if len(f) != 4 || f[0] != "ACK" {
			continue
		}
		got = append(got, acked{f[1], f[2], netip.MustParseAddr(f[3])})
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if len(got) < 40 {
		t.Fatalf("child acknowledged only %d writes before exiting", len(got))
	}

	s := openStore(t, Config{Dir: dir})
	for _, a := range got {
		if _, err := s.Authenticate(a.name, a.token); err != nil {
			t.Errorf("%s was acknowledged but is lost after kill -9: %v", a.name, err)
			continue
		}
		if rec, ok := s.Lookup(a.name); !ok || rec.IPv4 != a.ip {
			t.Errorf("%s: address %v was acknowledged, after kill -9 Lookup = %+v, %v", a.name, a.ip, rec, ok)
		}
	}
}

// TestCrashWriterChild is the child of TestAcknowledgedWritesSurviveKill9; it
// does nothing in a normal run.
func TestCrashWriterChild(t *testing.T) {
	dir := os.Getenv("NASREACH_STORE_CRASH_DIR")
	if dir == "" {
		t.Skip("only runs as the child of TestAcknowledgedWritesSurviveKill9")
	}
	s, err := Open(Config{Dir: dir})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx := context.Background()
	for i := 0; ; i++ {
		name := fmt.Sprintf("nas%d", i)
		_, tok, err := s.Create(ctx, name, CreateOptions{})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		ip := netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)})
		if _, _, err := s.SetAddress(ctx, name, AddressUpdate{IPv4: ip}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		fmt.Printf("ACK %s %s %s\n", name, tok, ip)
	}
}

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/store"
)

// runBinary runs the built nasreach with args in an empty environment and
// returns its exit status, standard output and standard error.
func runBinary(t *testing.T, bin string, args ...string) (status int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = []string{} // no NASREACH_* or systemd variable reaches it
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit) && exit.Exited():
		status = exit.ExitCode()
	default:
		t.Fatalf("%s %v: %v\n%s", bin, args, err, errOut.String())
	}
	return status, out.String(), errOut.String()
}

// snapshotOfDevices returns a sound store file holding n devices, made the
// way nasreach backup makes one.
func snapshotOfDevices(t *testing.T, n int) []byte {
	t.Helper()
	s, err := store.Open(store.Config{Dir: t.TempDir(), SweepEvery: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range n {
		if _, _, err := s.Create(context.Background(), fmt.Sprintf("nas%d", i), store.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if _, err := s.Backup(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestDamagedStoreStopsServeAndStoreCheckSaysWhy runs the real binary on each
// way a store file gets damaged: serve and store check both exit 1 with one
// line naming the file and what is wrong, no goroutine dump, and the file is
// left byte for byte as it was.
func TestDamagedStoreStopsServeAndStoreCheckSaysWhy(t *testing.T) {
	bin := buildNasreach(t)
	healthy := snapshotOfDevices(t, 3)
	for _, c := range testutil.DamagedStores(t, healthy) {
		t.Run(c.Name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, store.FileName)
			if err := os.WriteFile(path, c.Data, 0o600); err != nil {
				t.Fatal(err)
			}
			before := testutil.FileSum(t, path)
			want := "nasreach: store " + path + " is damaged: "
			for _, args := range [][]string{
				{"serve", "--data", dir, "--dns", "127.0.0.1:0", "--http", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--log-format", "json"},
				{"serve", "--data", dir, "--dns", "127.0.0.1:0", "--http", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--store-check"},
				{"store", "check", "--data", dir},
				{"store", "check", "--db", path},
			} {
				status, _, stderr := runBinary(t, bin, args...)
				lines := strings.Split(strings.TrimSpace(stderr), "\n")
				last := lines[len(lines)-1]
				if status != 1 || !strings.HasPrefix(last, want) || !strings.Contains(last, c.Want) || !strings.Contains(last, "restore a backup") {
					t.Errorf("nasreach %s: exit %d, last line of stderr:\n%s\nwant exit 1 and %q…%q…restore a backup", strings.Join(args[:2], " "), status, last, want, c.Want)
				}
				if strings.Contains(stderr, "goroutine") || strings.Contains(stderr, "panic") || strings.Contains(stderr, "SIGBUS") {
					t.Errorf("nasreach %s crashed:\n%s", strings.Join(args[:2], " "), stderr)
				}
				if testutil.FileSum(t, path) != before {
					t.Fatalf("nasreach %s modified the damaged file", strings.Join(args[:2], " "))
				}
			}
		})
	}
}

func TestStoreCheckReportsASoundStoreAndRefusesOneInUse(t *testing.T) {
	bin := buildNasreach(t)
	dir := t.TempDir()
	path := filepath.Join(dir, store.FileName)
	if err := os.WriteFile(path, snapshotOfDevices(t, 3), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"store", "check", "--data", dir}, {"store", "check", "--db", path}} {
		status, stdout, stderr := runBinary(t, bin, args...)
		if want := "store " + path + " is sound: 3 devices, 0 access codes, 0 quarantined names; schema 1, "; status != 0 || !strings.HasPrefix(stdout, want) {
			t.Errorf("nasreach %v: exit %d, %q %q; want exit 0 and %q…", args, status, stdout, stderr, want)
		}
	}

	missing := filepath.Join(t.TempDir(), store.FileName)
	if status, _, stderr := runBinary(t, bin, "store", "check", "--db", missing); status != 1 || !strings.Contains(stderr, missing+" does not exist") {
		t.Errorf("store check of a missing file: exit %d, %q", status, stderr)
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Error("store check created the missing file")
	}

	s, err := store.Open(store.Config{Dir: dir}) // as the running daemon has it
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	status, _, stderr := runBinary(t, bin, "store", "check", "--data", dir)
	if status != 1 || !strings.Contains(stderr, path+": the file is locked") || !strings.Contains(stderr, "check a snapshot") {
		t.Errorf("store check of a store in use: exit %d, %q; want exit 1 saying it is locked and to check a snapshot", status, stderr)
	}
}

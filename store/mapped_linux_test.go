package store

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestOpenLeavesTheFileOutOfResidentMemory: loading the index reads every
// device through bbolt's mapping of the file, but afterwards DNS answers from
// the index alone; the file's pages are not left in the daemon's resident
// memory (they were about half of it, 650 bytes a device), nor after a
// background sweep, which reads the whole table again. The store still reads
// and writes as before.
func TestOpenLeavesTheFileOutOfResidentMemory(t *testing.T) {
	dir := t.TempDir()
	writeBenchDevices(t, dir, 20_000)
	path := filepath.Join(dir, FileName)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := Open(Config{Dir: dir, SweepEvery: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if got := mappedResidentKiB(t, path); got*1024 > fi.Size()/10 {
		t.Errorf("after Open %d KiB of the %d KiB file are resident, want under a tenth", got, fi.Size()/1024)
	}
	if rec, ok := st.Lookup("dev0000042"); !ok || !rec.IPv4.IsValid() {
		t.Fatalf("dev0000042 does not resolve: %+v", rec)
	}
	if _, _, err := st.SetAddress(context.Background(), "dev0000042", AddressUpdate{IPv4: v4a}); err != nil {
		t.Fatal(err)
	}
	if d, err := st.Get("dev0000042"); err != nil || d.IPv4 != v4a {
		t.Fatalf("after a write the file reads %v, %v; want %v", d.IPv4, err, v4a)
	}
	st.sweep()
	if got := mappedResidentKiB(t, path); got*1024 > fi.Size()/10 {
		t.Errorf("after a sweep %d KiB of the %d KiB file are resident, want under a tenth", got, fi.Size()/1024)
	}
}

// mappedResidentKiB sums the resident memory of this process's mappings of
// path (/proc/self/smaps).
func mappedResidentKiB(t *testing.T, path string) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Skipf("no /proc/self/smaps: %v", err)
	}
	var kib int64
	in := false
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) > 0 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":") {
			in = len(f) >= 6 && f[len(f)-1] == path
			continue
		}
		if in && len(f) >= 2 && f[0] == "Rss:" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			kib += n
		}
	}
	return kib
}

package store

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// BenchmarkIndexOpen measures what the in-memory index the DNS path reads
// costs at 100,000 and 1,000,000 devices (each DDNS on, with an IPv4 and an
// IPv6 address): ns/op is Open building it from the file (the daemon's
// start-up before its first answer) and cpu_s/op the CPU time it took
// (decoding runs on every core), heap_B/device what it holds once
// built (the index and whatever Open keeps; bbolt's map is not heap), and
// the resident memory Open added, anonymous and file-backed (bbolt's map).
func BenchmarkIndexOpen(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprintf("devices=%d", n), func(b *testing.B) {
			dir := b.TempDir()
			writeBenchDevices(b, dir, n)
			var heap, anon, file int64
			var cpu time.Duration
			for b.Loop() {
				cpu0 := cpuTime()
				st, err := Open(Config{Dir: dir, SweepEvery: -1})
				if err != nil {
					b.Fatal(err)
				}
				cpu += cpuTime() - cpu0
				b.StopTimer()
				if st.Len() != n {
					b.Fatalf("%d devices resolve, want %d", st.Len(), n)
				}
				// What Open holds is the difference between the heap and
				// resident memory with the store open and after it closed,
				// each after a collection that returns the garbage to the
				// OS: Open's garbage, and what writing the file left, are
				// in neither.
				// Twice: what sits in a sync.Pool (bbolt's page buffers)
				// survives one collection.
				var open, closed runtime.MemStats
				debug.FreeOSMemory()
				debug.FreeOSMemory()
				runtime.ReadMemStats(&open)
				anon1, file1 := rssKiB("RssAnon:"), rssKiB("RssFile:")
				st.Close()
				runtime.KeepAlive(st)
				debug.FreeOSMemory()
				debug.FreeOSMemory()
				runtime.ReadMemStats(&closed)
				heap = int64(open.HeapAlloc) - int64(closed.HeapAlloc)
				anon, file = anon1-rssKiB("RssAnon:"), file1-rssKiB("RssFile:")
				b.StartTimer()
			}
			b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu_s/op")
			b.ReportMetric(float64(heap)/float64(n), "heap_B/device")
			b.ReportMetric(float64(anon*1024)/float64(n), "rss_anon_B/device")
			b.ReportMetric(float64(file*1024)/float64(n), "rss_file_B/device")
		})
	}
}

// cpuTime is the CPU time the process has used, user and system: what
// Open costs on a machine busy with other work, where wall time is not.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// rssKiB reads one field of /proc/self/status in KiB (0 where there is none).
func rssKiB(field string) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, field); ok {
			v, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return v
		}
	}
	return 0
}

// writeBenchDevices writes n devices straight into a new store's file, in
// one transaction (through the API each would be a commit).
func writeBenchDevices(b testing.TB, dir string, n int) {
	b.Helper()
	st, err := Open(Config{Dir: dir, SweepEvery: -1})
	if err != nil {
		b.Fatal(err)
	}
	st.Close()
	db, err := bolt.Open(filepath.Join(dir, FileName), 0o600, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	err = db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketDevices)
		for i := range n {
			var v6 [16]byte
			v6[0], v6[1] = 0x20, 0x01
			binary.BigEndian.PutUint32(v6[12:], uint32(i))
			d := Device{
				Name: fmt.Sprintf("dev%07d", i), TokenSHA256: fmt.Sprintf("%064x", i),
				IPv4: netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), IPv6: netip.AddrFrom16(v6),
				DDNS: true, State: StateActive, Created: now, Updated: now,
			}
			if err := putDevice(bk, d.Name, &d); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
}

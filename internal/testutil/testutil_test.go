package testutil

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorder is a testing.TB that notes how a helper ended the test instead of
// ending the real one.
type recorder struct {
	testing.TB
	failed, skipped string
}

func (r *recorder) Helper() {}

func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (r *recorder) Skipf(format string, args ...any) {
	r.skipped = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// record runs f on a goroutine of its own, which Fatalf and Skipf end the
// way they end a test's goroutine.
func record(t *testing.T, f func(testing.TB)) *recorder {
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(r)
	}()
	<-done
	return r
}

func TestClockMovesOnlyByHand(t *testing.T) {
	start := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	c := NewClock(start)
	if got := c.Now(); !got.Equal(start) {
		t.Fatalf("new clock reads %v, want %v", got, start)
	}
	c.Advance(90 * time.Minute)
	if got, want := c.Now(), start.Add(90*time.Minute); !got.Equal(want) {
		t.Errorf("after Advance(90m) the clock reads %v, want %v", got, want)
	}
	later := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	c.Set(later)
	if got := c.Now(); !got.Equal(later) {
		t.Errorf("after Set the clock reads %v, want %v", got, later)
	}
	// Read by the code under test while the test moves it (the race
	// detector checks this).
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 100 {
				c.Now()
			}
		})
	}
	for range 100 {
		c.Advance(time.Second)
	}
	wg.Wait()
	if got, want := c.Now(), later.Add(100*time.Second); !got.Equal(want) {
		t.Errorf("after 100 concurrent Advance(1s) the clock reads %v, want %v", got, want)
	}
}

func TestBufferTakesConcurrentWritesWhileRead(t *testing.T) {
	var b Buffer
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				b.Write([]byte("x\n"))
			}
		})
	}
	for range 10 {
		_ = b.String()
	}
	wg.Wait()
	if got := strings.Count(b.String(), "x\n"); got != 800 {
		t.Fatalf("buffer holds %d writes, want 800", got)
	}
	snapshot := b.Bytes()
	snapshot[0] = 'y'
	if b.String()[0] != 'x' {
		t.Error("changing what Bytes returned changed the buffer: it must be a copy")
	}
}

func TestNeedToolFindsAProgramInPath(t *testing.T) {
	p := NeedTool(t, "sh")
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm()&0o111 == 0 {
		t.Fatalf("NeedTool(sh) = %q (%v), want an executable", p, err)
	}
}

func TestNeedToolFindsAProgramInSbin(t *testing.T) {
	dir := t.TempDir()
	prog := filepath.Join(dir, "nasreach-test-tool")
	if err := os.WriteFile(prog, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", t.TempDir())
	old := sbinDirs
	sbinDirs = []string{dir}
	t.Cleanup(func() { sbinDirs = old })
	if got := NeedTool(t, "nasreach-test-tool"); got != prog {
		t.Fatalf("NeedTool = %q, want %q from the sbin directory", got, prog)
	}
}

func TestNeedToolSkipsWhenMissingAndFailsUnderCI(t *testing.T) {
	const missing = "nasreach-no-such-program"
	t.Setenv("CI", "")
	r := record(t, func(tb testing.TB) { NeedTool(tb, missing) })
	if r.failed != "" || !strings.Contains(r.skipped, missing) || !strings.Contains(r.skipped, "make test-deps") {
		t.Errorf("missing program outside CI: skipped %q, failed %q; want a skip naming %s and make test-deps", r.skipped, r.failed, missing)
	}
	t.Setenv("CI", "true")
	r = record(t, func(tb testing.TB) { NeedTool(tb, missing) })
	if r.skipped != "" || !strings.Contains(r.failed, missing) {
		t.Errorf("missing program under CI: skipped %q, failed %q; want a failure naming %s", r.skipped, r.failed, missing)
	}
}

func TestWaitForReturnsOnceTheConditionHolds(t *testing.T) {
	calls := 0
	r := record(t, func(tb testing.TB) {
		WaitFor(tb, 10*time.Second, "the third call", func() bool { calls++; return calls == 3 })
	})
	if r.failed != "" || calls != 3 {
		t.Fatalf("WaitFor: failed %q after %d calls, want a return at the third", r.failed, calls)
	}
}

func TestWaitForFailsNamingWhatItWaitedFor(t *testing.T) {
	start := time.Now()
	r := record(t, func(tb testing.TB) {
		WaitFor(tb, 50*time.Millisecond, "a condition that never holds", func() bool { return false })
	})
	if !strings.Contains(r.failed, "a condition that never holds") {
		t.Fatalf("WaitFor failed with %q, want the thing it waited for named", r.failed)
	}
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Errorf("WaitFor gave up after %v, before its 50ms timeout", d)
	}
}

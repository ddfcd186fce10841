package natlab_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/natlab"
	"github.com/nasreach/nasreach/internal/testutil"
)

// TestNewRemovesNamespacesOfDeadRuns leaves a namespace named as a crashed
// test process would have, and checks that the next lab removes it.
func TestNewRemovesNamespacesOfDeadRuns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("creating network namespaces needs root")
	}
	ip := testutil.NeedTool(t, "ip")
	// A PID no process has any more: a child that has exited.
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	stale := "nrlab-" + strconv.Itoa(gone.Process.Pid) + "-1-inet"
	if out, err := exec.Command(ip, "netns", "add", stale).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", stale, err, out)
	}
	t.Cleanup(func() { exec.Command(ip, "netns", "del", stale).Run() })

	natlab.New(t)
	if _, err := os.Stat("/run/netns/" + stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("namespace %s of an exited test process is still there (%v)", stale, err)
	}
}

// TestCleanupRemovesEverything ends a test that leaves a process running in
// a lab namespace, and checks that the process is gone and that no
// namespace of the lab keeps its name. (The lab's cleanup is a t.Cleanup:
// it runs the same whether the test returns, fails or skips.)
func TestCleanupRemovesEverything(t *testing.T) {
	var names []string
	exited := make(chan struct{})
	t.Run("leaves-a-process-running", func(t *testing.T) {
		lab := natlab.New(t)
		home := lab.AddHome(natlab.DoubleNAT)
		names = append(names, lab.Internet.Name, home.CGNAT.Name, home.Router.Name, home.Host().Name)
		sleep := home.Host().Command("sleep", "60")
		if err := sleep.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { sleep.Wait(); close(exited) }()
		// Until ip has entered the namespace, the process is not in it:
		// a cleanup in that moment neither sees it nor keeps it out (ip
		// holds the namespace open and enters it, unnamed, afterwards).
		ip := testutil.NeedTool(t, "ip")
		pid := strconv.Itoa(sleep.Process.Pid)
		testutil.WaitFor(t, 5*time.Second, "the process to run in the host's namespace", func() bool {
			out, _ := exec.Command(ip, "netns", "pids", home.Host().Name).Output()
			return slices.Contains(strings.Fields(string(out)), pid)
		})
	})
	if len(names) == 0 {
		t.Skip("the lab could not be built (see the subtest)")
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Error("the process left running in the lab still runs 5 s after the test ended")
	}
	for _, name := range names {
		if _, err := os.Stat("/run/netns/" + name); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("namespace %s is still there after the test (%v)", name, err)
		}
	}
}

// TestDoLeavesNoThreadInALabNamespace runs code in a lab namespace many
// times and then checks that every thread the runtime hands out is still in
// the test's own namespace: Do's threads end with their goroutine instead
// of going back to the pool.
func TestDoLeavesNoThreadInALabNamespace(t *testing.T) {
	lab := natlab.New(t)
	own, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	var inLab string
	for range 50 {
		err := lab.Internet.Do(func() (err error) {
			inLab, err = os.Readlink("/proc/thread-self/ns/net")
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if inLab == own {
		t.Fatalf("Do ran in the test's namespace %s, not the lab's", own)
	}
	// Lock many goroutines to threads at once, so the runtime hands out
	// every idle thread it has.
	const threads = 64
	seen := make(chan string, threads)
	release := make(chan struct{})
	var wg sync.WaitGroup
	for range threads {
		wg.Go(func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			ns, _ := os.Readlink("/proc/thread-self/ns/net")
			seen <- ns
			<-release
		})
	}
	for range threads {
		if ns := <-seen; ns != own {
			t.Errorf("a runtime thread is in %s, not the test's namespace %s", ns, own)
		}
	}
	close(release)
	wg.Wait()
}

// TestDoReportsWhatItsFunctionDid checks that Do returns fn's error, raises
// fn's panic in the caller, and turns runtime.Goexit (t.Fatal called
// inside) into an error instead of hanging.
func TestDoReportsWhatItsFunctionDid(t *testing.T) {
	lab := natlab.New(t)
	want := errors.New("from fn")
	if err := lab.Internet.Do(func() error { return want }); err != want {
		t.Errorf("Do returned %v, want fn's error", err)
	}
	if err := lab.Internet.Do(func() error { runtime.Goexit(); return nil }); err == nil {
		t.Error("Do returned nil after fn called runtime.Goexit")
	}
	defer func() {
		if p := recover(); p == nil || !strings.Contains(fmt.Sprint(p), "boom") {
			t.Errorf("recovered %v, want fn's panic", p)
		}
	}()
	lab.Internet.Do(func() error { panic("boom") })
}

package connlimit

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/testutil"
)

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func TestDefaultCapsAreAHundredthPerSourceAtLeastEight(t *testing.T) {
	for _, tc := range []struct {
		cfg                   Config
		wantTotal, wantPerSrc int
	}{
		{Config{}, DefaultMax, 10},
		{Config{Max: 13756}, 13756, 137},
		{Config{Max: 200}, 200, 8},
		{Config{Max: 5}, 5, 5},
		{Config{Max: 100, MaxPerSource: 3}, 100, 3},
		{Config{Max: 10, MaxPerSource: 30}, 10, 10},
	} {
		total, perSource := New(tc.cfg).Caps()
		if total != tc.wantTotal || perSource != tc.wantPerSrc {
			t.Errorf("%+v: caps %d total, %d per source; want %d, %d", tc.cfg, total, perSource, tc.wantTotal, tc.wantPerSrc)
		}
	}
}

func TestAdmitRefusesOverEitherCapAndCountsWhy(t *testing.T) {
	l := New(Config{Max: 5, MaxPerSource: 2})
	admit := func(src string, want error) *Slot {
		t.Helper()
		s, err := l.Admit(addr(src))
		if !errors.Is(err, want) {
			t.Fatalf("Admit(%s): %v, want %v", src, err, want)
		}
		return s
	}
	a1 := admit("192.0.2.1", nil)
	admit("192.0.2.1", nil)
	admit("192.0.2.1", ErrSource)
	admit("::ffff:192.0.2.1", ErrSource) // the same source, mapped
	admit("192.0.2.2", nil)
	// One IPv6 subscriber holds a /64: its addresses share the cap.
	admit("2001:db8:1:2::1", nil)
	admit("2001:db8:1:2:ffff::9", nil)
	admit("2001:db8:1:3::1", ErrTotal) // 5 held
	if st := l.Stats(); st.Live != 5 || st.RefusedSource != 2 || st.RefusedTotal != 1 {
		t.Fatalf("stats %+v, want 5 live, 2 refused per source, 1 over the total", st)
	}
	a1.Release()
	a1.Release() // once only
	if st := l.Stats(); st.Live != 4 {
		t.Fatalf("after releasing one slot twice: %d live, want 4", st.Live)
	}
	admit("192.0.2.1", nil)
}

func TestExemptSourcesCountTowardTheTotalOnly(t *testing.T) {
	proxy := addr("127.0.0.1")
	l := New(Config{Max: 4, MaxPerSource: 1, Exempt: func(a netip.Addr) bool { return a == proxy }})
	for range 3 {
		if _, err := l.Admit(proxy); err != nil {
			t.Fatalf("exempt source refused: %v", err)
		}
	}
	if _, err := l.Admit(netip.Addr{}); err != nil { // a Unix socket's connection
		t.Fatalf("connection without a source refused: %v", err)
	}
	if _, err := l.Admit(proxy); !errors.Is(err, ErrTotal) {
		t.Fatalf("exempt source over the total: %v, want ErrTotal", err)
	}
}

func TestSetCapsAppliesToTheNextConnection(t *testing.T) {
	l := New(Config{Max: 10, MaxPerSource: 3})
	for range 3 {
		l.Admit(addr("192.0.2.1")) //nolint:errcheck // under the cap
	}
	l.SetCaps(Config{Max: 10, MaxPerSource: 2})
	if st := l.Stats(); st.Live != 3 {
		t.Fatalf("lowering the cap closed connections: %d live, want 3", st.Live)
	}
	if _, err := l.Admit(addr("192.0.2.1")); !errors.Is(err, ErrSource) {
		t.Fatalf("over the lowered cap: %v, want ErrSource", err)
	}
	l.SetCaps(Config{Max: 10, MaxPerSource: 4})
	if _, err := l.Admit(addr("192.0.2.1")); err != nil {
		t.Fatalf("under the raised cap: %v", err)
	}
}

func TestCrowdedFromHalfOfEitherCap(t *testing.T) {
	l := New(Config{Max: 8, MaxPerSource: 4})
	src, other := addr("192.0.2.1"), addr("192.0.2.2")
	l.Admit(src) //nolint:errcheck // under the cap
	if l.Crowded(src) {
		t.Fatal("crowded with one of four slots taken")
	}
	l.Admit(src) //nolint:errcheck // under the cap
	if !l.Crowded(src) || l.Crowded(other) {
		t.Fatalf("crowded: source with half its slots %v (want true), another source %v (want false)", l.Crowded(src), l.Crowded(other))
	}
	l.Admit(other) //nolint:errcheck // under the cap
	l.Admit(other) //nolint:errcheck // under the cap
	if !l.Crowded(addr("192.0.2.3")) {
		t.Fatal("not crowded with half the total taken")
	}
}

// serve serves a Limiter's listener on 127.0.0.1 until the test ends: each
// admitted connection is read until the client closes it, then closed
// (more than once: the slot must be given back once).
func serve(t *testing.T, l *Limiter) net.Listener {
	t.Helper()
	ln := l.Listener(testutil.ListenTCP(t))
	testutil.Serve(t, ln, func(c net.Conn) {
		io.Copy(io.Discard, c) //nolint:errcheck // until the client closes
		c.Close()
	})
	return ln
}

func TestListenerClosesConnectionsOverTheCapAndFreesSlotsOnClose(t *testing.T) {
	l := New(Config{Max: 3, MaxPerSource: 2})
	ln := serve(t, l)
	live := func() int { return l.Stats().Live }
	testutil.CheckSourceCap(t, ln.Addr().String(), 2, live)
	// Three held now: the total refuses a fourth source as well.
	if !testutil.Refused(t, "127.0.0.4", ln.Addr().String(), 3*time.Second) {
		t.Fatal("a connection over the total cap was held")
	}
	if st := l.Stats(); st.Live != 3 || st.RefusedSource != 1 || st.RefusedTotal != 1 {
		t.Fatalf("stats %+v, want 3 live, one refusal per source and one over the total", st)
	}
}

// countingListener counts the calls to Accept of the real listener below.
type countingListener struct {
	net.Listener
	calls atomic.Int64
}

func (c *countingListener) Accept() (net.Conn, error) {
	c.calls.Add(1)
	return c.Listener.Accept()
}

// Out of file descriptors, accept fails with EMFILE and the connection
// stays in the backlog: Accept must pause, not spin, and must take the
// connection once descriptors are free again. The test lowers the
// process's file limit (the whole test binary's, so it runs alone and puts
// the limit back).
func TestAcceptPausesWhileOutOfDescriptors(t *testing.T) {
	var orig syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &orig); err != nil {
		t.Fatal(err)
	}
	inner := &countingListener{Listener: testutil.ListenTCP(t)}
	ln := New(Config{}).Listener(inner)
	defer ln.Close()
	client, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	// Fill the descriptor table up to a lowered limit: the next accept fails.
	lim := orig
	lim.Cur = 64
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Skipf("cannot lower RLIMIT_NOFILE: %v", err)
	}
	var fds []int
	restore := sync.OnceFunc(func() {
		for _, fd := range fds {
			syscall.Close(fd)
		}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &orig); err != nil {
			t.Errorf("restore RLIMIT_NOFILE: %v", err)
		}
	})
	defer restore()
	for {
		fd, err := syscall.Dup(0)
		if err != nil {
			if !errors.Is(err, syscall.EMFILE) {
				t.Fatalf("dup: %v, want EMFILE once the table is full", err)
			}
			break
		}
		fds = append(fds, fd)
	}

	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
		close(accepted)
	}()
	const window = 300 * time.Millisecond
	time.Sleep(window)
	// Pauses of 5, 10, 20, 40, 80 and 160 ms fit in the window: a handful of
	// calls, where a spinning loop makes tens of thousands.
	calls := inner.calls.Load()
	if calls > 12 {
		t.Errorf("Accept called the listener %d times in %v while out of descriptors, want a handful (it spins)", calls, window)
	}
	if calls < 2 {
		t.Errorf("Accept called the listener %d times in %v, want it to try again", calls, window)
	}
	select {
	case <-accepted:
		t.Fatal("Accept returned while out of descriptors")
	default:
	}
	restore()
	select {
	case c, ok := <-accepted:
		if !ok {
			t.Fatal("Accept failed after descriptors were free again")
		}
		c.Close()
	case <-time.After(5 * time.Second): // at most one pause of a second
		t.Fatal("Accept did not take the waiting connection once descriptors were free")
	}
	t.Logf("listener called %d times in %v while out of descriptors", calls, window)
}

func TestCloseEndsAPauseAndAcceptReportsTheClose(t *testing.T) {
	ln := New(Config{}).Listener(failingListener{testutil.ListenTCP(t)})
	done := make(chan error, 1)
	go func() {
		_, err := ln.Accept()
		done <- err
	}()
	time.Sleep(50 * time.Millisecond) // into its pauses
	start := time.Now()
	ln.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
		}
		if d := time.Since(start); d > 500*time.Millisecond {
			t.Errorf("Accept returned %v after Close, want at once", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept did not return after Close")
	}
}

// failingListener fails every accept with EMFILE until it is closed.
type failingListener struct{ *net.TCPListener }

func (f failingListener) Accept() (net.Conn, error) {
	if testutil.Closed(f.TCPListener) {
		return nil, net.ErrClosed
	}
	return nil, &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
}

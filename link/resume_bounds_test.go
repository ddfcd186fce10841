package link_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"hash"
	"io"
	mrand "math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/link"
	"github.com/nasreach/nasreach/linkserver"
	"github.com/rs/zerolog"
)

// countingListener counts the connections its accept loop takes, in that
// loop: once a later connection is served, every earlier one is counted.
type countingListener struct {
	net.Listener
	n atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// countingEcho is an echo service that counts the connections it accepts.
func countingEcho(t *testing.T) (string, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := &countingListener{Listener: ln}
	testutil.Serve(t, cl, func(c net.Conn) {
		io.Copy(c, c)
		c.(*net.TCPConn).CloseWrite()
	})
	return ln.Addr().String(), &cl.n
}

// downService is an address where nothing listens.
func downService(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// echoWithin is echoByte with a deadline long enough for a resume.
func echoWithin(c net.Conn, d time.Duration) error {
	c.SetDeadline(time.Now().Add(d))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte("x")); err != nil {
		return err
	}
	_, err := io.ReadFull(c, make([]byte, 1))
	return err
}

// A resumed session goes on with the connection to the service it had:
// the service sees one connection per session, before and after the
// session is resumed through a restarted relay.
func TestResumeDialsNoExtraConnectionToTheService(t *testing.T) {
	e := newEnv(t)
	tok := e.addDevice("nas1")
	svc, accepted := countingEcho(t)
	e.agent("nas1", tok, map[uint16]string{22: svc})
	d := e.dialer(relayOnly)
	c, err := d.Dial(ctx10(t), "nas1", 22)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := echoByte(c); err != nil {
		t.Fatal(err)
	}
	if n := accepted.Load(); n != 1 {
		t.Fatalf("the service accepted %d connections for one session", n)
	}
	if err := e.relay.Shutdown(ctx10(t)); err != nil {
		t.Fatal(err)
	}
	e.start()
	if err := echoWithin(c, 20*time.Second); err != nil {
		t.Fatalf("the session after the relay restarted: %v", err)
	}
	// A second session: once it echoes, the service has accepted every
	// connection dialed before it.
	c2, err := d.Dial(ctx10(t), "nas1", 22)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if err := echoByte(c2); err != nil {
		t.Fatal(err)
	}
	if n := accepted.Load(); n != 2 {
		t.Errorf("the service accepted %d connections for two sessions, one of them resumed; want 2", n)
	}
}

// A service that does not answer is reported as ErrDialFailed, with the
// agent's message, whichever way the session goes; the direct path stays.
// A client without resumable sessions, which has its OK before the agent
// dials, sees its handshake fail instead.
func TestServiceDownIsReportedAsDialFailed(t *testing.T) {
	var tapped atomic.Int64
	e := newEnv(t, func(c *linkserver.Config) {
		c.Tap = func(_ string, _ bool, p []byte) { tapped.Add(int64(len(p))) }
	})
	tok := e.addDevice("nas1")
	e.agent("nas1", tok, map[uint16]string{22: echoServer(t), 23: downService(t)})
	dialDown := func(t *testing.T, d *link.Dialer) error {
		t.Helper()
		c, err := d.Dial(ctx10(t), "nas1", 23)
		if c != nil {
			c.Close()
			t.Fatal("a session to a service that does not answer was opened")
		}
		return err
	}
	checkRefusal := func(t *testing.T, err error) {
		t.Helper()
		var re *link.RefusedError
		if !errors.Is(err, link.ErrDialFailed) || !errors.As(err, &re) || re.Status != link.StatusDialFailed {
			t.Fatalf("Dial to a service that does not answer: %v, want ErrDialFailed", err)
		}
		if want := "nas1:23: link refused: device nas1 cannot reach the service behind port 23"; err.Error() != want {
			t.Errorf("error %q, want %q", err, want)
		}
	}

	t.Run("relayed", func(t *testing.T) {
		checkRefusal(t, dialDown(t, e.dialer(relayOnly)))
	})
	t.Run("direct", func(t *testing.T) {
		d := e.dialer()
		goDirect(t, d, "nas1", 22)
		before := tapped.Load()
		checkRefusal(t, dialDown(t, d))
		if now := tapped.Load(); now != before {
			t.Errorf("the relay carried %d bytes of a session that had a direct path", now-before)
		}
		if !d.PathTo("nas1").Direct {
			t.Error("the service's refusal gave up the direct path")
		}
	})
	t.Run("without resumable sessions", func(t *testing.T) {
		d := e.dialer(relayOnly, func(c *link.DialerConfig) { c.DisableResume = true })
		err := dialDown(t, d)
		if err == nil || !strings.Contains(err.Error(), "end-to-end TLS") {
			t.Errorf("Dial to a service that does not answer, without resumable sessions: %v, want the handshake failed", err)
		}
		echo(t, d, "nas1", 22) // and the working service still works
	})
	t.Run("to an agent without resumable sessions", func(t *testing.T) {
		otok := e.addDevice("old")
		cfg := e.agentConfig("old", otok, t.TempDir(), map[uint16]string{22: echoServer(t), 23: downService(t)})
		cfg.DisableResume = true
		e.startAgent(cfg)
		d := e.dialer(relayOnly)
		c, err := d.Dial(ctx10(t), "old", 23)
		if c != nil {
			c.Close()
		}
		if err == nil || !strings.Contains(err.Error(), "end-to-end TLS") {
			t.Errorf("Dial to a service that does not answer, behind an agent without resumable sessions: %v, want the handshake failed", err)
		}
		echo(t, d, "old", 22)
	})
}

// indexedService serves each connection with serve and its number (0 for
// the first accepted), then reads it to its end, and sends the number on
// the channel returned once the other end (the agent: the session ended)
// has closed it.
func indexedService(t *testing.T, serve func(i int, c net.Conn)) (string, <-chan int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := make(chan int, 16)
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for i := 0; ; i++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				serve(i, c)
				io.Copy(io.Discard, c)
				closed <- i
			})
		}
	})
	return ln.Addr().String(), closed
}

// warnings is a logger for an agent that also keeps its warnings.
func warnings(t *testing.T) (zerolog.Logger, *testutil.Buffer) {
	var buf testutil.Buffer
	return zerolog.New(io.MultiWriter(zerolog.NewTestWriter(t), &buf)).Level(zerolog.WarnLevel), &buf
}

// waitWarning waits for a warning that says each of parts.
func waitWarning(t *testing.T, warned *testutil.Buffer, parts ...string) {
	t.Helper()
	testutil.WaitFor(t, 5*time.Second, "a warning saying "+strings.Join(parts, ", "), func() bool {
		for _, line := range strings.Split(warned.String(), "\n") {
			n := 0
			for _, p := range parts {
				if strings.Contains(line, p) {
					n++
				}
			}
			if n == len(parts) {
				return true
			}
		}
		return false
	})
}

// waitClosed waits for the service's connection want to close, and fails
// if another closes first.
func waitClosed(t *testing.T, closed <-chan int, want int, what string) {
	t.Helper()
	select {
	case i := <-closed:
		if i != want {
			t.Fatalf("%s: the service saw session %d end, want %d", what, i, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: session %d did not end", what, want)
	}
}

// noneClosed fails if a session's connection to the service has closed.
func noneClosed(t *testing.T, closed <-chan int, what string) {
	t.Helper()
	select {
	case i := <-closed:
		t.Errorf("%s: session %d ended", what, i)
	default:
	}
}

// When suspended sessions would hold more memory than the agent allows,
// it ends the one suspended longest and says why in its log; the session
// whose suspension took the total over the bound, within it once the older
// one is gone, is resumed and delivers every byte.
func TestSuspendedSessionsBeyondTheMemoryBoundEnd(t *testing.T) {
	e := newEnv(t)
	tok := e.addDevice("nas1")
	const burst = 1 << 20 // what each session's service sends at once, and its client does not read
	want := make([]byte, burst)
	mrand.NewChaCha8([32]byte{5}).Read(want)
	svc, closed := indexedService(t, func(_ int, c net.Conn) { c.Write(want) })
	log, warned := warnings(t)
	cfg := e.agentConfig("nas1", tok, t.TempDir(), map[uint16]string{22: svc})
	cfg.Logger = log
	cfg.MaxSuspendedBytes = 3 * burst / 2 // one session's burst fits, two do not
	a := e.startAgent(cfg)

	// The first session's client goes away for good: suspended, holding
	// its burst, never resumed.
	d1 := e.dialer(relayOnly)
	c1, err := d1.Dial(ctx10(t), "nas1", 22)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	testutil.WaitFor(t, 10*time.Second, "the first session to hold its burst", func() bool { return link.SessionsHeld(a) >= burst })
	d1.Close()
	testutil.WaitFor(t, 10*time.Second, "the first session suspended", func() bool {
		n, held := link.SuspendedSessions(a)
		return n == 1 && held >= burst
	})

	// The second session's path fails (the relay stops) while it holds
	// its burst too: the two would hold more than the bound.
	d2 := e.dialer(relayOnly)
	c2, err := d2.Dial(ctx10(t), "nas1", 22)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	testutil.WaitFor(t, 10*time.Second, "the second session to hold its burst", func() bool { return link.SessionsHeld(a) >= 2*burst })
	if err := e.relay.Shutdown(ctx10(t)); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, closed, 0, "two suspended sessions over the memory bound")
	if n, held := link.SuspendedSessions(a); n != 1 || held < burst || held > cfg.MaxSuspendedBytes {
		t.Errorf("after ending the oldest: %d suspended sessions holding %d bytes, want 1 within the bound of %d", n, held, cfg.MaxSuspendedBytes)
	}
	waitWarning(t, warned, "suspended link sessions hold more memory than the agent allows", `"max_held_bytes":1572864`, `"port":22`)

	e.start()
	c2.SetReadDeadline(time.Now().Add(20 * time.Second))
	got := make([]byte, burst)
	if _, err := io.ReadFull(c2, got); err != nil {
		t.Fatalf("read the resumed session's burst: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the resumed session's burst arrived changed")
	}
	noneClosed(t, closed, "the resumed session")
	c2.Close()
	waitClosed(t, closed, 1, "the resumed session closed by its client")
	testutil.WaitFor(t, 10*time.Second, "the bound to count nothing", func() bool {
		n, held := link.SuspendedSessions(a)
		return n == 0 && held == 0
	})
}

// The agent keeps at most MaxSuspended sessions suspended: one more ends
// the one suspended longest, which can no longer be resumed; the others
// can.
func TestSuspendedSessionsBeyondTheCountBoundEnd(t *testing.T) {
	e := newEnv(t)
	tok := e.addDevice("nas1")
	svc, closed := indexedService(t, func(int, net.Conn) {})
	log, warned := warnings(t)
	cfg := e.agentConfig("nas1", tok, t.TempDir(), map[uint16]string{22: svc})
	cfg.Logger = log
	cfg.MaxSuspended = 3
	cfg.HandshakeTimeout = time.Minute // the raw sessions never run the TLS handshake
	a := e.startAgent(cfg)
	d := e.dialer(relayOnly)
	var ids [4][link.SessionIDLen]byte
	for i := range ids {
		var c net.Conn
		c, ids[i] = rawSession(t, d, 22)
		c.Close() // the stream ends: the agent suspends the session
		if i < cfg.MaxSuspended {
			testutil.WaitFor(t, 10*time.Second, "the sessions suspended one by one", func() bool {
				n, _ := link.SuspendedSessions(a)
				return n == i+1
			})
		}
	}
	waitClosed(t, closed, 0, "one suspended session more than MaxSuspended")
	if n, _ := link.SuspendedSessions(a); n != cfg.MaxSuspended {
		t.Errorf("%d sessions suspended, want %d", n, cfg.MaxSuspended)
	}
	waitWarning(t, warned, "the agent keeps its maximum of suspended link sessions", `"max_suspended":3`)
	if fr := resumeRaw(t, d, 22, ids[0]); fr.(link.Result).Status != link.StatusNoSession {
		t.Errorf("resume of the session suspended longest: %+v, want StatusNoSession", fr)
	}
	for i := 1; i < len(ids); i++ {
		if fr := resumeRaw(t, d, 22, ids[i]); fr != (link.Resumed{}) {
			t.Errorf("resume of session %d: %+v, want Resumed", i, fr)
		}
	}
	noneClosed(t, closed, "the sessions within the bound, resumed")
}

// The default bounds are the constants, and a negative one is refused.
func TestSuspendedBoundsMustNotBeNegative(t *testing.T) {
	e := newEnv(t)
	for _, mod := range []func(*link.AgentConfig){
		func(c *link.AgentConfig) { c.MaxSuspended = -1 },
		func(c *link.AgentConfig) { c.MaxSuspendedBytes = -1 },
	} {
		cfg := e.agentConfig("nas1", "token", t.TempDir(), map[uint16]string{22: "127.0.0.1:22"})
		mod(&cfg)
		if a, err := link.NewAgent(cfg); err == nil || !strings.Contains(err.Error(), "AgentConfig.MaxSuspended") {
			if a != nil {
				a.Close()
			}
			t.Errorf("NewAgent with a negative bound: %v, want an error naming the field", err)
		}
	}
}

// What the service reads while its session is suspended no longer counts
// against the bound: the session received its window (close to 4 MiB)
// that the service had not read when its path failed, the service reads
// it meanwhile, and the session, resumed, delivers the rest.
func TestBytesTheServiceReadsWhileSuspendedNoLongerCount(t *testing.T) {
	e := newEnv(t)
	u := startUnreadTransfer(t, e, 3)
	a := u.agent
	const window = 3 << 20 // and more: the window's 4 MiB are of memory, that of a few bytes too
	testutil.WaitFor(t, 20*time.Second, "the agent to hold the session's window unread", func() bool { return link.SessionsHeld(a) >= window })
	if err := e.relay.Shutdown(ctx10(t)); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, "the session suspended, holding what the service has not read", func() bool {
		k, held := link.SuspendedSessions(a)
		return k == 1 && held >= window
	})
	u.release()
	testutil.WaitFor(t, 20*time.Second, "the bound to count nothing once the service read it all", func() bool {
		k, held := link.SuspendedSessions(a)
		return k == 1 && held == 0
	})
	e.start()
	u.check(t)
}

// A suspended session whose service goes on writing holds at most the
// agent's bound: the service is held back, not the session ended, and
// once resumed every byte arrives.
func TestSuspendedSessionHoldsItsServiceBackAtTheBound(t *testing.T) {
	e := newEnv(t)
	tok := e.addDevice("nas1")
	const first, rest = 64 << 10, 8 << 20
	want := make([]byte, first+rest)
	mrand.NewChaCha8([32]byte{4}).Read(want)
	more := make(chan struct{})
	svc := tcpServer(t, func(c net.Conn) {
		c.Write(want[:first])
		<-more
		c.Write(want[first:])
	})
	cfg := e.agentConfig("nas1", tok, t.TempDir(), map[uint16]string{22: svc})
	cfg.MaxSuspendedBytes = 1 << 20
	a := e.startAgent(cfg)
	d := e.dialer(relayOnly)
	c, err := d.Dial(ctx10(t), "nas1", 22)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got[:first]); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, "the first bytes acknowledged", func() bool { return link.SessionsHeld(a) == 0 })
	if err := e.relay.Shutdown(ctx10(t)); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, "the session suspended", func() bool {
		k, _ := link.SuspendedSessions(a)
		return k == 1
	})
	close(more)
	// The service writes on into the suspended session until it holds the
	// bound (less than a record short of it).
	testutil.WaitFor(t, 20*time.Second, "the suspended session to fill the bound", func() bool {
		_, held := link.SuspendedSessions(a)
		return held > cfg.MaxSuspendedBytes-32<<10
	})
	if k, held := link.SuspendedSessions(a); k != 1 || held > cfg.MaxSuspendedBytes {
		t.Fatalf("%d suspended sessions holding %d bytes, want 1 within %d", k, held, cfg.MaxSuspendedBytes)
	}
	e.start()
	if _, err := io.ReadFull(c, got[first:]); err != nil {
		t.Fatalf("read the rest after the resume: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the bytes written while the session was suspended arrived changed")
	}
}

// A session whose service reads nothing holds one window of unread bytes
// at the agent however often it is resumed: each end drops what its
// application has not read before it answers a resume and has it sent
// again, instead of reopening the window for another 4 MiB at every
// resume. Everything arrives once the service reads.
func TestResumesDoNotGrowWhatAnUnreadSessionHolds(t *testing.T) {
	e := newEnv(t)
	u := startUnreadTransfer(t, e, 5)
	a := u.agent
	// settled waits until what the agent's sessions hold stops changing.
	settled := func(what string) int64 {
		t.Helper()
		last, since := int64(-1), time.Now()
		testutil.WaitFor(t, 20*time.Second, what, func() bool {
			held := link.SessionsHeld(a)
			if suspended, _ := link.SuspendedSessions(a); suspended > 0 || held != last {
				last, since = held, time.Now()
			}
			return held > 0 && time.Since(since) > 500*time.Millisecond
		})
		return last
	}
	first := settled("the unread window at the agent")
	for i := range 3 {
		if err := e.relay.Shutdown(ctx10(t)); err != nil {
			t.Fatal(err)
		}
		e.start()
		if held := settled("the session resumed and settled"); held > first+first/4 {
			t.Fatalf("after resume %d the agent holds %d KiB unread, %d KiB before the first", i+1, held>>10, first>>10)
		}
	}
	t.Logf("the agent held %d KiB of unread session bytes before and after 3 resumes", first>>10)
	u.release()
	u.check(t)
}

// unreadTransfer is a relayed session to nas1's port 9, a service that
// reads nothing until release, then answers the SHA-256 of all it got;
// 48 MiB go out in the background, more than the local connection's
// socket buffers and the session's window together, so the client waits
// with the session's window unread at the agent.
type unreadTransfer struct {
	agent   *link.Agent
	c       net.Conn
	release func()
	sent    chan error
	h       hash.Hash
}

func startUnreadTransfer(t *testing.T, e *env, seed byte) *unreadTransfer {
	t.Helper()
	tok := e.addDevice("nas1")
	start := make(chan struct{})
	var once sync.Once
	u := &unreadTransfer{release: func() { once.Do(func() { close(start) }) }, sent: make(chan error, 1), h: sha256.New()}
	svc := tcpServer(t, func(c net.Conn) {
		<-start // the service does not read yet
		h := sha256.New()
		io.Copy(h, c)
		io.WriteString(c, hex.EncodeToString(h.Sum(nil)))
	})
	u.agent = e.agent("nas1", tok, map[uint16]string{9: svc})
	d := e.dialer(relayOnly)
	t.Cleanup(u.release) // first: the agent's and the service's cleanups wait for the service to read
	c, err := d.Dial(ctx10(t), "nas1", 9)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	u.c = c
	go func() {
		_, err := io.Copy(c, io.TeeReader(io.LimitReader(mrand.NewChaCha8([32]byte{seed}), 48<<20), u.h))
		if err == nil {
			err = c.(interface{ CloseWrite() error }).CloseWrite()
		}
		u.sent <- err
	}()
	return u
}

// check waits for the send to end and the service's SHA-256 to match it.
func (u *unreadTransfer) check(t *testing.T) {
	t.Helper()
	if err := <-u.sent; err != nil {
		t.Fatalf("send: %v", err)
	}
	u.c.SetReadDeadline(time.Now().Add(60 * time.Second))
	got, err := io.ReadAll(u.c)
	if err != nil {
		t.Fatalf("read hash: %v", err)
	}
	if want := hex.EncodeToString(u.h.Sum(nil)); string(got) != want {
		t.Fatalf("the service got SHA-256 %s, sent %s", got, want)
	}
}

package link_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	mrand "math/rand/v2"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/link"
	"github.com/nasreach/nasreach/linkserver"
	"github.com/nasreach/nasreach/store"
)

// atByte is a reader that calls f once when k bytes have been read
// through it, before it returns them: what was written before is in
// flight (or waits for its acknowledgment) when f cuts the path.
type atByte struct {
	r    io.Reader
	k, n int64
	f    func()
	once sync.Once
}

func (a *atByte) Read(b []byte) (int, error) {
	n, err := a.r.Read(b)
	a.n += int64(n)
	if a.n >= a.k {
		a.once.Do(a.f)
	}
	return n, err
}

// hashedTransfer sends n pseudo-random bytes to a hashServer on c, calling
// cut once a quarter has gone out, and checks the SHA-256 the far end
// answers: the application sees no error however the path fared.
func hashedTransfer(t *testing.T, c net.Conn, n int64, cut func()) {
	t.Helper()
	h := sha256.New()
	src := &atByte{r: io.TeeReader(io.LimitReader(mrand.NewChaCha8([32]byte{7}), n), h), k: n / 4, f: cut}
	start := time.Now()
	if _, err := io.Copy(c, src); err != nil {
		t.Fatalf("send: %v", err)
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatalf("close write: %v", err)
	}
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read hash: %v", err)
	}
	if want := hex.EncodeToString(h.Sum(nil)); string(got) != want {
		t.Fatalf("far end got SHA-256 %s, sent %s", got, want)
	}
	t.Logf("%d MiB in %v, now on the %v path", n>>20, time.Since(start).Round(time.Millisecond), link.PathOf(c))
}

// A relayed session survives a relay restart: both carriers die, the agent
// reconnects, the client resumes the session through the new relay, and
// the 16 MiB transfer in flight arrives intact without an error.
func TestRelayedSessionSurvivesARelayRestart(t *testing.T) {
	e := newEnv(t)
	tok := e.addDevice("nas1")
	e.agent("nas1", tok, map[uint16]string{9: hashServer(t)})
	d := e.dialer(relayOnly)
	c, err := d.Dial(ctx10(t), "nas1", 9)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	hashedTransfer(t, c, 16<<20, func() {
		if err := e.relay.Shutdown(ctx10(t)); err != nil {
			t.Error(err)
		}
		e.start()
	})
	if link.PathOf(c).Direct {
		t.Errorf("a relay-only session went direct")
	}
	e.relayCarried()
}

// relayCarried checks that the relay logged the session's first stream
// as cut and a later one (the session resumed) as ok.
func (e *env) relayCarried() {
	e.t.Helper()
	testutil.WaitFor(e.t, 5*time.Second, "the resumed stream's record", func() bool {
		evs := e.events.sessions()
		return len(evs) >= 2 && evs[len(evs)-1].Outcome == "ok"
	})
	if evs := e.events.sessions(); evs[0].Outcome != "aborted" {
		e.t.Errorf("relay session records %+v, want the first aborted", evs)
	}
}

// A relayed session over the TCP carrier survives its yamux stream being
// reset by a relay restart, as the QUIC one does.
func TestRelayedSessionOverTCPSurvivesARelayRestart(t *testing.T) {
	e := newEnv(t)
	tok := e.addDevice("nas1")
	e.agent("nas1", tok, map[uint16]string{9: hashServer(t)})
	d := e.dialer(relayOnly, func(c *link.DialerConfig) {
		c.Server = "127.0.0.1:1" // no QUIC answers there: TCP it is
		c.ServerTCP = e.tcp.Addr().String()
		c.QUICHeadStart = 10 * time.Millisecond
	})
	c, err := d.Dial(ctx10(t), "nas1", 9)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if tr := link.TransportOf(c); tr != link.TransportTCP {
		t.Fatalf("transport %s, want tcp", tr)
	}
	hashedTransfer(t, c, 16<<20, func() {
		if err := e.relay.Shutdown(ctx10(t)); err != nil {
			t.Error(err)
		}
		e.start()
	})
	e.relayCarried()
}

// A direct session survives the death of its direct connection: it
// resumes (through the relay, or a new direct path) and the transfer goes
// on intact.
func TestDirectSessionSurvivesItsConnectionClosing(t *testing.T) {
	e := newEnv(t)
	tok := e.addDevice("nas1")
	a := e.agent("nas1", tok, map[uint16]string{9: hashServer(t), 22: echoServer(t)})
	d := e.dialer()
	goDirect(t, d, "nas1", 22).Close()
	c, err := d.Dial(ctx10(t), "nas1", 9)
	if err != nil || !link.PathOf(c).Direct {
		t.Fatalf("a direct session: %v (%v)", err, link.PathOf(c))
	}
	defer c.Close()
	hashedTransfer(t, c, 16<<20, func() { link.CloseAgentDirect(a) })
}

// rawSession opens a session stream to nas1's port through the relay and
// makes it resumable by hand, as a client would: Session, then the OK.
func rawSession(t *testing.T, d *link.Dialer, port uint16) (net.Conn, [link.SessionIDLen]byte) {
	t.Helper()
	c, err := d.DialCarrier(ctx10(t), "nas1", port)
	if err != nil {
		t.Fatal(err)
	}
	var id [link.SessionIDLen]byte
	rand.Read(id[:])
	if res := ask(t, c, link.Session{ID: id}); res != (link.Result{Status: link.StatusOK}) {
		t.Fatalf("session: %+v", res)
	}
	return c, id
}

// ask writes f on c and reads the answer.
func ask(t *testing.T, c net.Conn, f link.Frame) link.Frame {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	if err := link.WriteFrame(c, f); err != nil {
		t.Fatal(err)
	}
	fr, err := link.ReadFrame(c, 0)
	if err != nil {
		t.Fatal(err)
	}
	return fr
}

// resumeRaw asks the agent, on a new stream, to resume session id.
func resumeRaw(t *testing.T, d *link.Dialer, port uint16, id [link.SessionIDLen]byte) link.Frame {
	t.Helper()
	c, err := d.DialCarrier(ctx10(t), "nas1", port)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return ask(t, c, link.Resume{ID: id})
}

// Only a session the agent holds, for the port it was opened for, and
// within its resume window, is resumed; anything else is refused with
// StatusNoSession, and a session not resumed in time ends: its local
// connection closes.
func TestResumeIsRefusedUnlessTheAgentHoldsTheSession(t *testing.T) {
	e := newEnv(t)
	tok := e.addDevice("nas1")
	const window = 500 * time.Millisecond
	closed := make(chan struct{}, 4)
	svc := tcpServer(t, func(c net.Conn) { io.Copy(io.Discard, c); closed <- struct{}{} })
	cfg := e.agentConfig("nas1", tok, t.TempDir(), map[uint16]string{22: svc, 23: svc})
	cfg.ResumeWindow = window
	cfg.HandshakeTimeout = time.Minute // the raw sessions never run the TLS handshake
	e.startAgent(cfg)
	d := e.dialer(relayOnly)

	var unknown [link.SessionIDLen]byte
	rand.Read(unknown[:])
	if fr := resumeRaw(t, d, 22, unknown); fr.(link.Result).Status != link.StatusNoSession {
		t.Errorf("resume of an unknown id: %+v, want StatusNoSession", fr)
	}

	c, id := rawSession(t, d, 22)
	c.Close() // the stream ends: the agent suspends the session
	if fr := resumeRaw(t, d, 23, id); fr.(link.Result).Status != link.StatusNoSession {
		t.Errorf("resume for another port: %+v, want StatusNoSession", fr)
	}
	if fr := resumeRaw(t, d, 22, id); fr != (link.Resumed{}) {
		t.Errorf("resume within the window: %+v, want Resumed{0}", fr)
	}
	// That stream closed too: suspended again, and not resumed in time.
	start := time.Now()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the local connection of a suspended session stayed open after its window")
	}
	if el := time.Since(start); el < window/2 {
		t.Errorf("the session ended %v after it was suspended; its window is %v", el, window)
	}
	if fr := resumeRaw(t, d, 22, id); fr.(link.Result).Status != link.StatusNoSession {
		t.Errorf("resume after the window: %+v, want StatusNoSession", fr)
	}
}

// Switching Link off ends suspended sessions too: switched on again, the
// client cannot resume them.
func TestLinkOffEndsSuspendedSessions(t *testing.T) {
	e := newEnv(t)
	tok := e.addDevice("nas1")
	closed := make(chan struct{}, 4)
	svc := tcpServer(t, func(c net.Conn) { io.Copy(io.Discard, c); closed <- struct{}{} })
	cfg := e.agentConfig("nas1", tok, t.TempDir(), map[uint16]string{22: svc})
	cfg.HandshakeTimeout = time.Minute
	a := e.startAgent(cfg)
	d := e.dialer(relayOnly)
	c, id := rawSession(t, d, 22)
	c.Close()
	setLink := func(on bool) {
		if _, err := e.st.Update(context.Background(), "nas1", store.Patch{Link: &on}); err != nil {
			t.Fatal(err)
		}
	}
	setLink(false)
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Link off left a suspended session's local connection open")
	}
	setLink(true)
	ctx := ctx10(t)
	if err := a.WaitOnline(ctx); err != nil {
		t.Fatal(err)
	}
	var fr link.Frame
	testutil.WaitFor(t, 10*time.Second, "the agent back at the relay", func() bool {
		c, err := d.DialCarrier(ctx, "nas1", 22)
		if errors.Is(err, link.ErrOffline) || errors.Is(err, link.ErrLinkDisabled) {
			return false
		}
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fr = ask(t, c, link.Resume{ID: id})
		return true
	})
	if res, ok := fr.(link.Result); !ok || res.Status != link.StatusNoSession {
		t.Errorf("resume after Link off and on: %+v, want StatusNoSession", fr)
	}
}

// A relayed session whose client's access code was revoked runs on until
// its path fails; then the relay refuses to resume it, and it ends with
// the refusal, not the path's failure.
func TestRevokedAccessCodeIsNotResumed(t *testing.T) {
	e := newEnv(t)
	tok := e.addDevice("nas1")
	code := e.tokenAccess("nas1")
	e.agent("nas1", tok, map[uint16]string{22: echoServer(t)})
	d := e.dialer(relayOnly, func(c *link.DialerConfig) { c.AccessCode = code })
	c, err := d.Dial(ctx10(t), "nas1", 22)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	codes, err := e.st.AccessCodes("nas1")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.st.RevokeAccessCode(context.Background(), "nas1", codes[0].ID); err != nil {
		t.Fatal(err)
	}
	if err := echoByte(c); err != nil {
		t.Fatalf("a relayed session after its code was revoked: %v", err)
	}
	if err := e.relay.Shutdown(ctx10(t)); err != nil {
		t.Fatal(err)
	}
	e.start()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, link.ErrAccessDenied) {
		t.Errorf("the session after the relay restarted: %v, want ErrAccessDenied", err)
	}
}

// cutEvery is a reader that calls cut each time another step of bytes
// has been read through it.
type cutEvery struct {
	r         io.Reader
	step, n   int64
	next      int64
	cut       func()
	cuts, max int
}

func (c *cutEvery) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	if c.n >= c.next && c.cuts < c.max {
		c.cuts++
		c.next += c.step
		c.cut()
	}
	return n, err
}

// Bytes flowing both ways cross several cuts of the path in one session:
// an echo of 8 MiB, written while it is read back, through the agent's
// direct connection closed and then three relay restarts; every byte
// comes back in order.
func TestEchoSurvivesRepeatedCutsBothWays(t *testing.T) {
	e := newEnv(t)
	tok := e.addDevice("nas1")
	a := e.agent("nas1", tok, map[uint16]string{22: echoServer(t)})
	d := e.dialer()
	c := goDirect(t, d, "nas1", 22)
	const n = 8 << 20
	want := make([]byte, n)
	mrand.NewChaCha8([32]byte{9}).Read(want)
	cuts := 0
	src := &cutEvery{r: bytes.NewReader(want), step: n / 5, next: n / 5, max: 4, cut: func() {
		cuts++
		if cuts == 1 { // then the session is on the relay
			link.CloseAgentDirect(a)
			return
		}
		if err := e.relay.Shutdown(ctx10(t)); err != nil {
			t.Error(err)
		}
		e.start()
	}}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	wrote := make(chan error, 1)
	go func() {
		_, err := io.Copy(c, src)
		wrote <- err
	}()
	got := make([]byte, n)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read the echo back after %d cuts: %v", cuts, err)
	}
	if err := <-wrote; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, want) {
		i := 0
		for got[i] == want[i] {
			i++
		}
		t.Fatalf("the echo differs from byte %d on", i)
	}
	if err := echoByte(c); err != nil {
		t.Fatalf("after the echo: %v", err)
	}
	t.Logf("8 MiB echoed intact across %d cuts, now on the %v path", cuts, link.PathOf(c))
}

// A session is resumed at most MaxResumes times; the next Resume is
// refused.
func TestResumesPerSessionAreBounded(t *testing.T) {
	e := newEnv(t, func(c *linkserver.Config) { c.StreamRate, c.StreamBurst = 1000, 1000 })
	tok := e.addDevice("nas1")
	svc := tcpServer(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	cfg := e.agentConfig("nas1", tok, t.TempDir(), map[uint16]string{22: svc})
	cfg.HandshakeTimeout = time.Minute
	e.startAgent(cfg)
	d := e.dialer(relayOnly)
	c, id := rawSession(t, d, 22)
	c.Close()
	for i := range link.MaxResumes {
		if fr := resumeRaw(t, d, 22, id); fr != (link.Resumed{}) {
			t.Fatalf("resume %d: %+v, want Resumed", i+1, fr)
		}
	}
	if fr := resumeRaw(t, d, 22, id); fr.(link.Result).Status != link.StatusNoSession {
		t.Errorf("resume %d: %+v, want StatusNoSession", link.MaxResumes+1, fr)
	}
}

// An agent that stops ends its suspended sessions at once: Close does not
// wait out their resume window.
func TestAgentCloseEndsSuspendedSessions(t *testing.T) {
	e := newEnv(t)
	tok := e.addDevice("nas1")
	closed := make(chan struct{}, 1)
	svc := tcpServer(t, func(c net.Conn) { io.Copy(io.Discard, c); closed <- struct{}{} })
	cfg := e.agentConfig("nas1", tok, t.TempDir(), map[uint16]string{22: svc})
	cfg.HandshakeTimeout = time.Minute
	a := e.startAgent(cfg)
	c, _ := rawSession(t, e.dialer(relayOnly), 22)
	c.Close()
	start := time.Now()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("Close took %v with a suspended session", el)
	}
	<-closed
}

// Resumable sessions leave no goroutine behind: after sessions that ended,
// one suspended and one open, closing the Dialer and the agent brings the
// process back to the relay's own goroutines.
func TestClosingLeavesNoSessionGoroutines(t *testing.T) {
	e := newEnv(t)
	tok := e.addDevice("nas1")
	expose := map[uint16]string{22: echoServer(t), 9: hashServer(t)}
	before := runtime.NumGoroutine()
	a := e.agent("nas1", tok, expose)
	d := e.dialer(relayOnly)
	sendHashed(t, d, "nas1", 1<<20) // ended
	open, err := d.Dial(ctx10(t), "nas1", 22)
	if err != nil {
		t.Fatal(err)
	}
	if err := echoByte(open); err != nil {
		t.Fatal(err)
	}
	raw, _ := rawSession(t, d, 22)
	raw.Close() // suspended at the agent
	d.Close()
	a.Close()
	open.Close()
	testutil.WaitFor(t, 10*time.Second, "the goroutines of the sessions to end", func() bool { return runtime.NumGoroutine() <= before })
}

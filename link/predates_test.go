package link_test

import (
	"crypto/rand"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/link"
	"github.com/quic-go/quic-go"
	"github.com/rs/zerolog"
)

// Agents that predate resumable sessions: AgentConfig.DisableResume
// answers as they did (TLS right after the OK Result), and a Dialer that
// meets one opens plain sessions to that device from then on.

// predatingMessage is the Dialer's Info line when it meets such an agent.
const predatingMessage = "the device's agent serves no resumable sessions"

// count returns how many lines of log contain s.
func count(log *testutil.Buffer, s string) int {
	n := 0
	for line := range strings.SplitSeq(log.String(), "\n") {
		if strings.Contains(line, s) {
			n++
		}
	}
	return n
}

// oldAgent starts an agent for nas1 that answers as one before resumable
// sessions, exposing an echo service as port 22, and returns its log.
func (e *env) oldAgent(tok string, mods ...func(*link.AgentConfig)) *testutil.Buffer {
	e.t.Helper()
	log := &testutil.Buffer{}
	cfg := e.agentConfig("nas1", tok, e.t.TempDir(), map[uint16]string{22: echoServer(e.t)})
	cfg.DisableResume, cfg.Logger = true, zerolog.New(log)
	for _, m := range mods {
		m(&cfg)
	}
	e.startAgent(cfg)
	return log
}

// A Session frame sent to an agent that predates resumable sessions
// fails its end-to-end TLS handshake on the first bytes (0x0f is no TLS
// record type), and the agent ends the stream without a byte: the client
// reads a clean EOF where it waits for the Result.
func TestAgentWithoutResumeEndsTheStreamOnASessionFrame(t *testing.T) {
	e := newEnv(t)
	log := e.oldAgent(e.addDevice("nas1"))
	c, err := e.dialer(relayOnly).DialCarrier(ctx10(t), "nas1", 22)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var id [link.SessionIDLen]byte
	rand.Read(id[:])
	if err := link.WriteFrame(c, link.Session{ID: id}); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if fr, err := link.ReadFrame(c, 0); err != io.EOF {
		t.Fatalf("the agent answered a Session with %#v, %v; want the stream ended with nothing (EOF)", fr, err)
	}
	if count(log, "first record does not look like a TLS handshake") != 1 {
		t.Errorf("the agent's log does not show its TLS server refusing the Session frame:\n%s", log)
	}
}

// Through the relay, with the agent on either carrier: the first Dial
// offers a Session, sees the agent end the stream, logs that once at
// Info and opens a plain session on a new stream, which works; the next
// Dial offers no Session at all.
func TestDialerOpensPlainSessionsToAnAgentThatPredatesThem(t *testing.T) {
	for _, carrier := range []string{link.TransportQUIC, link.TransportTCP} {
		t.Run(carrier, func(t *testing.T) {
			e := newEnv(t)
			agentLog := e.oldAgent(e.addDevice("nas1"), func(c *link.AgentConfig) {
				if carrier == link.TransportTCP {
					c.Server, c.ServerTCP, c.QUICHeadStart = "127.0.0.1:1", e.tcp.Addr().String(), 10*time.Millisecond
				}
			})
			testutil.WaitFor(t, 5*time.Second, "the agent to log its carrier, "+carrier, func() bool {
				return count(agentLog, `"transport":"`+carrier+`"`) >= 1
			})
			clientLog := &testutil.Buffer{}
			d := e.dialer(relayOnly, func(c *link.DialerConfig) { c.Logger = zerolog.New(clientLog).Level(zerolog.InfoLevel) })
			for i := range 2 {
				c := dialPath(t, d, "nas1", 22, false)
				if link.Resumable(c) {
					t.Errorf("session %d is resumable with an agent that predates resumable sessions", i+1)
				}
			}
			if n := count(clientLog, predatingMessage); n != 1 {
				t.Errorf("the client logged %d times that the agent predates resumable sessions, want once:\n%s", n, clientLog)
			}
			if n := count(agentLog, "end-to-end handshake failed"); n != 1 {
				t.Errorf("the agent saw %d Session frames, want one (the first Dial's); its log:\n%s", n, agentLog)
			}
		})
	}
}

// On a direct path too: a Dialer that meets the old agent there (having
// forgotten what the first, relayed, session taught it) opens a plain
// session on a new direct stream.
func TestDialerOpensPlainSessionsToAnAgentThatPredatesThemOnADirectPath(t *testing.T) {
	e := newEnv(t)
	agentLog := e.oldAgent(e.addDevice("nas1"))
	clientLog := &testutil.Buffer{}
	d := e.dialer(func(c *link.DialerConfig) { c.Logger = zerolog.New(clientLog).Level(zerolog.InfoLevel) })
	dialPath(t, d, "nas1", 22, false)
	waitDirect(t, d, "nas1")
	link.ForgetPredatingAgents(d)
	c := dialPath(t, d, "nas1", 22, true)
	if link.Resumable(c) {
		t.Error("the direct session is resumable with an agent that predates resumable sessions")
	}
	if n := count(clientLog, predatingMessage); n != 2 {
		t.Errorf("the client logged %d times that the agent predates resumable sessions, want twice (relayed, then direct):\n%s", n, clientLog)
	}
	if n := count(agentLog, "end-to-end handshake failed"); n != 2 {
		t.Errorf("the agent saw %d Session frames, want two; its log:\n%s", n, agentLog)
	}
}

// rawAgent logs in to e's relay as nas1's agent over a bare QUIC
// connection and answers every Open with OK; serve then gets the
// stream.
func (e *env) rawAgent(tok string, serve func(*quic.Stream)) {
	e.t.Helper()
	c := e.rawConn(e.t)
	ctrl, err := c.OpenStreamSync(ctx10(e.t))
	if err != nil {
		e.t.Fatal(err)
	}
	ctrl.SetDeadline(time.Now().Add(10 * time.Second))
	if err := link.WriteFrame(ctrl, link.Hello{Device: "nas1", Token: tok}); err != nil {
		e.t.Fatal(err)
	}
	if fr, err := link.ReadFrame(ctrl, 0); err != nil || fr != (link.Result{Status: link.StatusOK}) {
		e.t.Fatalf("hello: %+v, %v", fr, err)
	}
	ctrl.SetDeadline(time.Time{})
	go func() {
		for {
			s, err := c.AcceptStream(c.Context())
			if err != nil {
				return
			}
			go func() {
				if _, err := link.ReadFrame(s, 0); err != nil {
					return
				}
				link.WriteFrame(s, link.Result{Status: link.StatusOK})
				serve(s)
			}()
		}
	}()
}

// An ordinary failure after the Session frame is not taken for an old
// agent: an agent that resets the stream (as a path that dies does) fails
// the Dial with that reset, and the next Dial offers a Session again.
func TestAResetAfterTheSessionFrameIsNotTakenForAnOldAgent(t *testing.T) {
	e := newEnv(t)
	sessions := make(chan byte, 4)
	e.rawAgent(e.addDevice("nas1"), func(s *quic.Stream) {
		var first [1]byte
		io.ReadFull(s, first[:])
		sessions <- first[0]
		s.CancelRead(link.StreamAborted)
		s.CancelWrite(link.StreamAborted)
	})
	clientLog := &testutil.Buffer{}
	d := e.dialer(relayOnly, func(c *link.DialerConfig) { c.Logger = zerolog.New(clientLog).Level(zerolog.InfoLevel) })
	for i := range 2 {
		_, err := d.Dial(ctx10(t), "nas1", 22)
		var se *quic.StreamError
		if !errors.As(err, &se) || !strings.Contains(err.Error(), "start the session") {
			t.Fatalf("dial %d: %v; want the session's start failed by a stream reset", i+1, err)
		}
		select {
		case b := <-sessions:
			if b != link.FrameSession {
				t.Errorf("dial %d began with byte %#x after the OK, want a Session frame (%#x)", i+1, b, link.FrameSession)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("dial %d: the agent got no stream", i+1)
		}
	}
	if len(sessions) != 0 {
		t.Errorf("the client opened %d more streams: it fell back to a plain session after a reset", len(sessions))
	}
	if n := count(clientLog, predatingMessage); n != 0 {
		t.Errorf("the client took a reset for an agent that predates resumable sessions:\n%s", clientLog)
	}
}

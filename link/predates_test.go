package link_test

import (
	"crypto/rand"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/link"
	"github.com/rs/zerolog"
)

// Agents that predate resumable sessions: AgentConfig.DisableResume
// answers as they did (TLS right after the OK Result).

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

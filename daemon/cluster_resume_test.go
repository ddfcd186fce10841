package daemon_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/daemon/daemontest"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/link"
	"github.com/rs/zerolog"
)

// Resumable sessions across the mesh (link/wire.go, "Across nodes" and
// "Resumable sessions"): a session a node forwards to the node holding
// the agent survives the death of either node, because the relays only
// splice its records; the client resumes it by whichever path works now.

// resumedOnce checks that the client's log says the session was resumed,
// and returns that line.
func resumedOnce(t *testing.T, log *testutil.Buffer) string {
	t.Helper()
	var lines []string
	for line := range strings.SplitSeq(log.String(), "\n") {
		if strings.Contains(line, `"message":"link session resumed"`) {
			lines = append(lines, line)
		}
	}
	if len(lines) != 1 {
		t.Errorf("the client resumed the session %d times, want once; its log:\n%s", len(lines), log)
		return ""
	}
	return lines[0]
}

// TestForwardedSessionResumesThroughTheAgentsNodeWhenTheClientsNodeStops:
// a client at node b whose session b forwards to the agent on node a
// moves 16 MiB through its echo; node b stops a quarter of the way in.
// The client, steered by DNS (which named no node when it first
// connected, so that it fell back to b), resumes the session at node a,
// and the transfer completes intact with no error for the application.
func TestForwardedSessionResumesThroughTheAgentsNodeWhenTheClientsNodeStops(t *testing.T) {
	node, fp := linkCluster(t)
	const key = "the-mesh-key-of-this-cluster"
	a, b := node("a", key), node("b", key)
	tok := a.AddDevice("nas1")
	echo := testutil.ListenTCP(t)
	testutil.Serve(t, echo, func(c net.Conn) { io.Copy(c, c) })
	(&daemontest.LinkRelay{Relay: a.Daemon.LinkRelay(), Fingerprint: fp}).StartAgent(t, link.AgentConfig{
		Device: "nas1", Token: tok, Expose: map[uint16]string{22: echo.Addr().String()}, ServerTCP: "-", DisableDirect: true})
	linkName := "_link." + daemontest.FQDN("nas1")
	testutil.WaitFor(t, 5*time.Second, "node a's DNS to name node a", func() bool {
		return len(a.Query("udp", linkName, dns.TypeA).Answer) == 1
	})
	// DDNS off: the steering names are NXDOMAIN, so the client's first
	// connection goes to its Server, node b, which forwards.
	setDDNS := func(on bool) {
		t.Helper()
		if code, body := a.Do("PATCH", "/v1/devices/nas1", tok, map[string]bool{"ddns": on}); code != 200 {
			t.Fatalf("ddns %v: %d %s", on, code, body)
		}
		testutil.WaitFor(t, 5*time.Second, fmt.Sprintf("node a's steering name with DDNS %v", on), func() bool {
			r := a.Query("udp", linkName, dns.TypeA)
			return on == (len(r.Answer) == 1)
		})
	}
	setDDNS(false)
	c, clientLog := forwardedSession(t, b, fp, &link.Steer{Zone: daemontest.Zone, Resolver: a.DNS})
	setDDNS(true)

	start := time.Now()
	testutil.EchoTransfer(t, c, 16<<20, 60*time.Second, func() {
		t.Log("stopping node b, the client's, a quarter of the way in")
		b.Stop()
	})
	t.Logf("16 MiB echoed in %v", time.Since(start).Round(time.Millisecond))
	line := resumedOnce(t, clientLog)
	if !strings.Contains(line, `"path":"relay"`) {
		t.Errorf("the session resumed on another path than the relay: %s", line)
	}
	if r := a.Daemon.LinkRelay().MeshStats().Received; r != 1 {
		t.Errorf("node a received %d forwarded sessions, want only the first stream (the resumed one comes straight)", r)
	}
}

// TestForwardedSessionFollowsTheAgentWhenTheAgentsNodeStops: a client at
// node b whose session b forwards to the agent on node a moves 16 MiB
// through its echo; node a stops a quarter of the way in. The agent,
// told of both nodes, reconnects to node b and keeps its suspended
// sessions across that (they belong to the agent, not to its relay
// connection); the client resumes at node b, which now holds the agent,
// and the transfer completes intact with no error for the application.
// (Stopped cleanly, as an in-process daemon is: the agent and node b are
// told at once. cmd/nasreach's TestForwardedSessionSurvivesTheAgentsNodeKilled
// kills a real node with SIGKILL, which tells no one.)
func TestForwardedSessionFollowsTheAgentWhenTheAgentsNodeStops(t *testing.T) {
	node, fp := linkCluster(t)
	const key = "the-mesh-key-of-this-cluster"
	a, b := node("a", key), node("b", key)
	tok := a.AddDevice("nas1")
	echo := testutil.ListenTCP(t)
	testutil.Serve(t, echo, func(c net.Conn) { io.Copy(c, c) })
	agentLog := &testutil.Buffer{}
	(&daemontest.LinkRelay{Relay: a.Daemon.LinkRelay(), Fingerprint: fp}).StartAgent(t, link.AgentConfig{
		Servers: []string{b.Link}, Device: "nas1", Token: tok, Expose: map[uint16]string{22: echo.Addr().String()},
		ServerTCP: "-", DisableDirect: true, Logger: zerolog.New(agentLog)})
	testutil.WaitFor(t, 5*time.Second, "node b to learn that node a holds the agent", func() bool {
		return len(b.Query("udp", "_link."+daemontest.FQDN("nas1"), dns.TypeA).Answer) == 1
	})
	c, clientLog := forwardedSession(t, b, fp, nil)

	start := time.Now()
	testutil.EchoTransfer(t, c, 16<<20, 60*time.Second, func() {
		t.Log("stopping node a, the agent's, a quarter of the way in")
		a.Stop()
	})
	t.Logf("16 MiB echoed in %v", time.Since(start).Round(time.Millisecond))
	resumedOnce(t, clientLog)
	if n := b.Daemon.LinkRelay().Agents(); n != 1 {
		t.Errorf("node b holds %d agents, want nas1's, moved there", n)
	}
	if f := b.Daemon.LinkRelay().MeshStats().Sessions; f != 1 {
		t.Errorf("node b forwarded %d sessions, want only the first stream (the agent is local now)", f)
	}
	if t.Failed() {
		t.Logf("agent log:\n%s", agentLog)
	}
}

// forwardedSession opens a relayed session to nas1's port 22 at node b
// (steered by DNS first when steer is set), which must forward it: the
// connection, closed at cleanup, and the client's log.
func forwardedSession(t *testing.T, b *daemontest.Daemon, fp string, steer *link.Steer) (net.Conn, *testutil.Buffer) {
	t.Helper()
	clientLog := &testutil.Buffer{}
	d, err := link.NewDialer(link.DialerConfig{Server: b.Link, ServerTCP: "-", RelayFingerprint: fp, KnownDevices: "-",
		Listen: "127.0.0.1:0", DisableDirect: true, Steer: steer, Logger: zerolog.New(clientLog)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.Dial(ctx, "nas1", 22)
	if err != nil {
		t.Fatalf("through node b: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	if f := b.Daemon.LinkRelay().MeshStats().Sessions; f != 1 {
		t.Fatalf("node b forwarded %d sessions, want the client's", f)
	}
	return c, clientLog
}

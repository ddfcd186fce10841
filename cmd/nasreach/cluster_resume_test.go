package main

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/etcdtest"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/link"
	"github.com/nasreach/nasreach/linkserver"
	"github.com/rs/zerolog"
)

// TestForwardedSessionSurvivesTheAgentsNodeKilled: real nodes on a real
// etcd, the real agent told of two of them (--idle-timeout 2s). A client
// at node 2 whose session node 2 forwards to the agent on node 1 moves 16
// MiB through its echo; node 1 is killed with SIGKILL a quarter of the way
// in: no goodbye to the agent or to node 2, whose mesh connection to node
// 1 would notice only after its idle timeout (30 s, the resume window
// itself). The agent notices after its idle timeout, keeps its sessions
// suspended, and reconnects to node 2; node 2, seeing the agent there,
// resets the sessions it still forwards to node 1, so the client resumes
// at once, at node 2, where the agent now is. Every byte comes back and
// the application sees no error, within seconds of the agent's return.
func TestForwardedSessionSurvivesTheAgentsNodeKilled(t *testing.T) {
	etcdBin := testutil.NeedTool(t, "etcd")
	cluster, err := etcdtest.Start(etcdBin, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cluster.Stop() }) // after the nodes
	bin := testutil.BuildNasreach(t)
	certDir := t.TempDir()
	_, fp, err := linkserver.LoadCert(certDir)
	if err != nil {
		t.Fatal(err)
	}
	const admin, meshKey = "admin-token-of-the-resume-test-0123", "mesh-key-of-the-resume-test-0123"
	n1 := startClusterNode(t, bin, "n1", cluster.Endpoints, certDir, admin, meshKey)
	n2 := startClusterNode(t, bin, "n2", cluster.Endpoints, certDir, admin, meshKey)

	tok := registerDevice(t, n1, admin, "nas1")
	startEchoAgent(t, bin, fp, tok, "--server", n1.link, "--cluster-server", n2.link, "--idle-timeout", "2s", "--log-level", "debug")
	_, p1, _ := net.SplitHostPort(n1.link)
	testutil.WaitFor(t, 20*time.Second, "node 2's DNS to name node 1 for nas1", func() bool {
		return fmt.Sprint(n2.steeredPort(t, "nas1")) == p1
	})

	clientLog := &testutil.Buffer{}
	d, err := link.NewDialer(link.DialerConfig{Server: n2.link, ServerTCP: "-", RelayFingerprint: fp, KnownDevices: "-",
		DisableDirect: true, Listen: "127.0.0.1:0", Logger: zerolog.New(clientLog)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.Close()
		if t.Failed() {
			t.Logf("client log:\n%s", clientLog)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.Dial(ctx, "nas1", 443)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if f := n2.metric(t, "nasreach_link_forwarded_sessions_total"); f != 1 {
		t.Fatalf("node 2 forwarded %v sessions, want the client's", f)
	}

	var killed time.Time
	testutil.EchoTransfer(t, c, 16<<20, 60*time.Second, func() {
		killed = time.Now()
		if err := n1.cmd.Process.Kill(); err != nil {
			t.Error(err)
		}
		<-n1.exited
	})
	took := time.Since(killed)
	t.Logf("node 1 killed a quarter of the way in: the last of 16 MiB came back %v after", took.Round(10*time.Millisecond))
	if !strings.Contains(clientLog.String(), `"message":"link session resumed"`) {
		t.Errorf("the client's log says no session was resumed")
	}
	if !strings.Contains(n2.log.String(), "ending the sessions forwarded to its old one") {
		t.Errorf("node 2's log does not say it ended the session it forwarded to node 1 when the agent moved to it:\n%s", n2.log)
	}
	// The mesh connection to node 1 would have taken its idle timeout
	// (30 s) to end the forwarded stream; the agent's return to node 2
	// (its 2 s idle timeout, and its backoff) ends it.
	if took > 20*time.Second {
		t.Errorf("the transfer took %v after the kill: the forwarded stream waited for the mesh's idle timeout", took)
	}
}

package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/internal/etcdtest"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/link"
	"github.com/nasreach/nasreach/linkserver"
)

// clusterNode is a `nasreach serve` process, one node of a cluster on etcd.
type clusterNode struct {
	name                     string
	cmd                      *exec.Cmd
	log                      *testutil.Buffer
	exited                   chan struct{}
	dns, http, metrics, link string
}

// startClusterNode runs `bin serve` on loopback with port 0 everywhere, its
// device table in the etcd at endpoints, the Link certificate of certDir
// (the cluster's, shared) and mesh key; it returns once the node is ready.
func startClusterNode(t *testing.T, bin, name string, endpoints []string, certDir, admin, meshKey string) *clusterNode {
	t.Helper()
	data := filepath.Join(t.TempDir(), "data")
	if err := os.MkdirAll(data, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{linkserver.CertFile, linkserver.KeyFile} {
		b, err := os.ReadFile(filepath.Join(certDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(data, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	args := []string{"serve", "--data", data, "--dns", "127.0.0.1:0", "--http", "127.0.0.1:0", "--metrics", "127.0.0.1:0",
		"--stun", "", "--link", "127.0.0.1:0", "--link-tcp", "", "--admin-token", admin, "--log-format", "json",
		"--store", "etcd", "--etcd-prefix", "/linkcluster", "--node-name", name, "--link-mesh-key", meshKey}
	for _, e := range endpoints {
		args = append(args, "--etcd-endpoints", e)
	}
	cmd := exec.Command(bin, args...)
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); !strings.HasPrefix(k, "NASREACH_") && !contains(systemdEnv, k) {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	n := &clusterNode{name: name, cmd: cmd, log: &testutil.Buffer{}, exited: make(chan struct{})}
	cmd.Stderr = n.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { cmd.Wait(); close(n.exited) }()
	t.Cleanup(func() {
		select {
		case <-n.exited:
		default:
			cmd.Process.Kill()
			<-n.exited
		}
		if t.Failed() {
			t.Logf("node %s log:\n%s", name, n.log)
		}
	})
	testutil.WaitFor(t, 30*time.Second, "node "+name+" to be ready", func() bool {
		select {
		case <-n.exited:
			t.Fatalf("node %s exited:\n%s", name, n.log)
		default:
		}
		sc := bufio.NewScanner(bytes.NewReader(n.log.Bytes()))
		for sc.Scan() {
			var line struct{ Message, DNS, HTTP, Metrics, Link string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Message == "nasreach ready" {
				n.dns, n.http, n.metrics, n.link = line.DNS, line.HTTP, line.Metrics, line.Link
				return true
			}
		}
		return false
	})
	return n
}

// metric returns the value of the sample line name (with its labels, as
// Prometheus prints them) on n's metrics page, or -1 without one.
func (n *clusterNode) metric(t *testing.T, name string) float64 {
	t.Helper()
	for line := range strings.SplitSeq(testutil.Scrape(t, "http://"+n.metrics+"/metrics"), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	return -1
}

// steeredPort asks n's DNS server for the SRV of device's relay and returns
// its port, or 0 with no answer.
func (n *clusterNode) steeredPort(t *testing.T, device string) uint16 {
	t.Helper()
	q := new(dns.Msg).SetQuestion("_nasreach-link._udp."+device+".myqnapcloud.com.", dns.TypeSRV)
	r, _, err := (&dns.Client{Timeout: 2 * time.Second}).Exchange(q, n.dns)
	if err != nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		return 0
	}
	return r.Answer[0].(*dns.SRV).Port
}

// TestLinkAcrossNodesSteersForwardsAndFollowsTheAgent: a real three-member
// etcd cluster and three real nodes. An agent on node 1: DNS (asked of node
// 3) names node 1, and a client steered by it has its session relayed by
// node 1; a client sent to node 2 is forwarded to node 1 with its bytes
// intact; node 1 killed with SIGKILL, the agent reconnects to node 2 and
// every node's DNS follows within seconds.
func TestLinkAcrossNodesSteersForwardsAndFollowsTheAgent(t *testing.T) {
	etcdBin := testutil.NeedTool(t, "etcd")
	cluster, err := etcdtest.Start(etcdBin, 3)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cluster.Stop() }) // after the nodes
	bin := testutil.BuildNasreach(t)
	certDir := t.TempDir()
	_, fp, err := linkserver.LoadCert(certDir) // the cluster's certificate, one key pinned by every client
	if err != nil {
		t.Fatal(err)
	}
	const admin, meshKey = "admin-token-of-the-cluster-test-0123", "mesh-key-of-the-cluster-test-0123"
	var nodes []*clusterNode
	for i := range 3 {
		// Each node talks to its own etcd member, as on separate machines.
		eps := append([]string{cluster.Endpoints[i]}, cluster.Endpoints[:i]...)
		nodes = append(nodes, startClusterNode(t, bin, fmt.Sprintf("n%d", i+1), append(eps, cluster.Endpoints[i+1:]...), certDir, admin, meshKey))
	}
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	portOf := func(n *clusterNode) uint16 {
		_, p, _ := net.SplitHostPort(n.link)
		v, _ := strconv.Atoi(p)
		return uint16(v)
	}

	// Register nas1 on node 1; its agent connects there first.
	tok := registerDevice(t, n1, admin, "nas1")
	// The real agent, told of all three nodes, with its defaults; a dead
	// node is noticed when it has been silent for the idle timeout (10 s).
	startEchoAgent(t, bin, fp, tok, "--server", n1.link, "--cluster-server", n2.link, "--cluster-server", n3.link)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, n := range nodes {
		testutil.WaitFor(t, 20*time.Second, "node "+n.name+"'s DNS to name node 1 for nas1", func() bool {
			return n.steeredPort(t, "nas1") == portOf(n1)
		})
	}

	dialer := func(server string, steer bool) *link.Dialer {
		cfg := link.DialerConfig{Server: server, ServerTCP: "-", RelayFingerprint: fp, KnownDevices: "-",
			DisableDirect: true, Listen: "127.0.0.1:0", WaitOnline: 5 * time.Second}
		if steer {
			cfg.Steer = &link.Steer{Zone: "myqnapcloud.com", Resolver: n3.dns}
		}
		d, err := link.NewDialer(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		return d
	}
	roundTrip := func(c net.Conn, size int) {
		t.Helper()
		payload := make([]byte, size)
		rand.Read(payload)
		errc := make(chan error, 1)
		go func() { _, err := c.Write(payload); errc <- err }()
		got := make([]byte, size)
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatalf("read the echo: %v", err)
		}
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, payload) {
			t.Fatal("the bytes that came back differ from those sent")
		}
	}
	const sessions = `nasreach_sessions_active{service="link"}`

	// A client steered by DNS, with node 2 as its fallback, lands on node 1.
	c, err := dialer(n2.link, true).Dial(ctx, "nas1", 443)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(c, 1024)
	if a, b := n1.metric(t, sessions), n2.metric(t, sessions); a != 1 || b != 0 {
		t.Errorf("steered session: node 1 relays %v sessions, node 2 %v; want 1 and 0", a, b)
	}
	if f := n2.metric(t, "nasreach_link_forwarded_sessions_total"); f != 0 {
		t.Errorf("node 2 forwarded %v sessions of a steered client, want 0", f)
	}
	c.Close()

	// A client sent to node 2 anyway is forwarded to node 1, its bytes intact.
	const size = 1 << 20
	c, err = dialer(n2.link, false).Dial(ctx, "nas1", 443)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(c, size)
	if a, b := n1.metric(t, sessions), n2.metric(t, sessions); a != 1 || b != 1 {
		t.Errorf("forwarded session: node 1 relays %v sessions, node 2 %v; want 1 and 1", a, b)
	}
	if m := n2.metric(t, "nasreach_link_mesh_connections"); m != 1 {
		t.Errorf("node 2 has %v mesh connections, want 1 (to node 1)", m)
	}
	c.Close()
	// Node 2 adds a session's bytes when its splice ends, which is after
	// the closed session's last records went through.
	testutil.WaitFor(t, 5*time.Second, fmt.Sprintf("node 2 to count the forwarded session and at least the %d bytes sent and echoed", 2*size), func() bool {
		return n2.metric(t, "nasreach_link_forwarded_sessions_total") == 1 && n1.metric(t, "nasreach_link_forward_received_total") == 1 &&
			n2.metric(t, "nasreach_link_forwarded_bytes_total") >= 2*size
	})

	// Node 1 dies: no goodbye to the agent, no lease revoked.
	killed := time.Now()
	if err := n1.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-n1.exited
	for _, n := range []*clusterNode{n2, n3} {
		testutil.WaitFor(t, 15*time.Second, "node "+n.name+"'s DNS to name node 2 for nas1", func() bool {
			return n.steeredPort(t, "nas1") == portOf(n2)
		})
	}
	followed := time.Since(killed)
	t.Logf("node 1 killed: the agent reconnected to node 2 and DNS named node 2 on nodes 2 and 3 after %v (the agent's default --idle-timeout, %v)",
		followed.Round(10*time.Millisecond), link.DefaultAgentIdleTimeout)
	// `nasreach connect` steered by the zone's DNS lands on node 2 (its
	// --server, node 3, does not hold the agent: it would forward).
	conn := exec.Command(bin, "connect", "--server", n3.link, "--server-tcp", "-", "--relay-fingerprint", fp,
		"--known-devices", "-", "--direct", "never", "--zone", "myqnapcloud.com", "--resolver", n3.dns,
		"--listen", "127.0.0.1:0", "--log-format", "json", "nas1:443")
	connLog := &testutil.Buffer{}
	conn.Stderr = connLog
	if err := conn.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Process.Kill()
		conn.Wait()
		if t.Failed() {
			t.Logf("connect log:\n%s", connLog)
		}
	})
	var listen string
	testutil.WaitFor(t, 10*time.Second, "connect to listen", func() bool {
		sc := bufio.NewScanner(bytes.NewReader(connLog.Bytes()))
		for sc.Scan() {
			var line struct{ Message, Listen string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Message == "forwarding connections" {
				listen = line.Listen
				return true
			}
		}
		return false
	})
	c, err = net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(c, 1024)
	if a, b := n2.metric(t, sessions), n3.metric(t, sessions); a != 1 || b != 0 {
		t.Errorf("after the failover: node 2 relays %v sessions, node 3 %v; want 1 and 0", a, b)
	}
	steered := false
	for line := range strings.SplitSeq(connLog.String(), "\n") {
		steered = steered || strings.Contains(line, `"relay":"`+n2.link+`"`) && strings.Contains(line, "DNS steers to the relay node holding the device")
	}
	if !steered {
		t.Errorf("connect's log does not say DNS steered it to node 2 at %s", n2.link)
	}
	c.Close()
}

// registerDevice registers name through node n's API and returns its token.
func registerDevice(t *testing.T, n *clusterNode, admin, name string) string {
	t.Helper()
	req, _ := http.NewRequest("POST", "http://"+n.http+"/v1/devices", strings.NewReader(`{"name":"`+name+`"}`))
	req.Header.Set("Authorization", "Bearer "+admin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var reg struct{ Token string }
	json.NewDecoder(resp.Body).Decode(&reg)
	resp.Body.Close()
	if reg.Token == "" {
		t.Fatalf("register %s: %s", name, resp.Status)
	}
	return reg.Token
}

// startEchoAgent runs the real agent for nas1 (token tok) with args (its
// relay nodes, and any other flag), exposing a new echo service as port
// 443, relayed only; it is killed at cleanup, and its log shown when the
// test failed.
func startEchoAgent(t *testing.T, bin, fp, tok string, args ...string) {
	t.Helper()
	echo := testutil.ListenTCP(t)
	testutil.Serve(t, echo, func(c net.Conn) { io.Copy(c, c) })
	agent := exec.Command(bin, append(append([]string{"agent"}, args...),
		"--server-tcp", "-", "--relay-fingerprint", fp, "--device", "nas1", "--expose", "443="+echo.Addr().String(),
		"--state", t.TempDir(), "--direct", "never", "--log-format", "json")...)
	agent.Env = append(os.Environ(), "NASREACH_TOKEN="+tok)
	agentLog := &testutil.Buffer{}
	agent.Stderr = agentLog
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		agent.Process.Kill()
		agent.Wait()
		if t.Failed() {
			t.Logf("agent log:\n%s", agentLog)
		}
	})
}

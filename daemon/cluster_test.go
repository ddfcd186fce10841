package daemon_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/daemon"
	"github.com/nasreach/nasreach/daemon/daemontest"
	"github.com/nasreach/nasreach/internal/etcdtest"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/link"
	"github.com/nasreach/nasreach/linkserver"
)

// TestForwardingNeedsTheMeshKeyLogsMaskedAndACleanStopLeavesDNSAtOnce:
// three nodes on etcd sharing one certificate, two with the cluster's mesh
// key. A client at node b reaches the agent on node a through the mesh and
// both nodes log the session with the client's address masked; with DDNS
// off the steering names are NXDOMAIN and a steered client falls back to
// its --server, which forwards; node c,
// with another key, is refused by node a and its client is told the device
// is offline; node a stopped cleanly withdraws its agent from the other
// nodes' DNS at once, not after its lease.
func TestForwardingNeedsTheMeshKeyLogsMaskedAndACleanStopLeavesDNSAtOnce(t *testing.T) {
	node, fp := linkCluster(t)
	const key = "the-mesh-key-of-this-cluster"
	a, b, c := node("a", key), node("b", key), node("c", "another-mesh-key-entirely")
	tok := a.AddDevice("nas1")
	echo := testutil.ListenTCP(t)
	testutil.Serve(t, echo, func(c net.Conn) { io.Copy(c, c) })
	relay := &daemontest.LinkRelay{Relay: a.Daemon.LinkRelay(), Fingerprint: fp}
	relay.StartAgent(t, link.AgentConfig{Device: "nas1", Token: tok, Expose: map[uint16]string{22: echo.Addr().String()},
		ServerTCP: "-", DisableDirect: true})
	linkName := "_link." + daemontest.FQDN("nas1")
	testutil.WaitFor(t, 5*time.Second, "node b's DNS to name node a", func() bool {
		return len(b.Query("udp", linkName, dns.TypeA).Answer) == 1
	})

	dialSteered := func(td *daemontest.Daemon, steer *link.Steer) (net.Conn, error) {
		d, err := link.NewDialer(link.DialerConfig{Server: td.Link, ServerTCP: "-", RelayFingerprint: fp, KnownDevices: "-",
			Listen: "127.0.0.1:0", DisableDirect: true, Steer: steer})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return d.Dial(ctx, "nas1", 22)
	}
	dial := func(td *daemontest.Daemon) (net.Conn, error) { return dialSteered(td, nil) }
	echoes := func(conn net.Conn) {
		t.Helper()
		if _, err := conn.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 4)
		if _, err := io.ReadFull(conn, got); err != nil || string(got) != "ping" {
			t.Fatalf("echo: %q, %v", got, err)
		}
		conn.Close()
	}
	conn, err := dial(b)
	if err != nil {
		t.Fatalf("through node b: %v", err)
	}
	echoes(conn)
	testutil.Scrape(t, b.Metrics+"/metrics", "nasreach_link_forwarded_sessions_total 1", "nasreach_link_mesh_connections 1")

	// DDNS off: the steering names are NXDOMAIN too, and a steered client
	// falls back to its --server, which forwards.
	if code, body := b.Do("PATCH", "/v1/devices/nas1", tok, map[string]bool{"ddns": false}); code != 200 {
		t.Fatalf("ddns off: %d %s", code, body)
	}
	testutil.WaitFor(t, 5*time.Second, "the steering name to be NXDOMAIN with DDNS off", func() bool {
		return b.Query("udp", linkName, dns.TypeA).Rcode == dns.RcodeNameError
	})
	conn, err = dialSteered(b, &link.Steer{Zone: daemontest.Zone, Resolver: b.DNS})
	if err != nil {
		t.Fatalf("steered, DDNS off, through node b: %v", err)
	}
	echoes(conn)
	testutil.Scrape(t, b.Metrics+"/metrics", "nasreach_link_forwarded_sessions_total 2")
	if code, body := b.Do("PATCH", "/v1/devices/nas1", tok, map[string]bool{"ddns": true}); code != 200 {
		t.Fatalf("ddns on: %d %s", code, body)
	}
	testutil.WaitFor(t, 5*time.Second, "the steering name to answer again", func() bool {
		return len(b.Query("udp", linkName, dns.TypeA).Answer) == 1
	})

	if _, err := dial(c); !errors.Is(err, link.ErrOffline) {
		t.Errorf("through node c, whose mesh key node a refuses: %v, want the device offline", err)
	}

	start := time.Now()
	a.Stop()
	testutil.WaitFor(t, 3*time.Second, "node b's DNS to drop node a's agent", func() bool {
		r := b.Query("udp", linkName, dns.TypeA)
		return r.Rcode == dns.RcodeSuccess && len(r.Answer) == 0
	})
	t.Logf("node a stopped cleanly: its agent left node b's DNS after %v (the lease is %v)", time.Since(start).Round(time.Millisecond), "5s")
	b.Stop()
	c.Stop()
	logA, logB := connlogText(t, a), connlogText(t, b)
	// However the session ended (the client's close may reach a node as a
	// reset), each node has one record of it, the client's address masked.
	sessionLine := func(log, detail string) bool {
		for line := range strings.SplitSeq(log, "\n") {
			if strings.Contains(line, `"kind":"session"`) && strings.Contains(line, `"device":"nas1","client":"127.0.0.0"`) &&
				strings.Contains(line, detail) {
				return true
			}
		}
		return false
	}
	if !sessionLine(logA, "forwarded by another node") {
		t.Errorf("node a (the agent's) logged no masked session for the forwarded client:\n%s", logA)
	}
	if !sessionLine(logB, "forwarded to node a") {
		t.Errorf("node b logged no masked session forwarded to node a:\n%s", logB)
	}
	for name, l := range map[string]string{"a": logA, "b": logB, "c": connlogText(t, c)} {
		if strings.Contains(l, "127.0.0.1") {
			t.Errorf("node %s's connection log holds an unmasked address:\n%s", name, l)
		}
	}
}

// linkCluster starts a one-member etcd and returns how to start a node of
// a Link cluster on it (in process, sharing one certificate, with the mesh
// key given) and the fingerprint clients pin.
func linkCluster(t *testing.T) (node func(name, meshKey string) *daemontest.Daemon, fp string) {
	t.Helper()
	bin := testutil.NeedTool(t, "etcd")
	cluster, err := etcdtest.Start(bin, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.Stop() })
	certDir := t.TempDir()
	certFile, keyFile := filepath.Join(certDir, "relay.crt"), filepath.Join(certDir, "relay.key")
	testutil.WriteCert(t, certFile, keyFile, "relay.example.net")
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return func(name, meshKey string) *daemontest.Daemon {
		return daemontest.Start(t, daemontest.WithLink, func(c *daemon.Config) {
			c.Store = daemon.StoreConfig{Backend: "etcd", EtcdEndpoints: cluster.Endpoints, EtcdPrefix: "/mesh"}
			c.Cluster = daemon.ClusterConfig{NodeName: name, MeshKey: meshKey}
			c.CertFile, c.KeyFile = certFile, keyFile
		})
	}, linkserver.Fingerprint(cert.Leaf)
}

// TestAnAgentThatMovedIsClosedOnItsOldNode: an agent whose NAS reconnected
// to another node (its old connection still up, as after a network change)
// is closed on the old node, as a newer agent on one relay closes the
// older, so that clients reaching the old node are forwarded to the new.
func TestAnAgentThatMovedIsClosedOnItsOldNode(t *testing.T) {
	node, fp := linkCluster(t)
	a, b := node("a", "the-mesh-key-of-this-cluster"), node("b", "the-mesh-key-of-this-cluster")
	tok := a.AddDevice("nas1")
	expose := map[uint16]string{22: "127.0.0.1:9"}
	old := (&daemontest.LinkRelay{Relay: a.Daemon.LinkRelay(), Fingerprint: fp}).StartAgent(t, link.AgentConfig{
		Device: "nas1", Token: tok, Expose: expose, ServerTCP: "-", DisableDirect: true,
		MinBackoff: time.Minute, MaxBackoff: time.Minute, // it must not come back during the test
	})
	port := func(td *daemontest.Daemon) string { _, p, _ := net.SplitHostPort(td.Link); return p }
	named := func(on, holder *daemontest.Daemon) bool {
		r := on.Query("tcp", "_nasreach-link._udp."+daemontest.FQDN("nas1"), dns.TypeSRV)
		return len(r.Answer) == 1 && strconv.Itoa(int(r.Answer[0].(*dns.SRV).Port)) == port(holder)
	}
	testutil.WaitFor(t, 5*time.Second, "DNS to name node a", func() bool { return named(b, a) })
	(&daemontest.LinkRelay{Relay: b.Daemon.LinkRelay(), Fingerprint: fp}).StartAgent(t, link.AgentConfig{
		Device: "nas1", Token: tok, Expose: expose, ServerTCP: "-", DisableDirect: true,
	})
	testutil.WaitFor(t, 5*time.Second, "node a to close the older agent", func() bool {
		return a.Daemon.LinkRelay().Agents() == 0
	})
	if err := old.LastError(); err == nil || !strings.Contains(err.Error(), "another agent for this device connected") {
		t.Errorf("the older agent's connection ended with %v, want replaced", err)
	}
	testutil.WaitFor(t, 5*time.Second, "DNS on both nodes to name node b", func() bool { return named(a, b) && named(b, b) })
	if n := b.Daemon.LinkRelay().Agents(); n != 1 {
		t.Errorf("node b holds %d agents, want the newer one", n)
	}
}

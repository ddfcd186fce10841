package daemon_test

// Nodes on a real three-member etcd cluster (internal/etcdtest): what a
// change on one node does on the others, what losing members does, and a
// node whose watch falls behind a compaction.

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/daemon"
	"github.com/nasreach/nasreach/daemon/daemontest"
	"github.com/nasreach/nasreach/dnsserver"
	"github.com/nasreach/nasreach/internal/etcdtest"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/store"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// startEtcd starts an etcd cluster of n members, stopped when the test
// ends (after the daemons, which stop first).
func startEtcd(t *testing.T, n int) *etcdtest.Cluster {
	t.Helper()
	c, err := etcdtest.Start(testutil.NeedTool(t, "etcd"), n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Stop() })
	return c
}

// onEtcd keeps the daemon's device table in etcd at endpoints, under the
// test's prefix.
func onEtcd(endpoints ...string) func(*daemon.Config) {
	return func(c *daemon.Config) {
		c.Store = daemon.StoreConfig{Backend: "etcd", EtcdEndpoints: endpoints, EtcdPrefix: "/cluster"}
	}
}

// etcdClient is a client of the cluster for what the test does to etcd
// itself (compaction, listing keys).
func etcdClient(t *testing.T, endpoints ...string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// TestSecondaryOfANodeBehindACompactionIsNotLeftStale: node b, which
// talks to one etcd member only, is cut off while node a changes a device
// and the cluster compacts its history. When the member returns, b's watch
// either cannot resume and reloads the table, or resumes with events that
// lack the values they replaced; either way no IXFR delta can bring b's
// Knot secondary up to date, so b's IXFR history starts afresh, Knot is
// sent a NOTIFY and transfers the zone as it is now (before the reload
// hooks, it kept the old address beside the new one).
func TestSecondaryOfANodeBehindACompactionIsNotLeftStale(t *testing.T) {
	testutil.NeedTool(t, "knotd")
	c := startEtcd(t, 3)
	key, err := dnsserver.ParseKey(testKeyName + ":hmac-sha256:" + testKeySecret)
	if err != nil {
		t.Fatal(err)
	}
	knotAddr := uniqueLoopback(t)
	b := daemontest.Start(t, onEtcd(c.Endpoints[2]), func(cfg *daemon.Config) {
		cfg.Transfer.Secondaries = []dnsserver.Secondary{{Addr: netip.AddrPortFrom(knotAddr, secondaryPort)}}
		cfg.Transfer.TSIGKeys = []dnsserver.Key{key}
	})
	a := daemontest.Start(t, onEtcd(c.Endpoints[:2]...))
	knot := startSecondary(t, "knot", netip.MustParseAddrPort(b.DNS), knotAddr)
	host := daemontest.FQDN("nas1")
	tok := a.AddDevice("nas1")
	a.DynDNS2("nas1", tok, host, "192.0.2.1", "good 192.0.2.1")
	knot.waitWithin(20*time.Second, time.Now(), "nas1 at 192.0.2.1 through node b", host, dns.TypeA, hasA("192.0.2.1"))

	if err := c.StopMember(2); err != nil {
		t.Fatal(err)
	}
	a.DynDNS2("nas1", tok, host, "192.0.2.2", "good 192.0.2.2")
	cli := etcdClient(t, c.Endpoints[:2]...)
	ctx := context.Background()
	resp, err := cli.Get(ctx, "any")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // Knot acts on a NOTIFY only a whole second after its last refresh (secondary_test.go)
	start := time.Now()
	if err := c.StartMember(2); err != nil {
		t.Fatal(err)
	}
	d := knot.waitWithin(20*time.Second, start, "nas1 at 192.0.2.2 after node b's reload", host, dns.TypeA, hasA("192.0.2.2"))
	t.Logf("member back to Knot answering the change made while node b was cut off: %v", d)
	if got, want := knot.serial(), a.Daemon.Store().Serial(); got != want {
		t.Errorf("Knot's serial %d, the cluster's %d", got, want)
	}
}

// TestNodesShareATLSClusterWithClientCertificates: the members serve
// clients over TLS and accept only certificates their CA signed; two
// nodes given --etcd-cert, --etcd-key and --etcd-ca share the table, and
// a client without a certificate is refused.
func TestNodesShareATLSClusterWithClientCertificates(t *testing.T) {
	c, err := etcdtest.StartTLS(testutil.NeedTool(t, "etcd"), 3)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Stop() })
	withCerts := func(cfg *daemon.Config) {
		cfg.Store = daemon.StoreConfig{Backend: "etcd", EtcdEndpoints: c.Endpoints, EtcdPrefix: "/tls",
			EtcdCert: c.TLS.ClientCert, EtcdKey: c.TLS.ClientKey, EtcdCA: c.TLS.CA}
	}
	a, b := daemontest.Start(t, withCerts), daemontest.Start(t, withCerts)
	tok := a.AddDevice("nas1")
	a.DynDNS2("nas1", tok, daemontest.FQDN("nas1"), "203.0.113.21", "good 203.0.113.21")
	want := netip.MustParseAddr("203.0.113.21")
	testutil.WaitFor(t, 5*time.Second, "node b to answer over the TLS cluster", func() bool {
		return daemontest.CheckAnswer(b.Query("udp", daemontest.FQDN("nas1"), dns.TypeA), dns.TypeA, want) == nil
	})

	_, err = store.OpenEtcd(store.Config{SweepEvery: -1}, store.EtcdConfig{Endpoints: c.Endpoints, Prefix: "/tls", CAFile: c.TLS.CA, DialTimeout: time.Second})
	if err == nil {
		t.Fatal("a client without a certificate opened the table")
	}
	t.Logf("without a client certificate: %v", err)
}

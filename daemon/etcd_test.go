package daemon_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/daemon"
	"github.com/nasreach/nasreach/daemon/daemontest"
	"github.com/nasreach/nasreach/internal/testutil"
)

// TestTwoNodesOnEtcdAnswerForEachOther: two daemons share one device table
// in etcd; a device registered and updated through one resolves on the
// other, which learns of it through its watch.
func TestTwoNodesOnEtcdAnswerForEachOther(t *testing.T) {
	a, b := startTwoNodesOnEtcd(t)
	tok := a.AddDevice("nas1")
	a.DynDNS2("nas1", tok, daemontest.FQDN("nas1"), "203.0.113.1", "good 203.0.113.1")
	want := netip.MustParseAddr("203.0.113.1")
	testutil.WaitFor(t, 5*time.Second, "node b to answer with the address node a took", func() bool {
		return daemontest.CheckAnswer(b.Query("udp", daemontest.FQDN("nas1"), dns.TypeA), dns.TypeA, want) == nil
	})
	if sa, sb := a.Daemon.Store().Serial(), b.Daemon.Store().Serial(); sa != sb {
		t.Errorf("zone serials differ: node a %d, node b %d", sa, sb)
	}
	// The token works on the other node: updates may go to either.
	b.DynDNS2("nas1", tok, daemontest.FQDN("nas1"), "198.51.100.2", "good 198.51.100.2")
	testutil.WaitFor(t, 5*time.Second, "node a to answer with the address node b took", func() bool {
		return daemontest.CheckAnswer(a.Query("udp", daemontest.FQDN("nas1"), dns.TypeA), dns.TypeA, netip.MustParseAddr("198.51.100.2")) == nil
	})
}

// startTwoNodesOnEtcd starts a one-member etcd cluster and two daemons
// sharing their device table in it; the cluster stops after them.
func startTwoNodesOnEtcd(t *testing.T) (a, b *daemontest.Daemon) {
	t.Helper()
	cluster := startEtcd(t, 1) // stopped after both daemons
	onEtcd := func(c *daemon.Config) {
		c.Store = daemon.StoreConfig{Backend: "etcd", EtcdEndpoints: cluster.Endpoints, EtcdPrefix: "/twonodes"}
	}
	return daemontest.Start(t, onEtcd), daemontest.Start(t, onEtcd)
}

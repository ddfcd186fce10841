package store

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/testutil"
)

// TestPresenceFollowsAgentsAcrossNodes: an agent recorded on node a is seen
// by node b; recorded on b since, a's withdrawal leaves b's record alone;
// and when a node dies without withdrawing, its records expire with its
// lease.
func TestPresenceFollowsAgentsAcrossNodes(t *testing.T) {
	prefix := etcdPrefix(t, "")
	a := openEtcdAt(t, Config{}, prefix)
	b := openEtcdAt(t, Config{}, prefix)
	selfA := Holder{Node: "a", Addrs: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:7443"), netip.MustParseAddrPort("[2001:db8::1]:7443")}}
	selfB := Holder{Node: "b", Addrs: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.2:7443")}}
	pa, err := a.NewPresence(PresenceConfig{Self: selfA, TTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer pa.Close()
	pb, err := b.NewPresence(PresenceConfig{Self: selfB})
	if err != nil {
		t.Fatal(err)
	}
	defer pb.Close()
	holder := func(p *Presence, device string) string {
		h, ok := p.Holder(device)
		if !ok {
			return ""
		}
		return h.Node
	}

	pa.Online("nas1")
	testutil.WaitFor(t, 5*time.Second, "node b to see nas1 on node a", func() bool { return holder(pb, "nas1") == "a" })
	if h, _ := pb.Holder("nas1"); len(h.Addrs) != 2 || h.Addrs[1] != selfA.Addrs[1] {
		t.Errorf("node b sees nas1 at %v, want node a's addresses %v", h.Addrs, selfA.Addrs)
	}
	pa.Offline("nas1")
	testutil.WaitFor(t, 5*time.Second, "nas1 to be offline everywhere", func() bool {
		return holder(pa, "nas1") == "" && holder(pb, "nas1") == ""
	})

	// The agent moves: a's late withdrawal must not remove b's record.
	pa.Online("nas2")
	testutil.WaitFor(t, 5*time.Second, "nas2 on node a", func() bool { return holder(pb, "nas2") == "a" })
	pb.Online("nas2")
	testutil.WaitFor(t, 5*time.Second, "nas2 on node b", func() bool { return holder(pa, "nas2") == "b" })
	pa.Offline("nas2")
	pa.Online("nas3") // a write after the withdrawal, to know it was made
	testutil.WaitFor(t, 5*time.Second, "nas3 on node a", func() bool { return holder(pb, "nas3") == "a" })
	if got := holder(pb, "nas2"); got != "b" {
		t.Errorf("after node a withdrew its old record nas2 is on %q, want b", got)
	}

	// Node a dies: its lease is no longer renewed and its records go.
	start := time.Now()
	a.Close() // the client goes; the presence cannot renew or revoke
	testutil.WaitFor(t, 10*time.Second, "node a's records to expire", func() bool { return holder(pb, "nas3") == "" })
	t.Logf("a dead node's agent left the presence %v after it died (lease 2s)", time.Since(start).Round(10*time.Millisecond))
	if holder(pb, "nas2") != "b" {
		t.Error("node b's own record went with node a's lease")
	}
}

// TestPresenceRecordsManyAgentsAtOnce: a node taking over more agents than
// one transaction holds (its peer died) records them all, and withdraws
// them all.
func TestPresenceRecordsManyAgentsAtOnce(t *testing.T) {
	_, _, pa, pb := twoNodes(t)
	const n = 2*presenceBatch + 50
	start := time.Now()
	for i := range n {
		pa.Online(fmt.Sprintf("nas%d", i))
	}
	testutil.WaitFor(t, 10*time.Second, "node b to see every agent on node a", func() bool { return pb.Len() == n })
	t.Logf("%d agents recorded and seen on the other node in %v", n, time.Since(start).Round(time.Millisecond))
	for i := range n {
		pa.Offline(fmt.Sprintf("nas%d", i))
	}
	testutil.WaitFor(t, 10*time.Second, "node b to see them all gone", func() bool { return pb.Len() == 0 })
}

// TestPresenceRecordsAgainAfterItsLeaseIsLost: a lease that expired while
// the node lived (etcd out of reach for longer than the TTL) took the
// node's records with it; the node takes a new lease and records its
// agents again.
func TestPresenceRecordsAgainAfterItsLeaseIsLost(t *testing.T) {
	_, b, pa, pb := twoNodes(t)
	prefix := b.prefix
	pa.Online("nas1")
	testutil.WaitFor(t, 5*time.Second, "nas1 on node a", func() bool { _, ok := pb.Holder("nas1"); return ok })
	pa.mu.Lock()
	lease := pa.lease
	pa.mu.Unlock()
	if _, err := b.cli.Revoke(t.Context(), lease); err != nil { // as its expiry would
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, "node a to record nas1 again under a new lease", func() bool {
		pa.mu.Lock()
		now := pa.lease
		pa.mu.Unlock()
		resp, err := b.cli.Get(t.Context(), prefix+etcdLink+"nas1")
		return err == nil && now != lease && len(resp.Kvs) == 1 && resp.Kvs[0].Lease == int64(now)
	})
	testutil.WaitFor(t, 5*time.Second, "node b to see nas1 on node a", func() bool { h, ok := pb.Holder("nas1"); return ok && h.Node == "a" })
}

// TestPresenceRefusesANodeNameInUse: a second node under a running node's
// name is refused, naming the setting; once that node has died (its lease
// expired) the name can be taken, as by the same node restarted.
func TestPresenceRefusesANodeNameInUse(t *testing.T) {
	prefix := etcdPrefix(t, "")
	a, b := openEtcdAt(t, Config{}, prefix), openEtcdAt(t, Config{}, prefix)
	pa, err := a.NewPresence(PresenceConfig{Self: Holder{Node: "fra1"}, TTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer pa.Close()
	if _, err := b.NewPresence(PresenceConfig{Self: Holder{Node: "fra1"}, TTL: 2 * time.Second}); err == nil || !strings.Contains(err.Error(), `node-name "fra1" is in use`) {
		t.Fatalf("a second node named fra1: %v, want refused", err)
	}
	a.Close() // node a dies: nothing renews or revokes its lease
	start := time.Now()
	pb, err := b.NewPresence(PresenceConfig{Self: Holder{Node: "fra1"}, TTL: 2 * time.Second})
	if err != nil {
		t.Fatalf("fra1 again after the first died: %v", err)
	}
	defer pb.Close()
	t.Logf("the name of a dead node was free again after %v (lease 2s)", time.Since(start).Round(10*time.Millisecond))
}

// twoNodes opens two nodes on one table, each with its presence (a, b),
// closed when the test ends.
func twoNodes(t *testing.T) (a, b *Etcd, pa, pb *Presence) {
	t.Helper()
	prefix := etcdPrefix(t, "")
	a, b = openEtcdAt(t, Config{}, prefix), openEtcdAt(t, Config{}, prefix)
	for _, n := range []struct {
		s    *Etcd
		p    **Presence
		name string
	}{{a, &pa, "a"}, {b, &pb, "b"}} {
		p, err := n.s.NewPresence(PresenceConfig{Self: Holder{Node: n.name, Addrs: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:7443")}}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		*n.p = p
	}
	return a, b, pa, pb
}

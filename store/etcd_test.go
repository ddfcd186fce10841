package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"iter"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/etcdtest"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/rs/zerolog"
)

// sharedEtcd is the one-member etcd the behaviour tests share, started by
// the first test that needs it and stopped by TestMain. Each test's Backend
// has a key prefix of its own, derived from Config.Dir, so tests do not see
// each other's devices and reopening with the same Dir finds its data.
var sharedEtcd struct {
	once    sync.Once
	cluster *etcdtest.Cluster
	err     error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if sharedEtcd.cluster != nil {
		if err := sharedEtcd.cluster.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop etcd:", err)
		}
	}
	os.Exit(code)
}

// etcdEndpoints returns the shared etcd's endpoints, starting it first;
// without the etcd program the test skips (fails under CI).
func etcdEndpoints(t *testing.T) []string {
	t.Helper()
	bin := testutil.NeedTool(t, "etcd")
	sharedEtcd.once.Do(func() { sharedEtcd.cluster, sharedEtcd.err = etcdtest.Start(bin, 1) })
	if sharedEtcd.err != nil {
		t.Fatal(sharedEtcd.err)
	}
	return sharedEtcd.cluster.Endpoints
}

// openEtcd opens an Etcd Backend on the shared etcd, under a prefix named
// after cfg.Dir (a fresh one when empty), and closes it when the test ends.
func openEtcd(t *testing.T, cfg Config) Backend {
	t.Helper()
	return openEtcdAt(t, cfg, etcdPrefix(t, cfg.Dir))
}

func etcdPrefix(t *testing.T, dir string) string {
	if dir == "" {
		dir = t.TempDir()
	}
	h := sha256.Sum256([]byte(dir))
	return "/test/" + hex.EncodeToString(h[:8])
}

func openEtcdAt(t *testing.T, cfg Config, prefix string) *Etcd {
	t.Helper()
	s, err := OpenEtcd(cfg, EtcdConfig{Endpoints: etcdEndpoints(t), Prefix: prefix})
	if err != nil {
		t.Fatalf("OpenEtcd: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// TestWriteOnOneNodeShowsInTheOthersIndex: two nodes on one table; each
// sees the other's changes in Lookup, with the observers called and the
// serial following, through the watch.
func TestWriteOnOneNodeShowsInTheOthersIndex(t *testing.T) {
	prefix := etcdPrefix(t, "")
	a := openEtcdAt(t, Config{}, prefix)
	b := openEtcdAt(t, Config{}, prefix)
	var mu sync.Mutex
	var seen []Change
	b.OnChange(func(c Change) {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, c)
	})
	ctx := context.Background()
	mustCreate(t, a, "nas1")
	if _, _, err := a.SetAddress(ctx, "nas1", AddressUpdate{IPv4: v4a}); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 5*time.Second, "node b's Lookup to show node a's address", func() bool {
		rec, ok := b.Lookup("nas1")
		return ok && rec.IPv4 == v4a
	})
	if a.Serial() != b.Serial() {
		t.Errorf("serials differ: a %d, b %d", a.Serial(), b.Serial())
	}
	if err := b.Delete(ctx, "nas1"); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 5*time.Second, "node a's Lookup to drop the device node b deleted", func() bool {
		_, ok := a.Lookup("nas1")
		return !ok && a.Serial() == b.Serial()
	})
	mu.Lock()
	defer mu.Unlock()
	kinds := []ChangeKind{}
	for _, c := range seen {
		kinds = append(kinds, c.Kind)
	}
	if fmt.Sprint(kinds) != fmt.Sprint([]ChangeKind{Created, Updated, Deleted}) {
		t.Errorf("node b observed %v, want Created, Updated, Deleted", kinds)
	}
}

// TestConcurrentUpdatesFromTwoNodesLoseNothing: two nodes change one
// device at once, each its own field; every acknowledged change is in the
// final record (compare-and-swap, retried on conflict), and both indexes
// agree with it.
func TestConcurrentUpdatesFromTwoNodesLoseNothing(t *testing.T) {
	prefix := etcdPrefix(t, "")
	a := openEtcdAt(t, Config{}, prefix)
	b := openEtcdAt(t, Config{}, prefix)
	ctx := context.Background()
	mustCreate(t, a, "nas1")
	var wg sync.WaitGroup
	var last4, last6 netip.Addr
	wg.Go(func() {
		for i := range 50 {
			ip := netip.AddrFrom4([4]byte{203, 0, 113, byte(i + 1)})
			if _, _, err := a.SetAddress(ctx, "nas1", AddressUpdate{IPv4: ip}); err != nil {
				t.Error(err)
				return
			}
			last4 = ip
		}
	})
	wg.Go(func() {
		for i := range 50 {
			ip := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(i + 1)})
			if _, _, err := b.SetAddress(ctx, "nas1", AddressUpdate{IPv6: ip}); err != nil {
				t.Error(err)
				return
			}
			last6 = ip
		}
	})
	wg.Wait()
	d, err := a.Get("nas1")
	if err != nil || d.IPv4 != last4 || d.IPv6 != last6 {
		t.Fatalf("Get = %v %v, %v; want %v and %v: an acknowledged write was lost", d.IPv4, d.IPv6, err, last4, last6)
	}
	for _, s := range []*Etcd{a, b} {
		testutil.WaitFor(t, 5*time.Second, "both indexes to agree with the record", func() bool {
			rec, ok := s.Lookup("nas1")
			return ok && rec.IPv4 == last4 && rec.IPv6 == last6 && s.Serial() == a.Serial()
		})
	}
}

// TestEtcdUnreachableFailsToOpen: a table whose cluster
// cannot be reached refuses to open, and says so.
func TestEtcdUnreachableFailsToOpen(t *testing.T) {
	testutil.NeedTool(t, "etcd")
	_, err := OpenEtcd(Config{}, EtcdConfig{Endpoints: []string{"unix://" + t.TempDir() + "/none:1"}, DialTimeout: 500 * time.Millisecond})
	if err == nil || !errors.Is(err, ErrUnavailable) {
		t.Fatalf("OpenEtcd of an unreachable cluster = %v, want ErrUnavailable", err)
	}
}

// TestQuorumLossFailsWritesButLookupsGoOn: with two of three members down,
// writes fail with ErrUnavailable while both nodes keep answering Lookup
// from memory; once the members are back, writes succeed and the other
// node catches up through its resumed watch.
func TestQuorumLossFailsWritesButLookupsGoOn(t *testing.T) {
	bin := testutil.NeedTool(t, "etcd")
	c, err := etcdtest.Start(bin, 3)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Stop() })
	open := func() *Etcd {
		s, err := OpenEtcd(Config{}, EtcdConfig{Endpoints: c.Endpoints, Prefix: "/quorum", DialTimeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
	a, b := open(), open()
	ctx := context.Background()
	mustCreate(t, a, "nas1")
	if _, _, err := a.SetAddress(ctx, "nas1", AddressUpdate{IPv4: v4a}); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 5*time.Second, "node b to see nas1", func() bool { rec, ok := b.Lookup("nas1"); return ok && rec.IPv4 == v4a })

	for _, i := range []int{1, 2} {
		if err := c.StopMember(i); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := a.SetAddress(ctx, "nas1", AddressUpdate{IPv4: v4b}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("SetAddress without quorum = %v, want ErrUnavailable", err)
	}
	if err := a.Ping(); err == nil {
		t.Error("Ping without quorum = nil, want an error")
	}
	if _, err := b.Authenticate("nas1", "whatever"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Authenticate without quorum = %v, want ErrUnavailable (not bad credentials)", err)
	}
	for _, s := range []*Etcd{a, b} {
		if rec, ok := s.Lookup("nas1"); !ok || (rec.IPv4 != v4a && rec.IPv4 != v4b) {
			t.Errorf("Lookup without quorum = %v, %v; want the last address known", rec, ok)
		}
	}

	for _, i := range []int{1, 2} {
		if err := c.StartMember(i); err != nil {
			t.Fatal(err)
		}
	}
	testutil.WaitFor(t, 20*time.Second, "the cluster to have a quorum again", func() bool { return a.Ping() == nil })
	v4c := netip.MustParseAddr("192.0.2.80")
	if _, _, err := a.SetAddress(ctx, "nas1", AddressUpdate{IPv4: v4c}); err != nil {
		t.Fatalf("SetAddress after quorum returned: %v", err)
	}
	testutil.WaitFor(t, 10*time.Second, "node b to catch up", func() bool {
		rec, ok := b.Lookup("nas1")
		return ok && rec.IPv4 == v4c && b.Serial() == a.Serial()
	})
}

// TestSweepsRunOnOneElectedNodeAndMoveWhenItStops: of two nodes on one
// table exactly one sweeps; when it stops, the other takes over.
func TestSweepsRunOnOneElectedNodeAndMoveWhenItStops(t *testing.T) {
	prefix := etcdPrefix(t, "")
	a := openEtcdAt(t, Config{SweepEvery: 20 * time.Millisecond}, prefix)
	b := openEtcdAt(t, Config{SweepEvery: 20 * time.Millisecond}, prefix)
	testutil.WaitFor(t, 10*time.Second, "one node to be elected sweeper", func() bool { return a.Sweeping() || b.Sweeping() })
	if a.Sweeping() && b.Sweeping() {
		t.Fatal("both nodes sweep")
	}
	leader, other := a, b
	if b.Sweeping() {
		leader, other = b, a
	}
	if err := leader.Close(); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, "the other node to take the sweeps over", other.Sweeping)
}

// TestNodeBehindACompactionReloads: a node cut off from the cluster while
// the others change the table and compact its history cannot resume its
// watch where it stopped; it reloads the table rather than miss changes,
// tells its observers each change the reload found (so Link and TURN drop
// a deleted device) and then its reload hooks (so the IXFR history starts
// afresh).
func TestNodeBehindACompactionReloads(t *testing.T) {
	bin := testutil.NeedTool(t, "etcd")
	c, err := etcdtest.Start(bin, 3)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Stop() })
	var logs testutil.Buffer
	open := func(endpoints ...string) *Etcd {
		s, err := OpenEtcd(Config{SweepEvery: -1, Logger: zerolog.New(&logs)}, EtcdConfig{Endpoints: endpoints, Prefix: "/compacted", DialTimeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
	a, b := open(c.Endpoints[0]), open(c.Endpoints[2]) // b talks to member 2 only
	ctx := context.Background()
	mustCreate(t, a, "nas1")
	mustCreate(t, a, "gone")
	testutil.WaitFor(t, 5*time.Second, "node b to see both devices", func() bool { return b.Len() == 2 })
	var mu sync.Mutex
	var seen []string
	reloads := 0
	b.OnChange(func(c Change) {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, fmt.Sprintf("%d %s %v", c.Kind, c.Device.Name, c.Device.IPv4))
	})
	b.OnReload(func() {
		mu.Lock()
		defer mu.Unlock()
		reloads++
		seen = append(seen, "reload")
	})

	if err := c.StopMember(2); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.SetAddress(ctx, "nas1", AddressUpdate{IPv4: v4a}); err != nil {
		t.Fatal(err)
	}
	if err := a.Delete(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	resp, err := a.cli.Get(ctx, "any")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.cli.Compact(ctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	if err := c.StartMember(2); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 20*time.Second, "node b to reload what it missed", func() bool {
		rec, ok := b.Lookup("nas1")
		_, gone := b.Lookup("gone")
		return ok && rec.IPv4 == v4a && !gone && b.Serial() == a.Serial()
	})
	if !strings.Contains(logs.String(), "compaction") {
		t.Errorf("node b caught up without a reload; log:\n%s", logs.String())
	}
	testutil.WaitFor(t, 5*time.Second, "node b's reload hook", func() bool { mu.Lock(); defer mu.Unlock(); return reloads > 0 })
	mu.Lock()
	defer mu.Unlock()
	// Either the watch reloads, or it resumes across the compaction with
	// events that lack the values they replaced; either way the observers
	// learn both changes, and a reload hook follows them.
	want := []string{fmt.Sprintf("%d nas1 %v", Updated, v4a), fmt.Sprintf("%d gone invalid IP", Deleted)}
	last := -1
	for _, w := range want {
		i := slices.Index(seen, w)
		if i < 0 {
			t.Errorf("node b's observers saw %q, without %q", seen, w)
		}
		last = max(last, i)
	}
	if !slices.Contains(seen[last+1:], "reload") {
		t.Errorf("node b's observers saw %q: no reload hook after the changes", seen)
	}
}

// TestZoneSnapshotReadsPagesAtOneRevision: a transfer reads the table a
// page at a time, so that it never holds it twice; every page comes from the
// revision of the serial, so changes committed between two pages (an
// address moved, a device deleted, one added) show in none of them.
func TestZoneSnapshotReadsPagesAtOneRevision(t *testing.T) {
	s := openEtcdAt(t, Config{}, etcdPrefix(t, ""))
	s.zonePage = 2
	ctx := context.Background()
	var want []string
	for i := range 7 {
		name := fmt.Sprintf("nas%d", i)
		mustCreate(t, s, name)
		if _, _, err := s.SetAddress(ctx, name, AddressUpdate{IPv4: v4a}); err != nil {
			t.Fatal(err)
		}
		want = append(want, name)
	}
	serial := s.Serial()
	var got []string
	err := s.ZoneSnapshot(func(snap uint32, devices iter.Seq2[string, Record]) error {
		if snap != serial {
			t.Errorf("snapshot serial %d, want %d", snap, serial)
		}
		for name, rec := range devices {
			got = append(got, name)
			if rec.IPv4 != v4a {
				t.Errorf("%s: %v in the snapshot, want %v as at its serial", name, rec.IPv4, v4a)
			}
			if name == "nas1" { // in the first page; the writes land in later ones
				if _, _, err := s.SetAddress(ctx, "nas4", AddressUpdate{IPv4: v4b}); err != nil {
					t.Fatal(err)
				}
				if err := s.Delete(ctx, "nas6"); err != nil {
					t.Fatal(err)
				}
				mustCreate(t, s, "nas5a")
				if _, _, err := s.SetAddress(ctx, "nas5a", AddressUpdate{IPv4: v4a}); err != nil {
					t.Fatal(err)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("snapshot lists %v, want %v (the table at its serial)", got, want)
	}
	if r, _ := s.Lookup("nas4"); r.IPv4 != v4b {
		t.Errorf("the write made during the snapshot did not land: nas4 is %v", r.IPv4)
	}
}

// TestRefusedClientCertificateIsNamed: a cluster that wants client
// certificates and gets none makes Open fail saying so, not only with the
// etcd client's "context deadline exceeded".
func TestRefusedClientCertificateIsNamed(t *testing.T) {
	c, err := etcdtest.StartTLS(testutil.NeedTool(t, "etcd"), 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop() })
	_, err = OpenEtcd(Config{}, EtcdConfig{Endpoints: c.Endpoints, CAFile: c.TLS.CA, DialTimeout: 2 * time.Second})
	if err == nil {
		t.Fatal("opened a cluster that wants a client certificate without one")
	}
	if !strings.Contains(err.Error(), "refused this node: this node sent no client certificate (set --etcd-cert and --etcd-key)") {
		t.Errorf("error does not name the missing client certificate: %v", err)
	}
	t.Logf("the operator reads: %v", err)
	s, err := OpenEtcd(Config{}, EtcdConfig{Endpoints: c.Endpoints, CAFile: c.TLS.CA, CertFile: c.TLS.ClientCert, KeyFile: c.TLS.ClientKey})
	if err != nil {
		t.Fatalf("with the client certificate: %v", err)
	}
	s.Close()
}

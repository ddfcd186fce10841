package main

// `nasreach backup` of a node on etcd, and the two ways back: a bbolt
// daemon on the snapshot, and `nasreach store import` into etcd.

import (
	"bytes"
	"context"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/daemon"
	"github.com/nasreach/nasreach/daemon/daemontest"
	"github.com/nasreach/nasreach/internal/etcdtest"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/store"
)

// TestEtcdBackupRestoresToBboltAndImportsBackIntoEtcd: nasreach backup of
// a node on etcd writes the day's snapshot (a second one the same day
// beside it), store check finds it sound, a bbolt daemon started on it
// answers as the cluster did, and store import puts it into an empty etcd
// prefix where a node on it answers the same and takes the old token.
func TestEtcdBackupRestoresToBboltAndImportsBackIntoEtcd(t *testing.T) {
	cluster, err := etcdtest.Start(testutil.NeedTool(t, "etcd"), 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.Stop() })
	onEtcd := func(prefix string) func(*daemon.Config) {
		return func(c *daemon.Config) {
			c.Store = daemon.StoreConfig{Backend: "etcd", EtcdEndpoints: cluster.Endpoints, EtcdPrefix: prefix}
		}
	}
	node := daemontest.Start(t, onEtcd("/live"))
	token := node.AddDevice("nas1")
	node.DynDNS2("nas1", token, daemontest.FQDN("nas1"), "198.51.100.62", "good 198.51.100.62")
	want := netip.MustParseAddr("198.51.100.62")

	out := t.TempDir()
	run := func(args ...string) string {
		t.Helper()
		var stdout bytes.Buffer
		if err := newApp(&stdout, &stdout).Run(context.Background(), append([]string{"nasreach"}, args...)); err != nil {
			t.Fatalf("nasreach %s: %v\n%s", strings.Join(args, " "), err, stdout.String())
		}
		return stdout.String()
	}
	for range 2 {
		run("backup", "--server", node.HTTP, "--admin-token", node.Admin, "--out", out)
	}
	day := "nasreach-" + time.Now().UTC().Format(time.DateOnly)
	snap := filepath.Join(out, day+".db")
	if _, err := os.Stat(filepath.Join(out, day+".2.db")); err != nil {
		t.Errorf("the second snapshot of the day: %v", err)
	}
	if got := run("store", "check", "--db", snap); !strings.Contains(got, "is sound: 1 devices") {
		t.Errorf("store check of the snapshot: %s", got)
	}

	restored := t.TempDir()
	b, err := os.ReadFile(snap)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(restored, store.FileName), b, 0o600); err != nil {
		t.Fatal(err)
	}
	onBbolt := daemontest.Start(t, func(c *daemon.Config) { c.DataDir = restored })
	onBbolt.WantAnswer("udp", daemontest.FQDN("nas1"), dns.TypeA, want)
	if code, _ := onBbolt.Do(http.MethodGet, "/v1/devices/nas1", token, nil); code != http.StatusOK {
		t.Errorf("the device's token on the bbolt daemon: HTTP %d", code)
	}

	got := run("store", "import", "--db", snap, "--etcd-endpoints", cluster.Endpoints[0], "--etcd-prefix", "/restored")
	if !strings.Contains(got, "1 devices") {
		t.Errorf("store import said: %s", got)
	}
	back := daemontest.Start(t, onEtcd("/restored"))
	back.WantAnswer("udp", daemontest.FQDN("nas1"), dns.TypeA, want)
	back.DynDNS2("nas1", token, daemontest.FQDN("nas1"), "198.51.100.63", "good 198.51.100.63")
	if s1, s2 := back.Daemon.Store().Serial(), node.Daemon.Store().Serial(); s1 != s2+1 {
		t.Errorf("serial after import and one update = %d, want the cluster's %d + 1", s1, s2)
	}

	var stdout bytes.Buffer
	err = newApp(&stdout, &stdout).Run(context.Background(), []string{"nasreach", "store", "import", "--db", snap,
		"--etcd-endpoints", cluster.Endpoints[0], "--etcd-prefix", "/live"})
	if err == nil || !strings.Contains(err.Error(), "empty prefix") {
		t.Errorf("import into the live prefix = %v, want a refusal", err)
	}
}

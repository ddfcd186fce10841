package daemon_test

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nasreach/nasreach/daemon"
	"github.com/nasreach/nasreach/daemon/daemontest"
	"github.com/nasreach/nasreach/store"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// etcdQuota is etcd's default backend quota (--quota-backend-bytes).
const etcdQuota = 2 << 30

// dbInUse compacts the cluster's history, defragments member 0 and
// returns the bytes its database holds in use: the table with no history.
func dbInUse(t *testing.T, cli *clientv3.Client, endpoint string) int64 {
	t.Helper()
	ctx := context.Background()
	resp, err := cli.Get(ctx, "any")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Defragment(ctx, endpoint); err != nil {
		t.Fatal(err)
	}
	st, err := cli.Status(ctx, endpoint)
	if err != nil {
		t.Fatal(err)
	}
	return st.DbSizeInUse
}

// TestBenchEtcd measures, on a three-member etcd cluster: the bytes a
// device takes in etcd (100,000 of them, so how many fit in etcd's default
// 2 GiB quota), the history an address update leaves until compaction,
// and durable dyndns2 updates a second from 32 clients spread over three
// nodes, beside one bbolt daemon taking the same load in the same run. It
// runs only under make bench-etcd (NASREACH_BENCH_ETCD=1).
func TestBenchEtcd(t *testing.T) {
	if os.Getenv("NASREACH_BENCH_ETCD") == "" {
		t.Skip("a benchmark: make bench-etcd runs it")
	}
	const (
		sizingDevices = 100_000
		devices       = 1000
		clients       = 32
		updates       = 4000
	)
	c := startEtcd(t, 3)
	cli := etcdClient(t, c.Endpoints...)
	before := dbInUse(t, cli, c.Endpoints[0])

	// Devices as a NAS has them (a token, both addresses, the agent's key,
	// a TSIG key): one made through the store, and its record copied under
	// other names and addresses, 100 keys a transaction.
	st, err := store.OpenEtcd(store.Config{SweepEvery: -1}, store.EtcdConfig{Endpoints: c.Endpoints, Prefix: "/sizing"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, _, err := st.Create(ctx, "model", store.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.SetAddress(ctx, "model", store.AddressUpdate{IPv4: netip.MustParseAddr("198.51.100.200"), IPv6: netip.MustParseAddr("2001:db8:1234:5678::200")}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.SetPublicKey(ctx, "model", "MCowBQYDK2VwAyEAu8W1rPq0gR2Yl3sN5vX9dT6zH4kJmQ7aBcDeFgHiJkL="); err != nil {
		t.Fatal(err)
	}
	if _, err := st.IssueTSIGKey(ctx, "model"); err != nil {
		t.Fatal(err)
	}
	model, err := cli.Get(ctx, "/sizing/devices/model")
	if err != nil || len(model.Kvs) != 1 {
		t.Fatalf("the model device: %v", err)
	}
	st.Close()
	record := string(model.Kvs[0].Value)
	var ops []clientv3.Op
	var raw int
	for i := range sizingDevices {
		name := fmt.Sprintf("nas%07d", i)
		v := strings.ReplaceAll(record, `"model"`, `"`+name+`"`)
		key := "/sizing/devices/" + name
		raw += len(key) + len(v)
		ops = append(ops, clientv3.OpPut(key, v))
		if len(ops) == 100 || i == sizingDevices-1 {
			if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
				t.Fatal(err)
			}
			ops = ops[:0]
		}
	}
	with := dbInUse(t, cli, c.Endpoints[0])
	perDevice := float64(with-before) / sizingDevices
	fmt.Printf("etcd bytes_per_device=%.0f keys_and_values_per_device=%d devices=%d quota_2GiB_devices=%.0f\n",
		perDevice, raw/sizingDevices, sizingDevices, etcdQuota/perDevice)

	// Three nodes on the cluster, one bbolt daemon beside them.
	trusted := func(cfg *daemon.Config) { cfg.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")} }
	nodes := startNodes(t, c, 3, trusted)
	alone := daemontest.Start(t, trusted)
	tokens, aloneTokens := make([]string, devices), make([]string, devices)
	for i := range devices {
		tokens[i] = nodes[i%3].AddDevice(fmt.Sprintf("bench%d", i))
		aloneTokens[i] = alone.AddDevice(fmt.Sprintf("bench%d", i))
	}
	httpc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients}, Timeout: 30 * time.Second}
	run := func(label string, bases []string, tokens []string) float64 {
		r := driveUpdates(t, clients, updates, func(client, n int) error {
			d := n % devices
			name := fmt.Sprintf("bench%d", d)
			ip := fmt.Sprintf("10.%d.%d.%d", n/62500, n/250%250, 1+n%250)
			code, body, err := daemontest.DynDNS2Update(context.Background(), httpc, bases[client%len(bases)], name, tokens[d], daemontest.FQDN(name), ip)
			if err != nil || code != http.StatusOK || body != "good "+ip+"\n" {
				return fmt.Errorf("dyndns2 update of %s: HTTP %d %q %v", name, code, body, err)
			}
			return nil
		})
		fmt.Printf("etcd update store=%s durable_updates_per_s=%.0f clients=%d updates=%d p50_ms=%.1f p99_ms=%.1f\n",
			label, r.rate, clients, updates, r.p50ms, r.p99ms)
		return r.rate
	}
	var bases []string
	for _, n := range nodes {
		bases = append(bases, n.HTTP)
	}
	resp, err := cli.Status(ctx, c.Endpoints[0])
	if err != nil {
		t.Fatal(err)
	}
	onEtcd := run("etcd-3-nodes", bases, tokens)
	after, err := cli.Status(ctx, c.Endpoints[0])
	if err != nil {
		t.Fatal(err)
	}
	onBbolt := run("bbolt-1-node", []string{alone.HTTP}, aloneTokens)
	fmt.Printf("etcd history_bytes_per_update=%.0f (until compaction)\n", float64(after.DbSizeInUse-resp.DbSizeInUse)/updates)
	fmt.Printf("etcd update etcd/bbolt=%.2f load=%q\n", onEtcd/onBbolt, loadavg())
}

package daemon_test

// The privacy promises (README "Privacy") across three nodes sharing one
// device table in a three-member etcd cluster.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/daemon/daemontest"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/store"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// erasureBound is how soon a change of what may be published must show
// on every node ("at once": the watch delivers it in milliseconds).
const erasureBound = 2 * time.Second

// etcdKeys returns every key under the nodes' prefix with its value.
func etcdKeys(t *testing.T, cli *clientv3.Client) map[string][]byte {
	t.Helper()
	resp, err := cli.Get(context.Background(), "/cluster/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, kv := range resp.Kvs {
		out[strings.TrimPrefix(string(kv.Key), "/cluster/")] = kv.Value
	}
	return out
}

// TestUnregisterErasesOnEveryNodeAtOnce: a device deleted through node 1
// is NXDOMAIN (its address and its ACME value) on nodes 2 and 3 at once,
// its token and TSIG key stop working there, and etcd keeps nothing of it
// but the quarantine of its name.
func TestUnregisterErasesOnEveryNodeAtOnce(t *testing.T) {
	c := startEtcd(t, 3)
	nodes := startNodes(t, c, 3)
	host := daemontest.FQDN("gone")
	token := nodes[0].AddDevice("gone")
	nodes[1].AddDevice("kept")
	if code, body := nodes[1].Do(http.MethodPut, "/v1/devices/gone/address", token, map[string]string{"ipv4": "198.51.100.23", "ipv6": "2001:db8:77::23"}); code != http.StatusOK {
		t.Fatalf("address: HTTP %d %s", code, body)
	}
	if _, _, err := nodes[2].Daemon.Store().AddAccessCode(context.Background(), "gone"); err != nil {
		t.Fatal(err)
	}
	challenge := strings.Repeat("G", 43)
	if code, body := nodes[2].Do(http.MethodPut, "/v1/devices/gone/acme-challenge", token, map[string][]string{"values": {challenge}}); code != http.StatusOK {
		t.Fatalf("acme challenge: HTTP %d %s", code, body)
	}
	key := nodes[1].IssueTSIGKey("gone", token)
	for i, n := range nodes {
		testutil.WaitFor(t, 5*time.Second, fmt.Sprintf("node %d to answer for the device", i+1), func() bool {
			return answers(n, host, netip.MustParseAddr("198.51.100.23"))
		})
	}

	start := time.Now()
	if code, _ := nodes[0].Do(http.MethodDelete, "/v1/devices/gone", token, nil); code != http.StatusNoContent {
		t.Fatalf("delete: HTTP %d", code)
	}
	for i, n := range nodes[1:] {
		d := within(t, start, erasureBound, fmt.Sprintf("NXDOMAIN on node %d", i+2), func() bool {
			return answers(n, host, netip.Addr{}) &&
				n.Query("udp", "_acme-challenge."+host, dns.TypeTXT).Rcode == dns.RcodeNameError
		})
		t.Logf("delete on node 1 to NXDOMAIN on node %d: %v", i+2, d)
		if code, _ := n.Do(http.MethodGet, "/v1/devices/gone", token, nil); code != http.StatusUnauthorized {
			t.Errorf("the deleted device's token on node %d: HTTP %d, want 401", i+2, code)
		}
		m := new(dns.Msg).SetUpdate(dns.Fqdn(daemontest.Zone))
		m.Insert([]dns.RR{&dns.A{Hdr: dns.RR_Header{Name: dns.Fqdn(host), Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: netip.MustParseAddr("192.0.2.66").AsSlice()}})
		if r, _ := n.Update("udp", key, m); r.Rcode != dns.RcodeNotAuth {
			t.Errorf("an update signed with the deleted device's TSIG key on node %d: %s, want NOTAUTH", i+2, dns.RcodeToString[r.Rcode])
		}
	}
	for k, v := range etcdKeys(t, etcdClient(t, c.Endpoints...)) {
		if strings.Contains(k, "gone") && k != "quarantine/gone" {
			t.Errorf("etcd still holds %s", k)
		}
		for _, needle := range []string{"198.51.100.23", "2001:db8:77::23", store.HashToken(token), challenge, key.Secret} {
			if strings.Contains(string(v), needle) {
				t.Errorf("etcd key %s still holds %q", k, needle)
			}
		}
	}
}

// TestDDNSOffHidesTheNameOnEveryNode: DDNS switched off through node 2
// makes the name NXDOMAIN on all three nodes at once, a node started
// afresh on the table hides it too, and switching it on again restores it
// everywhere.
func TestDDNSOffHidesTheNameOnEveryNode(t *testing.T) {
	c := startEtcd(t, 3)
	nodes := startNodes(t, c, 3)
	host := daemontest.FQDN("nas1")
	token := nodes[0].AddDevice("nas1")
	nodes[0].DynDNS2("nas1", token, host, "203.0.113.44", "good 203.0.113.44")
	ip := netip.MustParseAddr("203.0.113.44")

	start := time.Now()
	if code, body := nodes[1].Do(http.MethodPatch, "/v1/devices/nas1", token, map[string]any{"ddns": false}); code != http.StatusOK {
		t.Fatalf("ddns off: HTTP %d %s", code, body)
	}
	for i, n := range nodes {
		d := within(t, start, erasureBound, fmt.Sprintf("NXDOMAIN on node %d", i+1), func() bool { return answers(n, host, netip.Addr{}) })
		t.Logf("DDNS off on node 2 to NXDOMAIN on node %d: %v", i+1, d)
	}
	late := startNodes(t, c, 1)[0]
	if !answers(late, host, netip.Addr{}) {
		t.Error("a node started after DDNS went off answers for the device")
	}

	start = time.Now()
	if code, body := nodes[2].Do(http.MethodPatch, "/v1/devices/nas1", token, map[string]any{"ddns": true}); code != http.StatusOK {
		t.Fatalf("ddns on: HTTP %d %s", code, body)
	}
	for i, n := range append(nodes, late) {
		within(t, start, erasureBound, fmt.Sprintf("node %d to answer again", i+1), func() bool { return answers(n, host, ip) })
	}
}

// documentedEtcdKeys reads the README's table of what the etcd store
// keeps: the first path segment after the prefix of each key it lists.
func documentedEtcdKeys(t *testing.T) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	key := regexp.MustCompile("^\\| `<prefix>/([a-z]+)")
	for _, line := range strings.Split(whatWeStore(t), "\n") {
		if m := key.FindStringSubmatch(line); m != nil {
			out[m[1]] = true
		}
	}
	if len(out) == 0 {
		t.Fatal("the README's What we store section lists no etcd key (| `<prefix>/…` |)")
	}
	return out
}

// TestEtcdHoldsOnlyDocumentedKeys: after a whole lifecycle on three nodes
// (registrations, updates by dyndns2 and REST, switches, a public key, an
// access code, a TSIG key, an ACME value, a deletion, housekeeping
// elected), every key under the prefix is one the README's What we store
// table lists, and every field of a record stored there is a documented
// field of its bbolt counterpart.
func TestEtcdHoldsOnlyDocumentedKeys(t *testing.T) {
	c := startEtcd(t, 3)
	nodes := startNodes(t, c, 3)
	token := nodes[0].AddDevice("nas1")
	other := nodes[1].AddDevice("nas2")
	nodes[2].Do(http.MethodPost, "/v1/devices", nodes[2].Admin, map[string]string{"name": "fresh", "state": "uninitialized"})
	nodes[1].DynDNS2("nas1", token, daemontest.FQDN("nas1"), "198.51.100.9", "good 198.51.100.9")
	nodes[2].Do(http.MethodPatch, "/v1/devices/nas1", token, map[string]any{"ddns": false, "access": "token"})
	if _, err := nodes[0].Daemon.Store().SetPublicKey(context.Background(), "nas1", "MCowBQYDK2VwAyEAexample"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := nodes[1].Daemon.Store().AddAccessCode(context.Background(), "nas1"); err != nil {
		t.Fatal(err)
	}
	nodes[2].IssueTSIGKey("nas1", token)
	nodes[0].Do(http.MethodPut, "/v1/devices/nas1/acme-challenge", token, map[string][]string{"values": {strings.Repeat("D", 43)}})
	nodes[1].Do(http.MethodPut, "/v1/devices/nas2/address", other, nil)
	nodes[2].Do(http.MethodDelete, "/v1/devices/nas2", other, nil)
	testutil.WaitFor(t, 10*time.Second, "a node to be elected for housekeeping", func() bool {
		for _, n := range nodes {
			if n.Daemon.Store().(interface{ Sweeping() bool }).Sweeping() {
				return true
			}
		}
		return false
	})

	documented, fields := documentedEtcdKeys(t), documentedFields(t)
	bucketOf := map[string]string{"devices": "devices", "accesscodes": "access_codes"}
	kinds := map[string]int{}
	for k, v := range etcdKeys(t, etcdClient(t, c.Endpoints...)) {
		kind, _, _ := strings.Cut(k, "/")
		kinds[kind]++
		if !documented[kind] {
			t.Errorf("etcd key <prefix>/%s is not in the README's What we store table", k)
			continue
		}
		bucket, ok := bucketOf[kind]
		if !ok {
			continue
		}
		var rec map[string]json.RawMessage
		if err := json.Unmarshal(v, &rec); err != nil {
			t.Fatalf("etcd key %s: %v", k, err)
		}
		for field := range rec {
			if !fields[bucket+"."+field] {
				t.Errorf("field %q of etcd key %s is stored but not documented in the README (as %s.%s)", field, k, bucket, field)
			}
		}
	}
	for _, want := range []string{"devices", "accesscodes", "quarantine", "serial"} {
		if kinds[want] == 0 {
			t.Errorf("no %s key after the lifecycle: the test no longer covers it (keys by kind: %v)", want, kinds)
		}
	}
}

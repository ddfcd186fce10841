// Package natlab builds a small Internet out of Linux network namespaces for
// tests: an "internet" namespace where servers listen on public
// (documentation) addresses, and home networks behind NATs of the kinds UDP
// hole punching meets, named in RFC 4787's terms. Only tests import it; it
// needs root, ip(8) and nft(8). docs/NATLAB.md draws the topology and gives
// the address plan.
package natlab

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/nasreach/nasreach/internal/testutil"
	"golang.org/x/sys/unix"
)

// The internet namespace's own addresses, where a test's servers listen:
// two, so that a STUN server can answer from a second IP (RFC 5780) and a
// test can tell address-dependent from endpoint-independent behaviour.
var (
	InternetA = netip.MustParseAddr("203.0.113.1")
	InternetB = netip.MustParseAddr("198.51.100.1")
)

// namePrefix starts the name of every namespace a Lab creates, followed by
// the test process's PID: New removes those of processes that are gone.
const namePrefix = "nrlab-"

// labSeq numbers the labs of one process, so parallel tests do not collide.
var labSeq atomic.Int64

// Lab is one Internet in namespaces, deleted when the test ends.
type Lab struct {
	// Internet is the public network: a bridge (inet0) holding InternetA
	// and InternetB, to which every NAT's WAN side is plugged.
	Internet *Namespace

	t      testing.TB
	ipPath string
	prefix string // of every namespace name of this lab

	mu     sync.Mutex
	spaces []*Namespace // in creation order
	homes  int
	wans   int // NAT boxes plugged into the internet so far
}

// New builds the internet namespace and returns the Lab; AddHome adds home
// networks. Everything is deleted when the test ends, also when it fails.
// New skips the test when it does not run as root or when the kernel refuses
// to create a namespace; it first removes namespaces left by test processes
// that no longer exist (a crashed run).
func New(t testing.TB) *Lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("natlab: creating network namespaces needs root (CI runs make test as root)")
	}
	l := &Lab{
		t:      t,
		ipPath: testutil.NeedTool(t, "ip"),
		prefix: fmt.Sprintf("%s%d-%d-", namePrefix, os.Getpid(), labSeq.Add(1)),
	}
	testutil.NeedTool(t, "nft")
	l.removeStale()
	t.Cleanup(l.cleanup)

	inet, err := l.addNamespace("inet", InternetA)
	if errors.Is(err, errNoNamespace) {
		t.Skipf("natlab: %v", err)
	}
	if err != nil {
		t.Fatalf("natlab: build the internet: %v", err)
	}
	l.Internet = inet
	err = l.batch(inet,
		"link set lo up",
		addBridge("inet0"),
		"addr add "+InternetA.String()+"/24 dev inet0",
		"addr add "+InternetB.String()+"/24 dev inet0",
		"link set inet0 up",
	)
	if err != nil {
		t.Fatalf("natlab: build the internet: %v", err)
	}
	return l
}

// errNoNamespace means that ip could not create a network namespace (no
// CAP_SYS_ADMIN in a container, a kernel without them): New skips.
var errNoNamespace = errors.New("cannot create a network namespace here")

// addNamespace creates the namespace prefix+role, with IPv6 off (the lab
// is IPv4; no link-local chatter) and bridged frames kept out of netfilter
// even where br_netfilter is loaded (a home switch does not filter), then
// extra. The cleanup deletes it from the moment it exists.
func (l *Lab) addNamespace(role string, addr netip.Addr, extra ...setting) (*Namespace, error) {
	name := l.prefix + role
	if out, err := exec.Command(l.ipPath, "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("%w: ip netns add %s: %v: %s", errNoNamespace, name, err, bytes.TrimSpace(out))
	}
	ns := &Namespace{Name: name, Addr: addr, ipPath: l.ipPath, fd: -1}
	l.spaces = append(l.spaces, ns)
	fd, err := unix.Open(netnsDir+"/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open namespace %s: %w", name, err)
	}
	ns.fd = fd
	settings := append([]setting{
		{key: "net/ipv6/conf/all/disable_ipv6", value: "1", optional: true}, // absent when booted with ipv6.disable=1
		{key: "net/ipv6/conf/default/disable_ipv6", value: "1", optional: true},
		{key: "net/bridge/bridge-nf-call-iptables", value: "0", optional: true},
	}, extra...)
	if err := ns.configure(settings...); err != nil {
		return nil, err
	}
	return ns, nil
}

// batch runs ip commands in ns, one a line, in one ip process.
func (l *Lab) batch(ns *Namespace, lines ...string) error {
	cmd := exec.Command(l.ipPath, "-n", ns.Name, "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ip -n %s -batch: %v: %s", ns.Name, err, bytes.TrimSpace(out))
	}
	return nil
}

// ifindexSeq numbers the links this process creates; see nextIfindex.
var ifindexSeq atomic.Int64

// nextIfindex returns an interface index for a new link, unique in this
// process and, with high probability, among all processes. Every link of a
// lab gets one so that the two ends of a veth pair never share an index:
// when they did (each namespace numbers its links from 1), the kernel
// (6.18 here) sometimes left one end's operational state DOWN after both were
// up, and the bridge then disabled that port — a home that could not reach
// the internet, depending on how many links its router had.
func nextIfindex() int {
	const perProcess = 1 << 16
	base := 1<<24 + (os.Getpid()%4096)*perProcess
	return base + int(ifindexSeq.Add(1)%perProcess)
}

// addBridge is the ip command that adds a bridge, with an address of its
// own. A bridge without one takes the lowest address of its ports and
// changes it when a port with a lower one joins: neighbours that had
// resolved the bridge's IP address then send to an address it no longer
// answers, until their ARP entry expires. The internet's bridge gains a
// port with every home, so a home added later could cut off one added
// earlier that had already spoken.
func addBridge(name string) string {
	index := nextIfindex()
	// A locally administered unicast address (02:…) made of the index,
	// which is unique among the lab's links.
	mac := fmt.Sprintf("02:6e:%02x:%02x:%02x:%02x", byte(index>>24), byte(index>>16), byte(index>>8), byte(index))
	return fmt.Sprintf("link add %s index %d address %s type bridge", name, index, mac)
}

// addVeth is the ip command that adds a veth pair: name here, peer in the
// namespace peerNS.
func addVeth(name, peer string, peerNS *Namespace) string {
	return fmt.Sprintf("link add %s index %d type veth peer name %s index %d netns %s",
		name, nextIfindex(), peer, nextIfindex(), peerNS.Name)
}

// nft loads an nftables ruleset into ns.
func (l *Lab) nft(ns *Namespace, ruleset string) error {
	cmd := ns.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(ruleset)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft -f in %s: %v: %s\nruleset:\n%s", ns.Name, err, bytes.TrimSpace(out), ruleset)
	}
	return nil
}

// cleanup deletes everything the lab created: it kills what still runs in
// its namespaces, then deletes them, and checks that none keeps its name.
// A namespace takes its links (veth ends, bridges), routes, nftables tables
// and conntrack entries with it, so nothing is deleted one by one: nothing
// of the lab lives outside its namespaces, and deleting a veth end takes an
// RCU grace period (about 25 ms) where deleting the namespace does all in
// one batch. A namespace is destroyed once nothing holds it: the lab kills
// the processes and closes its own descriptors; sockets opened by Do and
// still open would keep it alive, unnamed, until they are closed.
func (l *Lab) cleanup() {
	l.mu.Lock()
	defer l.mu.Unlock()
	var lines []string
	for _, ns := range slices.Backward(l.spaces) {
		for _, pid := range killAll(l.ipPath, ns.Name) {
			l.t.Logf("natlab: killed process %d, still running in %s when the test ended", pid, ns.Name)
		}
		if ns.fd >= 0 {
			unix.Close(ns.fd)
		}
		lines = append(lines, "netns del "+ns.Name)
	}
	if len(lines) > 0 {
		cmd := exec.Command(l.ipPath, "-force", "-batch", "-")
		cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
		if out, err := cmd.CombinedOutput(); err != nil {
			l.t.Errorf("natlab: delete namespaces: %v: %s", err, bytes.TrimSpace(out))
		}
	}
	if left := l.leftover(); len(left) > 0 {
		l.t.Errorf("natlab: namespaces left after cleanup: %v", left)
	}
}

// leftover lists the namespaces of this lab that still have a name.
func (l *Lab) leftover() []string {
	entries, _ := os.ReadDir(netnsDir)
	var left []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), l.prefix) {
			left = append(left, e.Name())
		}
	}
	return left
}

// removeStale deletes the namespaces left by lab processes that no longer
// run: a test binary killed before its cleanup. Those of live processes,
// parallel test binaries included, are left alone.
func (l *Lab) removeStale() {
	entries, _ := os.ReadDir(netnsDir)
	for _, e := range entries {
		pidText, _, ok := strings.Cut(strings.TrimPrefix(e.Name(), namePrefix), "-")
		if !ok || !strings.HasPrefix(e.Name(), namePrefix) {
			continue
		}
		pid, err := strconv.Atoi(pidText)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat("/proc/" + pidText); err == nil {
			continue // its test process still runs
		}
		killAll(l.ipPath, e.Name())
		if out, err := exec.Command(l.ipPath, "netns", "del", e.Name()).CombinedOutput(); err != nil {
			l.t.Logf("natlab: remove stale namespace %s: %v: %s", e.Name(), err, bytes.TrimSpace(out))
			continue
		}
		l.t.Logf("natlab: removed namespace %s left by test process %d", e.Name(), pid)
	}
}

// killAll kills, by PID, the processes running in the namespace name (the
// lab started them there), never this test process, and returns their PIDs.
func killAll(ipPath, name string) []int {
	out, err := exec.Command(ipPath, "netns", "pids", name).Output()
	if err != nil {
		return nil
	}
	var killed []int
	for _, f := range strings.Fields(string(out)) {
		pid, err := strconv.Atoi(f)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if unix.Kill(pid, unix.SIGKILL) == nil {
			killed = append(killed, pid)
		}
	}
	return killed
}

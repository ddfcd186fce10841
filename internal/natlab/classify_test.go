package natlab_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/natlab"
	"github.com/nasreach/nasreach/stun"
)

// silence is how long a test listens before it concludes that a packet was
// dropped. Inside the lab a packet that gets through arrives within a
// millisecond.
const silence = 300 * time.Millisecond

// Behaviour names, from RFC 4787: mapping (§4.1) and filtering (§5).
const (
	endpointIndependent     = "endpoint-independent"
	addressDependent        = "address-dependent"
	addressAndPortDependent = "address-and-port-dependent"
	noUDP                   = "no UDP at all"
)

// stunServers are the STUN servers the tests ask, in the internet
// namespace: A, A's other port, and B at the internet's other address, as
// RFC 5780's alternate port and address.
type stunServers struct {
	a, aPort, b netip.AddrPort
}

// startSTUN starts the project's STUN server at each address of
// stunServers, in the internet namespace, until the test ends.
func startSTUN(t *testing.T, lab *natlab.Lab) stunServers {
	t.Helper()
	s := stunServers{
		a:     netip.AddrPortFrom(natlab.InternetA, 3478),
		aPort: netip.AddrPortFrom(natlab.InternetA, 3479),
		b:     netip.AddrPortFrom(natlab.InternetB, 3478),
	}
	for _, addr := range []netip.AddrPort{s.a, s.aPort, s.b} {
		var srv *stun.Server
		err := lab.Internet.Do(func() (err error) {
			srv, err = stun.New(stun.Config{Addr: addr.String()})
			return err
		})
		if err != nil {
			t.Fatalf("start STUN server at %s: %v", addr, err)
		}
		t.Cleanup(func() { srv.Shutdown(context.Background()) })
	}
	return s
}

// discover asks server for the address it sees conn's packets come from.
// The lab loses nothing once AddHome has returned, but on a loaded machine
// (CI runs every package at once) the server's answer may be late: five
// transmissions over 3.4 s keep that from failing a test, while a blocked
// path still gives up in that time.
func discover(conn net.PacketConn, server netip.AddrPort) (netip.AddrPort, error) {
	c, err := stun.NewClient(stun.ClientConfig{RTO: 200 * time.Millisecond, Rc: 5, Rm: 2})
	if err != nil {
		return netip.AddrPort{}, err
	}
	return c.Discover(context.Background(), conn, server)
}

// receive reads conn for silence and returns the datagrams that arrived.
func receive(conn *net.UDPConn) map[string]bool {
	got := map[string]bool{}
	conn.SetReadDeadline(time.Now().Add(silence))
	defer conn.SetReadDeadline(time.Time{})
	buf := make([]byte, 1500)
	for {
		n, err := conn.Read(buf)
		if err != nil {
			return got // the deadline
		}
		got[string(buf[:n])] = true
	}
}

// probe is what classifying a host takes, opened on the test's goroutine
// beforehand: a socket on the host for the mapping, a fresh one for the
// filtering, and two senders in the internet, at A's address and at B's,
// on ports no server uses.
type probe struct {
	host                              *natlab.Namespace
	mapConn, filterConn, fromA, fromB *net.UDPConn
}

func newProbe(t *testing.T, lab *natlab.Lab, host *natlab.Namespace) probe {
	return probe{
		host:       host,
		mapConn:    host.ListenUDP(t, netip.AddrPortFrom(host.Addr, 0)),
		filterConn: host.ListenUDP(t, netip.AddrPortFrom(host.Addr, 0)),
		fromA:      lab.Internet.ListenUDP(t, netip.AddrPortFrom(natlab.InternetA, 0)),
		fromB:      lab.Internet.ListenUDP(t, netip.AddrPortFrom(natlab.InternetB, 0)),
	}
}

// verdict is a host's NAT as classify found it.
type verdict struct {
	mapping, filtering string
	mapped             netip.AddrPort // what A saw as the mapping socket's address
	err                error
}

// classify names the mapping and the filtering of the NAT in front of
// p.host, the way a STUN client following RFC 5780 would.
//
// Mapping (RFC 4787 §4.1): Binding requests from one socket to A, A's other
// port and B. The same mapped address for all is endpoint-independent; the
// same for A's two ports only, address-dependent; a new one for A's other
// port, address-and-port-dependent.
//
// Filtering (§5): a fresh socket asks A for its mapped address; then a
// datagram is sent to that address from A's address at another port and
// one from B. Both arriving is endpoint-independent; A's only,
// address-dependent; neither, address-and-port-dependent.
func classify(p probe, s stunServers) (v verdict) {
	var seen []netip.AddrPort
	for _, server := range []netip.AddrPort{s.a, s.aPort, s.b} {
		mapped, err := discover(p.mapConn, server)
		if errors.Is(err, stun.ErrTimeout) {
			return verdict{mapping: noUDP, filtering: noUDP}
		}
		if err != nil {
			return verdict{err: fmt.Errorf("STUN Binding to %s: %w", server, err)}
		}
		seen = append(seen, mapped)
	}
	v.mapped = seen[0]
	switch {
	case seen[0] == seen[1] && seen[0] == seen[2]:
		v.mapping = endpointIndependent
	case seen[0] == seen[1]:
		v.mapping = addressDependent
	default:
		v.mapping = addressAndPortDependent
	}

	mapped, err := discover(p.filterConn, s.a)
	if err != nil {
		return verdict{err: fmt.Errorf("STUN Binding to %s: %w", s.a, err)}
	}
	for _, c := range []*net.UDPConn{p.fromA, p.fromB} {
		if _, err := c.WriteToUDPAddrPort([]byte(c.LocalAddr().String()), mapped); err != nil {
			return verdict{err: err}
		}
	}
	got := receive(p.filterConn)
	fromA, fromB := got[p.fromA.LocalAddr().String()], got[p.fromB.LocalAddr().String()]
	switch {
	case fromA && fromB:
		v.filtering = endpointIndependent
	case fromA:
		v.filtering = addressDependent
	case fromB:
		v.err = errors.New("the datagram from B arrived but not the one from A's address")
	default:
		v.filtering = addressAndPortDependent
	}
	return v
}

// TestEachKindBehavesAsItsName builds one home of each kind, classifies
// the NAT in front of each host by mapping and filtering in RFC 4787's
// terms, and checks the public address the internet sees.
func TestEachKindBehavesAsItsName(t *testing.T) {
	start := time.Now()
	lab := natlab.New(t)
	servers := startSTUN(t, lab)
	type job struct {
		home  *natlab.Home
		probe probe
		verdict
	}
	var jobs []*job
	for _, kind := range natlab.Kinds {
		home := lab.AddHome(kind)
		for _, host := range home.Hosts {
			jobs = append(jobs, &job{home: home, probe: newProbe(t, lab, host)})
		}
	}
	t.Logf("lab of %d homes built in %v", len(natlab.Kinds), time.Since(start))
	// Every host at once: most of the time is spent waiting for datagrams
	// that do not come.
	var wg sync.WaitGroup
	for _, j := range jobs {
		wg.Go(func() { j.verdict = classify(j.probe, servers) })
	}
	wg.Wait()

	cases := []struct {
		kind      natlab.Kind
		mapping   string
		filtering string
	}{
		// EIM + EIF: the emulated full cone (nat.go).
		{natlab.FullCone, endpointIndependent, endpointIndependent},
		// EIM + APDF: masquerade keeps the socket's port for every
		// destination; conntrack lets in only the exact 5-tuple.
		{natlab.Masquerade, endpointIndependent, addressAndPortDependent},
		// APDM + APDF: fully-random gives every destination its own port
		// (A and A's other port get the same random port once in some
		// 64,000 runs, which this test would report as address-dependent).
		{natlab.Symmetric, addressAndPortDependent, addressAndPortDependent},
		// Two masquerades in a row behave as one, with the CGNAT's address.
		{natlab.DoubleNAT, endpointIndependent, addressAndPortDependent},
		{natlab.SameLAN, endpointIndependent, addressAndPortDependent},
		// No Binding over UDP is answered at all.
		{natlab.UDPBlocked, noUDP, noUDP},
	}
	for _, tc := range cases {
		t.Run(tc.kind.String(), func(t *testing.T) {
			for _, j := range jobs {
				if j.home.Kind != tc.kind {
					continue
				}
				host := j.probe.host
				if j.err != nil {
					t.Fatalf("%s: %v", host.Name, j.err)
				}
				t.Logf("%s (%s): %s mapping, %s filtering, seen as %s", host.Name, host.Addr, j.mapping, j.filtering, j.mapped)
				if j.mapping != tc.mapping {
					t.Errorf("%s: mapping is %s, want %s", host.Name, j.mapping, tc.mapping)
				}
				if j.filtering != tc.filtering {
					t.Errorf("%s: filtering is %s, want %s", host.Name, j.filtering, tc.filtering)
				}
				if j.mapping != noUDP && j.mapped.Addr() != j.home.WAN {
					t.Errorf("%s: the internet sees %s, want the home's public address %s", host.Name, j.mapped, j.home.WAN)
				}
			}
		})
	}
}

// TestDoubleNATShowsOnlyTheCarriersAddress checks that behind a CGNAT the
// internet sees the carrier's address, not the home router's WAN address
// (which is on the carrier's private network).
func TestDoubleNATShowsOnlyTheCarriersAddress(t *testing.T) {
	lab := natlab.New(t)
	servers := startSTUN(t, lab)
	home := lab.AddHome(natlab.DoubleNAT)
	mapped, err := discover(home.Host().ListenUDP(t, netip.AddrPortFrom(home.Host().Addr, 0)), servers.a)
	if err != nil {
		t.Fatal(err)
	}
	if mapped.Addr() != home.CGNAT.Addr || mapped.Addr() == home.Router.Addr {
		t.Errorf("the internet sees %s; want the CGNAT's %s, not the home router's %s", mapped, home.CGNAT.Addr, home.Router.Addr)
	}
}

// TestUDPBlockedLeavesTCP checks that behind a router that drops UDP a
// Binding request over TCP still gets its answer, with the home's address.
func TestUDPBlockedLeavesTCP(t *testing.T) {
	lab := natlab.New(t)
	servers := startSTUN(t, lab)
	home := lab.AddHome(natlab.UDPBlocked)
	host := home.Host()
	if _, err := discover(host.ListenUDP(t, netip.AddrPortFrom(host.Addr, 0)), servers.a); !errors.Is(err, stun.ErrTimeout) {
		t.Errorf("Binding over UDP: %v, want %v", err, stun.ErrTimeout)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := host.DialTCP(ctx, servers.a)
	if err != nil {
		t.Fatalf("dial %s over TCP: %v", servers.a, err)
	}
	defer conn.Close()
	c, err := stun.NewClient(stun.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	mapped, err := c.DiscoverStream(ctx, conn)
	if err != nil {
		t.Fatalf("Binding over TCP: %v", err)
	}
	if mapped.Addr() != home.WAN {
		t.Errorf("over TCP the internet sees %s, want the home's public address %s", mapped, home.WAN)
	}
}

// TestSameLANDoesNotHairpin checks the two hosts of a SameLAN home: a
// datagram to the other's public (mapped) address does not come back into
// the LAN, one to its LAN address arrives.
func TestSameLANDoesNotHairpin(t *testing.T) {
	lab := natlab.New(t)
	servers := startSTUN(t, lab)
	home := lab.AddHome(natlab.SameLAN)
	one, two := home.Hosts[0], home.Hosts[1]
	from := one.ListenUDP(t, netip.AddrPortFrom(one.Addr, 0))
	to := two.ListenUDP(t, netip.AddrPortFrom(two.Addr, 0))
	mapped, err := discover(to, servers.a)
	if err != nil {
		t.Fatal(err)
	}
	if mapped.Addr() != home.WAN {
		t.Fatalf("the internet sees %s, want %s", mapped, home.WAN)
	}
	lan := to.LocalAddr().(*net.UDPAddr).AddrPort()
	for _, dst := range []netip.AddrPort{mapped, lan} {
		if _, err := from.WriteToUDPAddrPort([]byte(dst.String()), dst); err != nil {
			t.Fatal(err)
		}
	}
	got := receive(to)
	if got[mapped.String()] {
		t.Errorf("the datagram to the public address %s came back into the LAN: the router hairpins", mapped)
	}
	if !got[lan.String()] {
		t.Errorf("the datagram to the LAN address %s did not arrive", lan)
	}
}

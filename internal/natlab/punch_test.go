package natlab_test

import (
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

// punchWindow is how long two hosts try to reach each other.
const punchWindow = 500 * time.Millisecond

// TestNaivePunchingFollowsRFC4787 has every pair of kinds try UDP hole
// punching the way ICE does without port prediction: each side learns its
// mapped address from STUN, sends to the other's, and answers any address
// a packet of the other's came from (a peer-reflexive candidate). It checks
// that the lab's NATs combine as RFC 4787 predicts (see punchable), which
// is what the hole-punching work will build on.
func TestNaivePunchingFollowsRFC4787(t *testing.T) {
	lab := natlab.New(t)
	servers := startSTUN(t, lab)
	// Two homes of each kind, so that a kind can be paired with itself;
	// SameLAN pairs the two hosts of one home.
	homes := map[natlab.Kind][2]*natlab.Home{}
	for _, kind := range natlab.Kinds {
		homes[kind] = [2]*natlab.Home{lab.AddHome(kind), lab.AddHome(kind)}
	}
	type pair struct {
		a, b  natlab.Kind
		conns [2]*net.UDPConn
		hosts [2]*natlab.Namespace
		got   bool
		err   error
	}
	var pairs []*pair
	for i, ka := range natlab.Kinds {
		for _, kb := range natlab.Kinds[i:] {
			p := &pair{a: ka, b: kb, hosts: [2]*natlab.Namespace{homes[ka][0].Host(), homes[kb][1].Host()}}
			if ka == kb && ka == natlab.SameLAN {
				p.hosts = [2]*natlab.Namespace{homes[ka][0].Hosts[0], homes[ka][0].Hosts[1]}
			}
			for i, host := range p.hosts {
				p.conns[i] = host.ListenUDP(t, netip.AddrPortFrom(host.Addr, 0))
			}
			pairs = append(pairs, p)
		}
	}
	// Every pair at once: most of the time is spent waiting.
	var wg sync.WaitGroup
	for _, p := range pairs {
		wg.Go(func() { p.got, p.err = punch(p.conns, servers.a) })
	}
	wg.Wait()
	for _, p := range pairs {
		want := punchable(p.a, p.b)
		t.Run(p.a.String()+"/"+p.b.String(), func(t *testing.T) {
			if p.err != nil {
				t.Fatal(p.err)
			}
			if p.got != want {
				t.Errorf("%s and %s reached each other: %v, want %v", p.hosts[0].Name, p.hosts[1].Name, p.got, want)
			}
		})
	}
}

// punchable is RFC 4787's prediction for naive punching between hosts
// behind a and b. It works when both NATs map endpoint-independently (each
// side's packets leave from the address the other sends to, and open the
// filter for it), or when one filters endpoint-independently (the other's
// new mapping gets in, and the answer goes back to it). It fails when UDP
// is blocked, when the hosts share a LAN whose router does not hairpin, and
// between a symmetric NAT and anything but a full cone: the symmetric side
// sends from a port nobody learnt, which an address-and-port-dependent
// filter drops. That last case is where hole punching needs more (port
// prediction, many sockets) than this.
func punchable(a, b natlab.Kind) bool {
	switch {
	case a == natlab.UDPBlocked || b == natlab.UDPBlocked:
		return false
	case a == natlab.SameLAN && b == natlab.SameLAN:
		return false
	case a == natlab.FullCone || b == natlab.FullCone:
		return true
	}
	return a != natlab.Symmetric && b != natlab.Symmetric
}

// punch has each socket learn its mapped address from server and then try
// to reach the other's for punchWindow; it reports whether each received a
// packet from the other. No UDP answer from server means there is nothing
// to punch with: false.
func punch(conns [2]*net.UDPConn, server netip.AddrPort) (bool, error) {
	var mapped [2]netip.AddrPort
	for i, c := range conns {
		m, err := discover(c, server)
		if errors.Is(err, stun.ErrTimeout) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("STUN Binding to %s: %w", server, err)
		}
		mapped[i] = m
	}
	var got [2]bool
	var wg sync.WaitGroup
	for i := range conns {
		wg.Go(func() { got[i] = punchSide(conns[i], mapped[1-i]) })
	}
	wg.Wait()
	return got[0] && got[1], nil
}

// punchSide sends to peer, and to every address a packet came from, until
// punchWindow ends; it reports whether any packet came.
func punchSide(conn *net.UDPConn, peer netip.AddrPort) bool {
	const msg = "punch"
	targets := map[netip.AddrPort]bool{peer: true}
	got := false
	buf := make([]byte, 64)
	for end := time.Now().Add(punchWindow); time.Now().Before(end); {
		for to := range targets {
			conn.WriteToUDPAddrPort([]byte(msg), to)
		}
		conn.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				break // the deadline: send again
			}
			if string(buf[:n]) == msg {
				got, targets[from] = true, true
			}
		}
	}
	return got
}

package link

import (
	"net"
	"net/netip"
	"slices"
	"testing"
)

func ipnet(s string) net.Addr {
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	n.IP = ip
	return n
}

func hosts(addrs ...string) []Candidate {
	var cs []Candidate
	for _, a := range addrs {
		cs = append(cs, Candidate{Kind: CandidateHost, Addr: netip.MustParseAddrPort(a)})
	}
	return cs
}

// Host candidates are the socket's addresses: never link-local, loopback
// only when the relay is on this machine, no IPv6 for an IPv4 socket.
func TestHostCandidates(t *testing.T) {
	ifaces := []net.Addr{ipnet("127.0.0.1/8"), ipnet("::1/128"), ipnet("192.168.1.2/24"), ipnet("169.254.7.7/16"),
		ipnet("fe80::1/64"), ipnet("2001:db8::2/64")}
	public, loop := netip.MustParseAddr("203.0.113.1"), netip.MustParseAddr("127.0.0.1")
	for _, tc := range []struct {
		name  string
		local string
		relay netip.Addr
		want  []Candidate
	}{
		{"bound to loopback, relay on this machine", "127.0.0.1:5000", loop, hosts("127.0.0.1:5000")},
		{"bound to loopback, relay elsewhere", "127.0.0.1:5000", public, nil},
		{"IPv4 socket on every interface", "0.0.0.0:5000", public, hosts("192.168.1.2:5000")},
		{"dual-stack socket", "[::]:5000", public, hosts("192.168.1.2:5000", "[2001:db8::2]:5000")},
		{"dual-stack socket, relay on this machine", "[::]:5000", loop,
			hosts("127.0.0.1:5000", "[::1]:5000", "192.168.1.2:5000", "[2001:db8::2]:5000")},
	} {
		if got := hostCandidates(netip.MustParseAddrPort(tc.local), tc.relay, ifaces); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	many := make([]net.Addr, 20)
	for i := range many {
		many[i] = ipnet(netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}).String() + "/8")
	}
	if got := hostCandidates(netip.MustParseAddrPort("0.0.0.0:1"), public, many); len(got) != MaxCandidates-2 {
		t.Errorf("%d host candidates of 20 addresses, want %d (room for the srflx and nat ones)", len(got), MaxCandidates-2)
	}
}

func TestSrflxAndReachableCandidates(t *testing.T) {
	public := netip.MustParseAddr("203.0.113.1")
	cs := hosts("192.168.1.2:5000")
	if got := withSrflx(cs, netip.MustParseAddrPort("192.168.1.2:5000"), public); !slices.Equal(got, cs) {
		t.Errorf("a mapping equal to a host address (no NAT) was added again: %v", got)
	}
	srflx := netip.MustParseAddrPort("198.51.100.7:61000")
	if got := withSrflx(cs, srflx, public); len(got) != 2 || got[1] != (Candidate{Kind: CandidateSrflx, Addr: srflx}) {
		t.Errorf("withSrflx = %v", got)
	}
	peer := append(hosts("127.0.0.1:1", "[fe80::1]:1", "10.0.0.1:0", "[2001:db8::1]:1", "[::ffff:10.0.0.2]:1", "10.0.0.2:1"),
		Candidate{Kind: CandidateSrflx, Addr: srflx})
	want := append(hosts("10.0.0.2:1"), Candidate{Kind: CandidateSrflx, Addr: srflx})
	if got := reachable(peer, netip.MustParseAddrPort("0.0.0.0:5000"), public); !slices.Equal(got, want) {
		t.Errorf("reachable from an IPv4 socket = %v, want %v", got, want)
	}
}

package linkserver

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/nasreach/nasreach/link"
)

// The relay passes on no link-local candidate, and loopback ones only
// between two ends on its own machine.
func TestRelayPassesOnlyOfferableCandidates(t *testing.T) {
	c := func(s string) link.Candidate {
		return link.Candidate{Kind: link.CandidateHost, Addr: netip.MustParseAddrPort(s)}
	}
	all := []link.Candidate{c("127.0.0.1:1"), c("[::1]:1"), c("169.254.1.1:1"), c("[fe80::1]:1"), c("192.168.1.2:1"), c("[2001:db8::2]:1")}
	for _, tc := range []struct {
		to   string
		want []link.Candidate
	}{
		{"127.0.0.1", []link.Candidate{c("127.0.0.1:1"), c("[::1]:1"), c("192.168.1.2:1"), c("[2001:db8::2]:1")}},
		{"::ffff:127.0.0.1", []link.Candidate{c("127.0.0.1:1"), c("[::1]:1"), c("192.168.1.2:1"), c("[2001:db8::2]:1")}},
		{"203.0.113.9", []link.Candidate{c("192.168.1.2:1"), c("[2001:db8::2]:1")}},
	} {
		if got := offerable(all, netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr(tc.to)); !slices.Equal(got, tc.want) {
			t.Errorf("to %s: %v, want %v", tc.to, got, tc.want)
		}
	}
}

// A NAT mapping goes on only with the address the relay sees its sender
// at: the other end sprays probes at it (birthday probing), which no
// client may aim at someone else.
func TestRelayPassesANATMappingOnlyFromItsOwnAddress(t *testing.T) {
	nat := func(s string) link.Candidate {
		return link.Candidate{Kind: link.CandidateNAT, Addr: netip.MustParseAddrPort(s)}
	}
	from, to := netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("203.0.113.9")
	all := []link.Candidate{nat("198.51.100.7:0"), nat("192.0.2.1:0"), nat("[::ffff:198.51.100.7]:4000")}
	want := []link.Candidate{nat("198.51.100.7:0"), nat("[::ffff:198.51.100.7]:4000")}
	if got := offerable(all, from, to); !slices.Equal(got, want) {
		t.Errorf("%v, want %v", got, want)
	}
}

package link

import (
	"math"
	"net/netip"
	"slices"
	"testing"
)

// Two STUN answers for one socket name its NAT's mapping: one address,
// endpoint-independent; one IP with two ports, symmetric; anything else
// (one answer, two IPs) unknown.
func TestClassifyMapping(t *testing.T) {
	ap := netip.MustParseAddrPort
	for _, tc := range []struct {
		a, b string
		want natMapping
	}{
		{"203.0.113.7:40000", "203.0.113.7:40000", natMapping{mappingIndependent, ap("203.0.113.7:40000")}},
		{"203.0.113.7:40000", "203.0.113.7:51234", natMapping{mappingVaries, ap("203.0.113.7:0")}},
		{"203.0.113.7:40000", "198.51.100.7:40000", natMapping{}},
		{"203.0.113.7:40000", "", natMapping{}},
	} {
		var b netip.AddrPort
		if tc.b != "" {
			b = ap(tc.b)
		}
		if got := classifyMapping(ap(tc.a), b); got != tc.want {
			t.Errorf("%s and %q: %v %v, want %v %v", tc.a, tc.b, got, got.addr, tc.want, tc.want.addr)
		}
	}
}

// An end tells the other how its NAT maps in a CandidateNAT, which crosses
// the wire as a candidate (port 0: symmetric) and is never probed.
func TestMappingTravelsAsACandidateAndIsNotProbed(t *testing.T) {
	relay := netip.MustParseAddr("203.0.113.1")
	local := netip.MustParseAddrPort("0.0.0.0:5000")
	srflx := netip.MustParseAddrPort("198.51.100.7:40000")
	for _, m := range []natMapping{
		{mappingIndependent, srflx},
		{mappingVaries, netip.MustParseAddrPort("198.51.100.7:0")},
	} {
		cs := withMapping(withSrflx(hosts("192.168.1.2:5000"), srflx, relay), m, relay)
		b, err := AppendFrame(nil, Candidates{Candidates: cs})
		if err != nil {
			t.Fatal(err)
		}
		fr, err := ParseFrame(b)
		if err != nil {
			t.Fatal(err)
		}
		got := fr.(Candidates).Candidates
		if pm := peerMapping(got); pm != m {
			t.Errorf("%v mapping read back as %v", m, pm)
		}
		if r := reachable(got, local, relay); slices.ContainsFunc(r, func(c Candidate) bool { return c.Kind == CandidateNAT }) {
			t.Errorf("a nat candidate is probed: %v", r)
		}
	}
	if got := withMapping(hosts("192.168.1.2:5000"), natMapping{}, relay); len(got) != 1 {
		t.Errorf("an unknown mapping was offered: %v", got)
	}
	if pm := peerMapping(hosts("192.168.1.2:5000")); pm.kind != mappingUnknown {
		t.Errorf("no nat candidate read as %v", pm)
	}
}

// Birthday probing only between a symmetric NAT and an
// endpoint-independent one, both known: the symmetric side opens sockets
// toward the other's mapped address, the other sprays the symmetric NAT's
// ports.
func TestBirthdayOnlyBetweenSymmetricAndEndpointIndependent(t *testing.T) {
	relay := netip.MustParseAddr("203.0.113.1")
	v4, v6 := netip.MustParseAddrPort("0.0.0.0:5000"), netip.MustParseAddrPort("[::]:5000")
	eim := natMapping{mappingIndependent, netip.MustParseAddrPort("198.51.100.7:40000")}
	sym := natMapping{mappingVaries, netip.MustParseAddrPort("192.0.2.9:0")}
	sym6 := natMapping{mappingVaries, netip.MustParseAddrPort("[2001:db8::9]:0")}
	for _, tc := range []struct {
		name       string
		self, peer natMapping
		local      netip.AddrPort
		role       birthdayRole
		target     netip.AddrPort
	}{
		{"symmetric here", sym, eim, v4, birthdayOpen, eim.addr},
		{"symmetric there", eim, sym, v4, birthdaySpray, sym.addr},
		{"both symmetric", sym, sym, v4, birthdayNone, netip.AddrPort{}},
		{"both endpoint-independent", eim, eim, v4, birthdayNone, netip.AddrPort{}},
		{"this end unknown", natMapping{}, sym, v4, birthdayNone, netip.AddrPort{}},
		{"other end unknown", sym, natMapping{}, v4, birthdayNone, netip.AddrPort{}},
		{"IPv6 target from an IPv4 socket", eim, sym6, v4, birthdayNone, netip.AddrPort{}},
		{"IPv6 target from a dual-stack socket", eim, sym6, v6, birthdaySpray, sym6.addr},
	} {
		b := planBirthday(tc.self, tc.peer, tc.local, relay)
		switch {
		case b == nil && tc.role != birthdayNone:
			t.Errorf("%s: no birthday probing, want role %d", tc.name, tc.role)
		case b != nil && (b.role != tc.role || b.target != tc.target):
			t.Errorf("%s: role %d toward %v, want %d toward %v", tc.name, b.role, b.target, tc.role, tc.target)
		}
	}
}

// The defaults find a match with the probability the package documents:
// 256 mappings among 64,512 ports, 2,048 probes.
func TestBirthdayDefaultsSucceedAlmostAlways(t *testing.T) {
	ports := float64(1<<16 - minMappedPort)
	miss := math.Pow(1-BirthdaySockets/ports, BirthdayProbes)
	if miss > 0.001 {
		t.Errorf("birthday probing misses with probability %.4f", miss)
	}
	half := math.Log(0.5) / math.Log(1-BirthdaySockets/ports)
	t.Logf("miss %.5f; half the attempts match within %.0f probes (%.0f ms at %d/s)", miss, half, 1000*half/BirthdayRate, BirthdayRate)
	if BirthdayProbes*1000/BirthdayRate > int(BirthdayWindow.Milliseconds()) {
		t.Errorf("%d probes at %d/s do not fit in %v", BirthdayProbes, BirthdayRate, BirthdayWindow)
	}
}

package link

import (
	"cmp"
	"net"
	"net/netip"
	"slices"
)

// maxHostCandidates leaves room in a list for the server-reflexive one and
// the NAT's mapping (CandidateNAT).
const maxHostCandidates = MaxCandidates - 2

// hostCandidates are the socket's own addresses with its port: the bound
// address, or every interface address when the socket is bound to all of
// them (ifaces: net.InterfaceAddrs's answer). offerable decides which may go
// to a remote peer.
func hostCandidates(local netip.AddrPort, relay netip.Addr, ifaces []net.Addr) []Candidate {
	var addrs []netip.Addr
	if a := local.Addr().Unmap(); !a.IsUnspecified() {
		addrs = []netip.Addr{a}
	} else {
		for _, ia := range ifaces {
			if p, err := netip.ParsePrefix(ia.String()); err == nil {
				addrs = append(addrs, p.Addr().Unmap())
			}
		}
		if local.Addr().Is4() { // an IPv4-only socket reaches no IPv6 address
			addrs = slices.DeleteFunc(addrs, func(a netip.Addr) bool { return !a.Is4() })
		}
	}
	var cs []Candidate
	for _, a := range addrs {
		c := Candidate{Kind: CandidateHost, Addr: netip.AddrPortFrom(a, local.Port())}
		if offerable(c.Addr.Addr(), relay) && !slices.Contains(cs, c) {
			cs = append(cs, c)
		}
	}
	// Loopback first (the same machine), then IPv4, then IPv6: the order
	// probes go out in, and what is kept when there are too many.
	slices.SortStableFunc(cs, func(x, y Candidate) int {
		return cmp.Compare(addrRank(x.Addr.Addr()), addrRank(y.Addr.Addr()))
	})
	if len(cs) > maxHostCandidates {
		cs = cs[:maxHostCandidates]
	}
	return cs
}

func addrRank(a netip.Addr) int {
	switch {
	case a.IsLoopback():
		return 0
	case a.Is4():
		return 1
	}
	return 2
}

// offerable says whether an address may be offered to, or probed for, a
// remote peer: never link-local (it names an interface, not a host),
// multicast or unspecified; loopback only when the relay itself is reached
// over loopback, which puts both ends on the relay's machine.
func offerable(a netip.Addr, relay netip.Addr) bool {
	a = a.Unmap()
	switch {
	case !a.IsValid(), a.IsUnspecified(), a.IsMulticast(), a.IsLinkLocalUnicast(), a.IsLinkLocalMulticast(),
		a.IsInterfaceLocalMulticast(), a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return false
	case a.IsLoopback():
		return relay.Unmap().IsLoopback()
	}
	return true
}

// withSrflx appends the server-reflexive candidate unless a host candidate
// already has its address (no NAT in between).
func withSrflx(cs []Candidate, srflx netip.AddrPort, relay netip.Addr) []Candidate {
	if !srflx.IsValid() || !offerable(srflx.Addr(), relay) || len(cs) >= MaxCandidates {
		return cs
	}
	for _, c := range cs {
		if c.Addr == srflx {
			return cs
		}
	}
	return append(cs, Candidate{Kind: CandidateSrflx, Addr: srflx})
}

// reachable keeps the peer's candidates this socket may probe: offerable
// ones of a family it can send to, and no CandidateNAT (a note, not an
// address).
func reachable(cs []Candidate, local netip.AddrPort, relay netip.Addr) []Candidate {
	var out []Candidate
	for _, c := range cs {
		a := c.Addr.Addr().Unmap()
		if c.Kind == CandidateNAT || !offerable(a, relay) || c.Addr.Port() == 0 || (local.Addr().Is4() && !a.Is4()) {
			continue
		}
		c.Addr = netip.AddrPortFrom(a, c.Addr.Port())
		if !slices.Contains(out, c) {
			out = append(out, c)
		}
	}
	return out
}

package turnserver

import (
	"net"
	"net/netip"
	"slices"
	"sync/atomic"
)

// deniedPeerPrefixes are the peer ranges a TURN client may not reach through
// the relay unless the operator allow-lists them (Config.AllowPeers). A
// relay that forwards to these would let anyone on the Internet reach the
// server's own loopback services, the operator's private network or cloud
// metadata endpoints (the SSRF class of coturn CVE-2020-26262). The list is
// explicit because net.IP's IsPrivate and IsLoopback miss shared address
// space, benchmarking and broadcast.
var deniedPeerPrefixes = []netip.Prefix{
	// IPv4
	netip.MustParsePrefix("0.0.0.0/8"),          // "this network" (RFC 791)
	netip.MustParsePrefix("10.0.0.0/8"),         // private (RFC 1918)
	netip.MustParsePrefix("100.64.0.0/10"),      // shared address space, CGNAT (RFC 6598)
	netip.MustParsePrefix("127.0.0.0/8"),        // loopback
	netip.MustParsePrefix("169.254.0.0/16"),     // link-local, cloud metadata (RFC 3927)
	netip.MustParsePrefix("172.16.0.0/12"),      // private (RFC 1918)
	netip.MustParsePrefix("192.0.0.0/24"),       // IETF protocol assignments (RFC 6890)
	netip.MustParsePrefix("192.168.0.0/16"),     // private (RFC 1918)
	netip.MustParsePrefix("198.18.0.0/15"),      // benchmarking (RFC 2544)
	netip.MustParsePrefix("224.0.0.0/4"),        // multicast
	netip.MustParsePrefix("240.0.0.0/4"),        // reserved (RFC 1112)
	netip.MustParsePrefix("255.255.255.255/32"), // limited broadcast
	// IPv6
	netip.MustParsePrefix("::/96"),           // unspecified, loopback, IPv4-compatible (deprecated)
	netip.MustParsePrefix("::ffff:0:0/96"),   // IPv4-mapped: a peer is IPv4 or IPv6, never both
	netip.MustParsePrefix("::ffff:0:0:0/96"), // IPv4-translated (RFC 2765)
	netip.MustParsePrefix("64:ff9b:1::/48"),  // local-use NAT64 (RFC 8215)
	netip.MustParsePrefix("100::/64"),        // discard-only (RFC 6666)
	netip.MustParsePrefix("fc00::/7"),        // unique local (RFC 4193)
	netip.MustParsePrefix("fe80::/10"),       // link-local
	netip.MustParsePrefix("fec0::/10"),       // site-local (deprecated)
	netip.MustParsePrefix("ff00::/8"),        // multicast
	netip.MustParsePrefix("2001:db8::/32"),   // documentation
}

// Forms of IPv6 address that carry an IPv4 address; the IPv4 address inside is
// checked like a peer of its own (unmap first: coturn CVE-2026-27624 bypassed
// its deny list with ::ffff:127.0.0.1).
// DeniedPeerPrefixes returns a copy of the peer ranges refused by default,
// for documentation and tests; the policy's own list cannot be changed.
func DeniedPeerPrefixes() []netip.Prefix { return slices.Clone(deniedPeerPrefixes) }

var (
	nat64Prefix  = netip.MustParsePrefix("64:ff9b::/96") // well-known NAT64 (RFC 6052): v4 in the last 32 bits
	sixToFour    = netip.MustParsePrefix("2002::/16")    // 6to4 (RFC 3056): v4 in bits 16–47
	teredoPrefix = netip.MustParsePrefix("2001::/32")    // Teredo (RFC 4380): server v4 in bits 32–63, client v4 inverted in the last 32
)

// PeerVerdict says why a peer address was allowed or refused.
type PeerVerdict string

// The verdicts of PeerPolicy.Check.
const (
	PeerAllowed     PeerVerdict = ""             // allowed: a public address
	PeerAllowListed PeerVerdict = "allow-listed" // allowed by Config.AllowPeers
	PeerRelay       PeerVerdict = "relay"        // allowed: a relay address of this server
	PeerInvalid     PeerVerdict = "invalid address"
	PeerDenied      PeerVerdict = "denied range"
	PeerOwn         PeerVerdict = "server's own address"
	PeerEmbedded    PeerVerdict = "embeds a denied IPv4 address"
)

// OK reports whether the verdict allows relaying.
func (v PeerVerdict) OK() bool {
	return v == PeerAllowed || v == PeerAllowListed || v == PeerRelay
}

// PeerPolicy decides which peers a TURN client may reach. Order of the rules:
// an allow-listed range is allowed; an IPv4-mapped address is then refused;
// the relay's own relay IP is allowed for permissions, but data and channels
// toward it only reach live relay addresses (so that two clients of this
// server can still talk through it); any other address of the server is
// refused; an address embedding a refused IPv4 address (NAT64, 6to4, Teredo)
// is refused; DeniedPeerPrefixes are refused; everything else is allowed.
// It is safe for concurrent use; only the allow-list changes after
// NewPeerPolicy (SetAllow).
type PeerPolicy struct {
	allow    atomic.Pointer[[]netip.Prefix]
	deny     []netip.Prefix
	relayIPs []netip.Addr
	isRelay  func(netip.AddrPort) bool
	own      map[netip.Addr]bool
}

// NewPeerPolicy returns a policy that allow-lists allow, treats relayIPs as
// the relay's advertised addresses, own as the server's other addresses, and
// asks isRelay whether an address on a relay IP is a live relay address (nil
// means none is).
func NewPeerPolicy(allow []netip.Prefix, relayIPs, own []netip.Addr, isRelay func(netip.AddrPort) bool) *PeerPolicy {
	p := &PeerPolicy{deny: deniedPeerPrefixes, isRelay: isRelay, own: map[netip.Addr]bool{}}
	p.SetAllow(allow)
	for _, a := range relayIPs {
		p.relayIPs = append(p.relayIPs, a.Unmap().WithZone(""))
	}
	for _, a := range own {
		p.own[a.Unmap().WithZone("")] = true
	}
	if p.isRelay == nil {
		p.isRelay = func(netip.AddrPort) bool { return false }
	}
	return p
}

// SetAllow replaces the allow-list; checks made after it returns use the new
// one.
func (p *PeerPolicy) SetAllow(allow []netip.Prefix) {
	list := make([]netip.Prefix, 0, len(allow))
	for _, a := range allow {
		list = append(list, a.Masked())
	}
	p.allow.Store(&list)
}

// InterfaceAddrs returns the addresses of this host's interfaces, the "own
// addresses" a relay must not forward to. Errors give an empty list.
func InterfaceAddrs() []netip.Addr {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, p.Addr())
		}
	}
	return out
}

// CheckIP decides whether a client may hold a permission for peer address a
// (CreatePermission carries addresses; permissions ignore ports).
func (p *PeerPolicy) CheckIP(a netip.Addr) PeerVerdict {
	if !a.IsValid() {
		return PeerInvalid
	}
	a = a.WithZone("")
	if p.allowListed(a) || p.allowListed(a.Unmap()) {
		return PeerAllowListed
	}
	if a.Is4In6() {
		return PeerDenied
	}
	if slices.Contains(p.relayIPs, a) {
		return PeerRelay
	}
	if p.isOwn(a) {
		return PeerOwn
	}
	for _, v4 := range embeddedIPv4(a) {
		if p.denied(v4) || p.isOwn(v4) || slices.Contains(p.relayIPs, v4) {
			return PeerEmbedded
		}
	}
	if p.denied(a) {
		return PeerDenied
	}
	return PeerAllowed
}

// Check decides whether data or a channel may go to the transport address ap:
// CheckIP, and on a relay IP only to a live relay address.
func (p *PeerPolicy) Check(ap netip.AddrPort) PeerVerdict {
	v := p.CheckIP(ap.Addr())
	if v == PeerRelay && !p.isRelay(netip.AddrPortFrom(ap.Addr().WithZone(""), ap.Port())) {
		return PeerOwn
	}
	return v
}

func (p *PeerPolicy) allowListed(a netip.Addr) bool {
	for _, pr := range *p.allow.Load() {
		if pr.Contains(a) {
			return true
		}
	}
	return false
}

func (p *PeerPolicy) denied(a netip.Addr) bool {
	for _, pr := range p.deny {
		if pr.Contains(a) {
			return true
		}
	}
	return false
}

func (p *PeerPolicy) isOwn(a netip.Addr) bool { return p.own[a] }

// embeddedIPv4 returns the IPv4 addresses carried inside an IPv6 address.
func embeddedIPv4(a netip.Addr) []netip.Addr {
	if !a.Is6() {
		return nil
	}
	b := a.As16()
	v4 := func(x []byte) netip.Addr { return netip.AddrFrom4([4]byte(x)) }
	switch {
	case nat64Prefix.Contains(a):
		return []netip.Addr{v4(b[12:16])}
	case sixToFour.Contains(a):
		return []netip.Addr{v4(b[2:6])}
	case teredoPrefix.Contains(a):
		client := [4]byte{^b[12], ^b[13], ^b[14], ^b[15]}
		return []netip.Addr{v4(b[4:8]), netip.AddrFrom4(client)}
	}
	return nil
}

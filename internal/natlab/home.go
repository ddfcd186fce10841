package natlab

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"
)

// Kind is the NAT a home network sits behind, in RFC 4787's terms: how it
// maps (which public port a LAN socket gets for each destination) and how it
// filters (which senders may reach that port).
type Kind int

// The kinds of home network. nat.go builds each one's nftables ruleset.
const (
	// FullCone: endpoint-independent mapping and endpoint-independent
	// filtering. Linux has no such NAT; it is emulated (see nat.go): once a
	// LAN socket has sent a UDP datagram out, any sender may reach its
	// mapped port.
	FullCone Kind = iota + 1
	// Masquerade: endpoint-independent mapping, address-and-port-dependent
	// filtering — the common home router, Linux `masquerade`, which keeps a
	// socket's port for every destination when it can.
	Masquerade
	// Symmetric: address-and-port-dependent mapping (a new random public
	// port for every destination) and address-and-port-dependent filtering:
	// `masquerade fully-random`.
	Symmetric
	// DoubleNAT: a Masquerade home router behind a carrier-grade NAT, itself
	// a Masquerade, whose public address is the home's WAN.
	DoubleNAT
	// SameLAN: two hosts behind one Masquerade router that does not hairpin
	// (a packet from the LAN to the router's own public address is not
	// turned back into the LAN), so they reach each other only by their
	// LAN addresses.
	SameLAN
	// UDPBlocked: a Masquerade router that forwards no UDP at all, either
	// way; TCP goes through.
	UDPBlocked
)

// Kinds lists every Kind, for tables of cases.
var Kinds = []Kind{FullCone, Masquerade, Symmetric, DoubleNAT, SameLAN, UDPBlocked}

func (k Kind) String() string {
	switch k {
	case FullCone:
		return "full-cone"
	case Masquerade:
		return "masquerade"
	case Symmetric:
		return "symmetric"
	case DoubleNAT:
		return "double-nat"
	case SameLAN:
		return "same-lan"
	case UDPBlocked:
		return "udp-blocked"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// Address plan limits: home N has the LAN 198.18.N.0/24 (and, behind a
// CGNAT, the carrier network 198.19.N.0/24); NAT boxes take the internet
// addresses 203.0.113.11 to .254.
const (
	maxHomes    = 254
	firstWAN    = 11
	maxWANs     = 254 - firstWAN + 1
	publicBits  = 24
	lanBits     = 24
	routerOctet = 1 // the router's (and the CGNAT's) last octet on its inner network
)

// Home is a home network: hosts on a LAN behind a router of some Kind.
type Home struct {
	Kind Kind
	// Router is the home router, the NAT between the LAN and the internet
	// (or the CGNAT). Its Addr is its WAN address.
	Router *Namespace
	// CGNAT is the carrier's NAT in front of Router, for DoubleNAT; nil
	// otherwise. Its Addr is the home's public address.
	CGNAT *Namespace
	// Hosts are the computers on the LAN: two for SameLAN, one otherwise.
	// Each one's Addr is its LAN address.
	Hosts []*Namespace
	// WAN is the home's public address: what servers on the internet see
	// as the source of its packets.
	WAN netip.Addr
	// LAN is the home network; the router is .1 on it, the hosts .2 on.
	LAN netip.Prefix
}

// Host returns the first host on the LAN.
func (h *Home) Host() *Namespace { return h.Hosts[0] }

// AddHome adds a home network of kind: its router (and CGNAT), its hosts,
// the links between them and the internet, addresses, default routes and
// the NAT's ruleset. The test that made the lab fails if it cannot be
// built, so call AddHome from that test's goroutine (build the homes before
// starting parallel subtests). Building a home takes some 20 to 50 ms.
func (l *Lab) AddHome(kind Kind) *Home {
	l.t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	h, err := l.addHome(kind)
	if err != nil {
		l.t.Fatalf("natlab: add a %s home: %v", kind, err)
	}
	return h
}

func (l *Lab) addHome(kind Kind) (*Home, error) {
	if kind < FullCone || kind > UDPBlocked {
		return nil, fmt.Errorf("unknown kind %d", int(kind))
	}
	if l.homes == maxHomes {
		return nil, fmt.Errorf("a lab holds at most %d homes", maxHomes)
	}
	l.homes++
	n := byte(l.homes)
	role := "h" + strconv.Itoa(l.homes)
	inetPort := role // the internet's end of this home's WAN link
	wan, err := l.nextWAN()
	if err != nil {
		return nil, err
	}
	h := &Home{Kind: kind, WAN: wan, LAN: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, n, 0}), lanBits)}

	// Behind a CGNAT the router's WAN is on the carrier network
	// 198.19.N.0/24 (CGNAT .1, router .2) and the CGNAT has the public
	// address; otherwise the router has it.
	routerWAN, gateway := wan, InternetA
	if kind == DoubleNAT {
		gateway = netip.AddrFrom4([4]byte{198, 19, n, routerOctet})
		routerWAN = gateway.Next()
		if h.CGNAT, err = l.addNamespace(role+"-cgnat", wan, forwarding); err != nil {
			return nil, err
		}
	}
	if h.Router, err = l.addNamespace(role+"-router", routerWAN, forwarding); err != nil {
		return nil, err
	}
	hosts := 1
	if kind == SameLAN {
		hosts = 2
	}
	for i := range hosts {
		addr := netip.AddrFrom4([4]byte{198, 18, n, byte(routerOctet + 1 + i)})
		host, err := l.addNamespace(role+"-host"+strconv.Itoa(i+1), addr)
		if err != nil {
			return nil, err
		}
		h.Hosts = append(h.Hosts, host)
	}

	// The box on the internet creates the WAN link, the router the LAN: a
	// bridge with a veth to each host.
	edge := h.Router
	if kind == DoubleNAT {
		edge = h.CGNAT
		err := l.batch(h.CGNAT,
			"link set lo up",
			addVeth("lan0", "wan0", h.Router),
			"addr add "+netip.PrefixFrom(gateway, lanBits).String()+" dev lan0",
			"link set lan0 up",
			addVeth("wan0", inetPort, l.Internet),
			"addr add "+netip.PrefixFrom(wan, publicBits).String()+" dev wan0",
			"link set wan0 up",
			"route add default via "+InternetA.String(),
		)
		if err != nil {
			return nil, err
		}
		if err := l.nft(h.CGNAT, ruleset(Masquerade)); err != nil {
			return nil, err
		}
	}
	gw := netip.AddrFrom4([4]byte{198, 18, n, routerOctet})
	lines := []string{"link set lo up", addBridge("lan0")}
	for i, host := range h.Hosts {
		port := "lan" + strconv.Itoa(i+1)
		lines = append(lines, addVeth(port, "eth0", host), "link set "+port+" master lan0", "link set "+port+" up")
	}
	lines = append(lines, "addr add "+netip.PrefixFrom(gw, lanBits).String()+" dev lan0", "link set lan0 up")
	if edge == h.Router {
		lines = append(lines, addVeth("wan0", inetPort, l.Internet))
	}
	lines = append(lines,
		"addr add "+netip.PrefixFrom(routerWAN, publicBits).String()+" dev wan0",
		"link set wan0 up",
		"route add default via "+gateway.String(),
	)
	if err := l.batch(h.Router, lines...); err != nil {
		return nil, err
	}
	if err := l.nft(h.Router, ruleset(kind)); err != nil {
		return nil, err
	}
	if err := l.batch(l.Internet, "link set "+inetPort+" master inet0", "link set "+inetPort+" up"); err != nil {
		return nil, err
	}
	for _, host := range h.Hosts {
		err := l.batch(host,
			"link set lo up",
			"addr add "+netip.PrefixFrom(host.Addr, lanBits).String()+" dev eth0",
			"link set eth0 up",
			"route add default via "+gw.String(),
		)
		if err != nil {
			return nil, err
		}
	}
	for _, host := range h.Hosts {
		if err := l.awaitInternet(host); err != nil {
			return nil, err
		}
	}
	return h, nil
}

// awaitInternet returns once host reaches the internet through its NAT(s),
// by TCP (which every kind forwards), so that a test's first datagram does
// not race the set-up. The kernel may bring a fresh link into service a
// little after ip(8) returns (a device's queue is attached by link-watch
// work, which it may batch up to a second later), and a test that sends
// one STUN request at once and gives up after a second then fails for the
// lab, not for what it tests. Each attempt is short, so the wait ends soon
// after the path works rather than at TCP's one-second SYN retransmission.
func (l *Lab) awaitInternet(host *Namespace) error {
	var ln *net.TCPListener
	err := l.Internet.Do(func() (err error) {
		ln, err = net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(InternetA, 0)))
		return err
	})
	if err != nil {
		return fmt.Errorf("listen in the internet to check the path from %s: %w", host.Name, err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	addr := ln.Addr().(*net.TCPAddr).AddrPort()
	deadline := time.Now().Add(reachWait)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		c, err := host.DialTCP(ctx, addr)
		cancel()
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s does not reach %s by TCP after %v: %w", host.Name, addr, reachWait, err)
		}
	}
}

// reachWait bounds awaitInternet: the link-watch delay is at most a second,
// the rest is room for a loaded machine.
const reachWait = 15 * time.Second

// Renumber gives the home a new public address, as a new lease from the
// provider or a phone moving from Wi-Fi to its mobile network does: the
// router's WAN address changes, and with it every NAT mapping (masquerade
// forgets the connections of an address that goes away, so the next
// packet of each leaves from the new address, on a new mapping). It
// returns the new address. Not for DoubleNAT, whose public address is the
// CGNAT's.
func (l *Lab) Renumber(h *Home) netip.Addr {
	l.t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if h.Kind == DoubleNAT {
		l.t.Fatalf("natlab: renumber a %s home: its public address is the carrier's", h.Kind)
	}
	wan, err := l.nextWAN()
	if err == nil {
		err = l.batch(h.Router,
			"addr del "+netip.PrefixFrom(h.WAN, publicBits).String()+" dev wan0",
			"addr add "+netip.PrefixFrom(wan, publicBits).String()+" dev wan0",
			"route replace default via "+InternetA.String(),
		)
	}
	if err != nil {
		l.t.Fatalf("natlab: renumber the %s home at %s: %v", h.Kind, h.WAN, err)
	}
	h.WAN, h.Router.Addr = wan, wan
	return wan
}

// forwarding makes a namespace a router.
var forwarding = setting{key: "net/ipv4/ip_forward", value: "1"}

// nextWAN hands out the next internet address for a NAT box.
func (l *Lab) nextWAN() (netip.Addr, error) {
	if l.wans == maxWANs {
		return netip.Addr{}, fmt.Errorf("a lab holds at most %d NAT boxes on the internet", maxWANs)
	}
	l.wans++
	return netip.AddrFrom4([4]byte{203, 0, 113, byte(firstWAN - 1 + l.wans)}), nil
}

package natlab

// tableName is the nftables table (family ip) a NAT box's rules live in.
const tableName = "natlab"

// fullConeTimeout is how long the full-cone emulation keeps a mapped port
// open to every sender after the LAN socket last sent through it: longer
// than conntrack's UDP timeouts (30 s unanswered, 120 s answered), so that
// the filter never outlives nor undercuts the mapping by much.
const fullConeTimeout = "180s"

// ruleset returns the nftables ruleset of a NAT box of kind; "wan0" is its
// outside interface, everything else is inside.
//
// Every kind shares a stateful firewall like a home router's (OpenWrt's
// wan zone): from wan0, only packets of a connection the inside opened
// (conntrack established or related) are forwarded or delivered to the box
// itself; the rest is dropped. Dropping unsolicited packets to the box
// matters for hole punching: a packet that reached a closed port of the box
// would leave a conntrack entry whose tuple could later force the NAT to
// move a mapping to another port; a dropped one leaves none.
//
// Mapping (RFC 4787 §4.1) comes from the postrouting nat rule:
//   - masquerade keeps the inside socket's port when no other connection
//     holds that public tuple, so one socket gets the same public port for
//     every destination: endpoint-independent mapping in practice (two
//     inside sockets with the same port to the same destination would get
//     different ones, which the tests never do);
//   - masquerade fully-random picks a random port for every new connection
//     (every new destination address or port): address-and-port-dependent
//     mapping, "symmetric".
//
// Filtering (§5) comes from conntrack: a reply must match the exact tuple of
// a connection the inside opened, so filtering is address-and-port
// dependent — except FullCone's, see fullCone.
//
// Nothing hairpins: a packet from the LAN to the box's own public address
// is delivered to the box, which has no socket there, not turned back into
// the LAN.
func ruleset(kind Kind) string {
	snat, dnat, forward, extra := "masquerade", "", "", ""
	switch kind {
	case Symmetric:
		snat = "masquerade fully-random"
	case FullCone:
		dnat, forward, extra = fullCone()
	case UDPBlocked:
		forward = `
		meta l4proto udp iifname "wan0" drop
		meta l4proto udp oifname "wan0" drop`
	}
	return `table ip ` + tableName + ` {` + extra + `
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;` + dnat + `
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "wan0" ` + snat + `
	}
	chain forward {
		type filter hook forward priority filter; policy accept;` + forward + `
		iifname "wan0" ct state established,related accept
		iifname "wan0" drop
	}
	chain input {
		type filter hook input priority filter; policy accept;
		iifname "wan0" ct state established,related accept
		iifname "wan0" drop
	}
}
`
}

// fullCone returns the rules that add endpoint-independent filtering to a
// masquerading box, which Linux does not have. A map from public UDP port
// to inside address and port is filled as UDP leaves through wan0 (after
// masquerade, so the key is the mapped port; the value is the connection's
// original source); a UDP packet arriving on wan0 for a port in the map is
// destination-NATed to that socket, whoever sent it, and forwarded.
//
// Limits of the emulation: UDP only (TCP keeps address-and-port-dependent
// filtering); an entry lives fullConeTimeout after the socket last sent,
// independently of conntrack's mapping, which masquerade could give to
// another socket once expired (no test waits that long); and two inside
// sockets that masquerade gave one public port (it may, when their
// destinations differ) share one entry: unsolicited packets go to the one
// that sent last. Replies to a forwarded packet leave through the conntrack
// entry its dnat created, so they carry the same public port.
func fullCone() (dnat, forward, extra string) {
	extra = `
	map fullcone {
		type inet_service : ipv4_addr . inet_service
		flags timeout
		timeout ` + fullConeTimeout + `
	}
	chain remember {
		type filter hook postrouting priority srcnat + 10; policy accept;
		oifname "wan0" meta l4proto udp update @fullcone { udp sport timeout ` + fullConeTimeout + ` : ct original ip saddr . ct original proto-src }
	}`
	dnat = `
		iifname "wan0" meta l4proto udp dnat ip to udp dport map @fullcone`
	forward = `
		iifname "wan0" ct status dnat accept`
	return dnat, forward, extra
}

package dnsserver

import (
	"net/netip"
	"strings"

	"github.com/miekg/dns"
)

// Link steering: in a cluster of nasreach nodes (device table on etcd),
// the zone tells a Link client which node's relay holds a device's agent,
// so that the client connects straight to it:
//
//	_link.<device>.<zone>                  A, AAAA  the holding node's advertised addresses
//	_nasreach-link._udp.<device>.<zone>    SRV      0 0 <port> _link.<device>.<zone>.
//
// The SRV owner follows RFC 2782 (_service._proto.name; the relay is QUIC
// over UDP); its target's addresses come in the additional section. The
// answers come from the cluster's presence records (memory, fed by etcd's
// watch, the same on every node) with a TTL of LinkTTL, so a client
// follows an agent that moved within seconds. A device that does not
// resolve (unknown, or DDNS off: the README promises that its name is then
// NXDOMAIN, and these names would tell that it exists and is online) is
// NXDOMAIN; a resolvable device whose agent is not online (or whose Link is
// off, which disconnects its agent) has the names with no data (NODATA).
// Secondaries do not have these names: they are not in zone transfers.

// LinkTTL is the TTL of the steering answers: an agent that moves to
// another node (its node died) is recorded there within seconds, and
// clients should see it as soon.
const LinkTTL = 5

// Owner names of the steering records, below a device's name.
const (
	linkLabel    = "_link"
	linkSRVLabel = "_nasreach-link._udp"
)

// linkName returns the device a steering name (label: the query name
// without the zone) is about, and whether it asks for the SRV.
func linkName(label string) (device string, srv, ok bool) {
	if device, ok = strings.CutPrefix(label, linkLabel+"."); !ok {
		if device, ok = strings.CutPrefix(label, linkSRVLabel+"."); !ok {
			return "", false, false
		}
		srv = true
	}
	return device, srv, device != "" && !strings.Contains(device, ".")
}

// answerLink answers a steering name of device.
func (s *Server) answerLink(m *dns.Msg, q dns.Question, device string, srv bool) {
	if _, ok := s.src.Lookup(device); !ok {
		s.nxdomain(m)
		return
	}
	relays := s.linkRelays(device)
	if len(relays) == 0 {
		m.Ns = append(m.Ns, s.negativeSOA())
		return
	}
	addrs := make([]netip.Addr, 0, len(relays))
	for _, r := range relays {
		addrs = append(addrs, r.Addr().Unmap())
	}
	if !srv {
		s.answerAddrs(m, q, LinkTTL, addrs...)
		return
	}
	if q.Qtype != dns.TypeSRV && q.Qtype != dns.TypeANY {
		m.Ns = append(m.Ns, s.negativeSOA())
		return
	}
	target := linkLabel + "." + device + "." + s.zone
	m.Answer = append(m.Answer, &dns.SRV{
		Hdr:    dns.RR_Header{Name: q.Name, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: LinkTTL},
		Target: target, Port: relays[0].Port(),
	})
	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		extra := new(dns.Msg)
		s.answerAddrs(extra, dns.Question{Name: target, Qtype: qt, Qclass: dns.ClassINET}, LinkTTL, addrs...)
		m.Extra = append(extra.Answer, m.Extra...)
	}
}

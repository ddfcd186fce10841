package dnsserver

import (
	"net/netip"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// TestLinkSteeringAnswersOverUDPAndTCP: the steering names of a cluster
// (link.go) answer with the holding node's addresses and port, NODATA for
// a device whose agent is not online, NXDOMAIN for a name that does not
// resolve (unknown, DDNS off); without presence they are ordinary names
// below the device.
func TestLinkSteeringAnswersOverUDPAndTCP(t *testing.T) {
	st := openStore(t)
	addDevice(t, st, "nas1", "198.51.100.1", "")
	addDevice(t, st, "idle", "198.51.100.2", "")
	addDevice(t, st, "hidden", "198.51.100.3", "")
	setDDNS(t, st, "hidden", false)
	var mu sync.Mutex
	relays := map[string][]netip.AddrPort{
		"nas1":   {netip.MustParseAddrPort("192.0.2.10:7443"), netip.MustParseAddrPort("[2001:db8::10]:7443")},
		"hidden": {netip.MustParseAddrPort("192.0.2.10:7443")},
	}
	linkRelays := func(device string) []netip.AddrPort {
		mu.Lock()
		defer mu.Unlock()
		return relays[device]
	}
	servers := map[string]*Server{
		srvMain:  startServer(t, Config{Source: st, LinkRelays: linkRelays}),
		"plain":  startServer(t, Config{Source: st}),
		srvExact: startServer(t, Config{Source: st, Zone: "Example.TEST", ExactNamesOnly: true, LinkRelays: linkRelays}),
	}
	const (
		a    = "_link.nas1.myqnapcloud.com."
		srv  = "_nasreach-link._udp.nas1.myqnapcloud.com."
		soaX = "example.test. 60 IN SOA ns1.example.test. hostmaster.example.test. {serial} 1800 300 1209600 60"
	)
	cases := []dnsCase{
		{name: "A of _link is the holding node's IPv4", qname: a, qtype: dns.TypeA, aa: true,
			answer: []string{a + " 5 IN A 192.0.2.10"}},
		{name: "AAAA of _link is the holding node's IPv6", qname: a, qtype: dns.TypeAAAA, aa: true,
			answer: []string{a + " 5 IN AAAA 2001:db8::10"}},
		{name: "SRV gives the port and the _link target, its addresses additional over TCP", qname: srv, qtype: dns.TypeSRV, aa: true,
			answer:   []string{srv + " 5 IN SRV 0 0 7443 " + a},
			tcpExtra: []string{a + " 5 IN A 192.0.2.10", a + " 5 IN AAAA 2001:db8::10"}}, // UDP answers are minimal (amplification.go)
		{name: "TXT at _link is NODATA", qname: a, qtype: dns.TypeTXT, aa: true, ns: []string{soaNegative}},
		{name: "A at the SRV name is NODATA", qname: srv, qtype: dns.TypeA, aa: true, ns: []string{soaNegative}},
		{name: "a device whose agent is offline has no relay: NODATA", qname: "_link.idle.myqnapcloud.com.", qtype: dns.TypeA, aa: true,
			ns: []string{soaNegative}},
		{name: "SRV of a device offline: NODATA", qname: "_nasreach-link._udp.idle.myqnapcloud.com.", qtype: dns.TypeSRV, aa: true,
			ns: []string{soaNegative}},
		{name: "an unknown device is NXDOMAIN", qname: "_link.nosuch.myqnapcloud.com.", qtype: dns.TypeA, aa: true,
			rcode: dns.RcodeNameError, ns: []string{soaNegative}},
		{name: "DDNS off hides the relay name too, online or not", qname: "_link.hidden.myqnapcloud.com.", qtype: dns.TypeA, aa: true,
			rcode: dns.RcodeNameError, ns: []string{soaNegative}},
		{name: "exact names: the steering name is answered", server: srvExact, qname: "_link.nas1.example.test.", qtype: dns.TypeA, aa: true,
			answer: []string{"_link.nas1.example.test. 5 IN A 192.0.2.10"}},
		{name: "exact names: below it is NXDOMAIN", server: srvExact, qname: "x._link.nas1.example.test.", qtype: dns.TypeA, aa: true,
			rcode: dns.RcodeNameError, ns: []string{soaX}},
		{name: "without presence (one node on bbolt) _link is a name below the device", server: "plain", qname: a, qtype: dns.TypeA, aa: true,
			answer: []string{a + " 60 IN A 198.51.100.1"}},
	}
	runCases(t, st, servers, cases)

	// The agent moves or leaves: the next answer follows.
	mu.Lock()
	relays["nas1"] = []netip.AddrPort{netip.MustParseAddrPort("192.0.2.11:7443")}
	delete(relays, "hidden")
	mu.Unlock()
	runCases(t, st, servers, []dnsCase{
		{name: "an agent that moved is answered at its new node", qname: a, qtype: dns.TypeA, aa: true,
			answer: []string{a + " 5 IN A 192.0.2.11"}},
		{name: "and no IPv6 there is NODATA", qname: a, qtype: dns.TypeAAAA, aa: true, ns: []string{soaNegative}},
	})
}

package dnsserver

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/store"
)

// The SOA records of the main test server (zone myqnapcloud.com, default TTLs):
// at the apex with the SOA TTL, and in the authority section of negative
// answers with min(SOA TTL, MINIMUM) = 60 (RFC 2308).
const (
	soaApex     = "myqnapcloud.com. 3600 IN SOA ns1.myqnapcloud.com. hostmaster.myqnapcloud.com. {serial} 1800 300 1209600 60"
	soaNegative = "myqnapcloud.com. 60 IN SOA ns1.myqnapcloud.com. hostmaster.myqnapcloud.com. {serial} 1800 300 1209600 60"
	// The ExactNamesOnly server has TTL 2h, longer than the SOA TTL, so its
	// negative TTL is the SOA TTL while MINIMUM says 7200.
	soaExactNegative = "example.test. 3600 IN SOA ns1.example.test. dns-admin.example.net. {serial} 1800 300 1209600 7200"
	soaExactApex     = soaExactNegative
)

// The servers the table runs against; they all answer from one store.
const (
	srvMain     = ""         // default zone and TTLs, two in-zone nameservers and one outside
	srvDefaults = "defaults" // nothing configured but Addr and Source
	srvExact    = "exact"    // ExactNamesOnly, zone Example.TEST, TTL 2h
	srvMid      = "mid"      // 10 nameservers with glue: the NS answer is over 3 times its query
	srvBig      = "big"      // 20 nameservers with glue: the NS answer with glue is over 1232 bytes
)

// ednsQuery is the OPT record a test query carries.
type ednsQuery struct {
	size    uint16
	version uint8
	flags   uint16 // the 16 flag bits of the OPT TTL: DO, CO, Z
	options []dns.EDNS0
}

// wantOPT is the OPT record expected in a reply: version 0, and no flag other
// than DO.
type wantOPT struct {
	size    uint16
	do      bool
	options []dns.EDNS0
}

// dnsCase is one query and the exact reply expected, over UDP and over TCP.
type dnsCase struct {
	name   string // the behaviour shown
	server string // which test server answers (srvMain etc.)

	// The query: built from these fields, or raw bytes sent as they are.
	qname  string
	qtype  uint16
	qclass uint16 // 0 means IN
	rd     bool
	opcode int
	edns   *ednsQuery
	mangle func(*dns.Msg) // makes a built query malformed
	raw    []byte

	// change is a store change made before the query (once, not per transport).
	change func(context.Context, *store.Store) error

	// The reply. Records use {serial} for the zone's current serial.
	noReply           bool
	rcode             int
	aa                bool
	answer, ns, extra []string // without the OPT record
	// tcpExtra are additional records sent over TCP only: UDP answers leave
	// the nameservers' glue out (minimal responses).
	tcpExtra []string
	opt      *wantOPT // nil: no OPT in the reply
	// truncatedOverUDP: over UDP TC is set and every section is empty but
	// for the OPT (the answer is over 3 times its query: the client must
	// ask over TCP); over TCP the full answer comes without TC.
	truncatedOverUDP bool
	// serialBumped: the SOA in the reply is newer than before change ran.
	serialBumped bool
}

func TestAnswersOverUDPAndTCP(t *testing.T) {
	st := openStore(t)
	addDevice(t, st, "nas1", "198.51.100.1", "2001:db8:1::1")
	addDevice(t, st, "cam", "198.51.100.2", "")
	addDevice(t, st, "fresh", "", "")
	addDevice(t, st, "sleepy", "198.51.100.3", "")
	setDDNS(t, st, "sleepy", false)
	addDevice(t, st, "toggle", "203.0.113.7", "")
	addDevice(t, st, "v6only", "", "2001:db8:2::1")

	servers := map[string]*Server{
		srvMain: startServer(t, Config{Source: st, NameServers: []NameServer{
			{Name: "ns1", Addrs: mustAddrs("192.0.2.53", "2001:db8::53")},
			{Name: "NS2.myqnapcloud.com", Addrs: mustAddrs("192.0.2.54", "::ffff:192.0.2.55")},
			{Name: "ns.example.net."},
		}}),
		srvDefaults: startServer(t, Config{Source: st}),
		srvExact: startServer(t, Config{
			Source: st, Zone: "Example.TEST", ExactNamesOnly: true, TTL: 2 * time.Hour,
			Hostmaster: "dns-admin.example.net", NameServers: []NameServer{{Name: "ns1", Addrs: mustAddrs("192.0.2.53")}},
		}),
		srvMid: startServer(t, Config{Source: st, Zone: "mid.test", NameServers: manyNameServers(10)}),
		srvBig: startServer(t, Config{Source: st, Zone: "big.test", NameServers: manyNameServers(20)}),
	}

	noErrorNoData := []string{soaNegative}
	cases := []dnsCase{
		// The apex.
		{name: "SOA at the apex", qname: "myqnapcloud.com.", qtype: dns.TypeSOA, aa: true,
			answer: []string{soaApex}},
		{name: "NS at the apex, with in-zone glue in the additional section over TCP only", qname: "myqnapcloud.com.", qtype: dns.TypeNS, aa: true,
			answer: []string{
				"myqnapcloud.com. 3600 IN NS ns1.myqnapcloud.com.",
				"myqnapcloud.com. 3600 IN NS ns2.myqnapcloud.com.",
				"myqnapcloud.com. 3600 IN NS ns.example.net.",
			},
			tcpExtra: []string{
				"ns1.myqnapcloud.com. 3600 IN A 192.0.2.53",
				"ns1.myqnapcloud.com. 3600 IN AAAA 2001:db8::53",
				"ns2.myqnapcloud.com. 3600 IN A 192.0.2.54",
				"ns2.myqnapcloud.com. 3600 IN A 192.0.2.55",
			}},
		{name: "A at the apex is NODATA", qname: "myqnapcloud.com.", qtype: dns.TypeA, aa: true, ns: noErrorNoData},
		{name: "MX at the apex is NODATA", qname: "myqnapcloud.com.", qtype: dns.TypeMX, aa: true, ns: noErrorNoData},
		{name: "ANY at the apex gives the SOA alone (RFC 8482)", qname: "myqnapcloud.com.", qtype: dns.TypeANY, aa: true,
			answer: []string{soaApex}},
		{name: "apex keeps the query's spelling", qname: "MyQnapCloud.COM.", qtype: dns.TypeSOA, aa: true,
			answer: []string{strings.Replace(soaApex, "myqnapcloud.com.", "MyQnapCloud.COM.", 1)}},
		{name: "recursion desired is copied, recursion available stays clear", qname: "myqnapcloud.com.", qtype: dns.TypeSOA, rd: true, aa: true,
			answer: []string{soaApex}},

		// Nameserver names are answered from their glue, with the glue's TTL.
		{name: "A of an in-zone nameserver comes from its glue", qname: "ns1.myqnapcloud.com.", qtype: dns.TypeA, aa: true,
			answer: []string{"ns1.myqnapcloud.com. 3600 IN A 192.0.2.53"}},
		{name: "AAAA of an in-zone nameserver comes from its glue", qname: "NS1.myqnapcloud.com.", qtype: dns.TypeAAAA, aa: true,
			answer: []string{"NS1.myqnapcloud.com. 3600 IN AAAA 2001:db8::53"}},
		{name: "A of a nameserver with two IPv4 addresses gives both", qname: "ns2.myqnapcloud.com.", qtype: dns.TypeA, aa: true,
			answer: []string{"ns2.myqnapcloud.com. 3600 IN A 192.0.2.54", "ns2.myqnapcloud.com. 3600 IN A 192.0.2.55"}},
		{name: "nameserver without IPv6 glue is NODATA for AAAA", qname: "ns2.myqnapcloud.com.", qtype: dns.TypeAAAA, aa: true, ns: noErrorNoData},

		// Devices.
		{name: "A of a device", qname: "nas1.myqnapcloud.com.", qtype: dns.TypeA, aa: true,
			answer: []string{"nas1.myqnapcloud.com. 60 IN A 198.51.100.1"}},
		{name: "AAAA of a device", qname: "nas1.myqnapcloud.com.", qtype: dns.TypeAAAA, aa: true, rd: true,
			answer: []string{"nas1.myqnapcloud.com. 60 IN AAAA 2001:db8:1::1"}},
		{name: "ANY of a device gives its A alone (RFC 8482)", qname: "nas1.myqnapcloud.com.", qtype: dns.TypeANY, aa: true,
			answer: []string{"nas1.myqnapcloud.com. 60 IN A 198.51.100.1"}},
		{name: "ANY of a device with IPv6 only gives its AAAA", qname: "v6only.myqnapcloud.com.", qtype: dns.TypeANY, aa: true,
			answer: []string{"v6only.myqnapcloud.com. 60 IN AAAA 2001:db8:2::1"}},
		{name: "ANY of a device without an address is NODATA", qname: "fresh.myqnapcloud.com.", qtype: dns.TypeANY, aa: true, ns: noErrorNoData},
		{name: "ANY of a nameserver gives its A RRset", qname: "ns2.myqnapcloud.com.", qtype: dns.TypeANY, aa: true,
			answer: []string{"ns2.myqnapcloud.com. 3600 IN A 192.0.2.54", "ns2.myqnapcloud.com. 3600 IN A 192.0.2.55"}},
		{name: "class ANY query is answered from class IN", qname: "nas1.myqnapcloud.com.", qtype: dns.TypeA, qclass: dns.ClassANY, aa: true,
			answer: []string{"nas1.myqnapcloud.com. 60 IN A 198.51.100.1"}},
		{name: "mixed-case query keeps its spelling in the answer", qname: "NaS1.MyQnapCloud.CoM.", qtype: dns.TypeA, aa: true,
			answer: []string{"NaS1.MyQnapCloud.CoM. 60 IN A 198.51.100.1"}},
		{name: "device without IPv6 is NODATA for AAAA", qname: "cam.myqnapcloud.com.", qtype: dns.TypeAAAA, aa: true, ns: noErrorNoData},
		{name: "device is NODATA for MX", qname: "nas1.myqnapcloud.com.", qtype: dns.TypeMX, aa: true, ns: noErrorNoData},
		{name: "device that never sent an address is NODATA", qname: "fresh.myqnapcloud.com.", qtype: dns.TypeA, aa: true, ns: noErrorNoData},
		{name: "unknown name is NXDOMAIN with the SOA", qname: "nosuch.myqnapcloud.com.", qtype: dns.TypeA, aa: true,
			rcode: dns.RcodeNameError, ns: []string{soaNegative}},
		{name: "device with ddns off is NXDOMAIN", qname: "sleepy.myqnapcloud.com.", qtype: dns.TypeA, aa: true,
			rcode: dns.RcodeNameError, ns: []string{soaNegative}},
		{name: "name below a device answers as the device", qname: "www.nas1.myqnapcloud.com.", qtype: dns.TypeA, aa: true,
			answer: []string{"www.nas1.myqnapcloud.com. 60 IN A 198.51.100.1"}},
		{name: "name two labels below a device answers as the device", qname: "a.B.nas1.myqnapcloud.com.", qtype: dns.TypeAAAA, aa: true,
			answer: []string{"a.B.nas1.myqnapcloud.com. 60 IN AAAA 2001:db8:1::1"}},
		{name: "name below an unknown name is NXDOMAIN", qname: "www.nosuch.myqnapcloud.com.", qtype: dns.TypeA, aa: true,
			rcode: dns.RcodeNameError, ns: []string{soaNegative}},

		// ExactNamesOnly, configured zone, TTL and hostmaster.
		{name: "exact names: device answers with the configured TTL", server: srvExact, qname: "nas1.example.test.", qtype: dns.TypeA, aa: true,
			answer: []string{"nas1.example.test. 7200 IN A 198.51.100.1"}},
		{name: "exact names: name below a device is NXDOMAIN", server: srvExact, qname: "www.nas1.example.test.", qtype: dns.TypeA, aa: true,
			rcode: dns.RcodeNameError, ns: []string{soaExactNegative}},
		{name: "exact names: negative TTL is min(SOA TTL, MINIMUM)", server: srvExact, qname: "nas1.EXAMPLE.test.", qtype: dns.TypeTXT, aa: true,
			ns: []string{soaExactNegative}},
		{name: "exact names: other zones are refused", server: srvExact, qname: "nas1.myqnapcloud.com.", qtype: dns.TypeA,
			rcode: dns.RcodeRefused},
		{name: "exact names: the SOA with its long hostmaster, over 3 times a query without EDNS, is truncated over UDP", server: srvExact,
			qname: "example.test.", qtype: dns.TypeSOA, aa: true, answer: []string{soaExactApex}, truncatedOverUDP: true},
		{name: "exact names: the same SOA query with EDNS gets the SOA over UDP", server: srvExact,
			qname: "example.test.", qtype: dns.TypeSOA, aa: true, edns: &ednsQuery{size: 1232}, answer: []string{soaExactApex}, opt: &wantOPT{size: 1232}},

		// Defaults.
		{name: "defaults: zone myqnapcloud.com served by ns1 with glue 127.0.0.1", server: srvDefaults, qname: "myqnapcloud.com.", qtype: dns.TypeNS, aa: true,
			answer:   []string{"myqnapcloud.com. 3600 IN NS ns1.myqnapcloud.com."},
			tcpExtra: []string{"ns1.myqnapcloud.com. 3600 IN A 127.0.0.1"}},
		{name: "defaults: device TTL is 60s", server: srvDefaults, qname: "nas1.myqnapcloud.com.", qtype: dns.TypeA, aa: true,
			answer: []string{"nas1.myqnapcloud.com. 60 IN A 198.51.100.1"}},

		// Outside the zone, other classes, zone transfers.
		{name: "name outside the zone is REFUSED without AA", qname: "example.com.", qtype: dns.TypeA, rcode: dns.RcodeRefused},
		{name: "parent of the zone is REFUSED", qname: "com.", qtype: dns.TypeNS, rcode: dns.RcodeRefused},
		{name: "name sharing the zone's suffix but not its labels is REFUSED", qname: "xmyqnapcloud.com.", qtype: dns.TypeA, rcode: dns.RcodeRefused},
		{name: "root is REFUSED", qname: ".", qtype: dns.TypeNS, rcode: dns.RcodeRefused},
		{name: "name outside the zone with EDNS carries EDE 20 Not Authoritative", qname: "example.com.", qtype: dns.TypeA,
			edns: &ednsQuery{size: 1232}, rcode: dns.RcodeRefused,
			opt: &wantOPT{size: 1232, options: []dns.EDNS0{&dns.EDNS0_EDE{InfoCode: dns.ExtendedErrorCodeNotAuthoritative}}}},
		{name: "class CH is REFUSED", qname: "version.bind.", qtype: dns.TypeTXT, qclass: dns.ClassCHAOS, rcode: dns.RcodeRefused},
		{name: "class CH in the zone is REFUSED", qname: "nas1.myqnapcloud.com.", qtype: dns.TypeA, qclass: dns.ClassCHAOS, rcode: dns.RcodeRefused},
		{name: "zone transfer is REFUSED", qname: "myqnapcloud.com.", qtype: dns.TypeAXFR, rcode: dns.RcodeRefused},

		// EDNS (RFC 6891).
		{name: "EDNS query gets an OPT with our size", qname: "nas1.myqnapcloud.com.", qtype: dns.TypeA, aa: true,
			edns:   &ednsQuery{size: 4096},
			answer: []string{"nas1.myqnapcloud.com. 60 IN A 198.51.100.1"},
			opt:    &wantOPT{size: 1232}},
		{name: "EDNS NXDOMAIN carries the OPT", qname: "nosuch.myqnapcloud.com.", qtype: dns.TypeA, aa: true,
			edns:  &ednsQuery{size: 512},
			rcode: dns.RcodeNameError, ns: []string{soaNegative}, opt: &wantOPT{size: 1232}},
		{name: "DO is echoed, CO and Z bits are not", qname: "nas1.myqnapcloud.com.", qtype: dns.TypeA, aa: true,
			edns:   &ednsQuery{size: 1232, flags: 1<<15 | 1<<14 | 0x0101},
			answer: []string{"nas1.myqnapcloud.com. 60 IN A 198.51.100.1"},
			opt:    &wantOPT{size: 1232, do: true}},
		{name: "unknown Z bits alone are not echoed", qname: "nas1.myqnapcloud.com.", qtype: dns.TypeA, aa: true,
			edns:   &ednsQuery{size: 1232, flags: 0x3FFF},
			answer: []string{"nas1.myqnapcloud.com. 60 IN A 198.51.100.1"},
			opt:    &wantOPT{size: 1232}},
		{name: "unknown EDNS options are ignored and not echoed", qname: "nas1.myqnapcloud.com.", qtype: dns.TypeA, aa: true,
			edns: &ednsQuery{size: 1232, options: []dns.EDNS0{
				&dns.EDNS0_LOCAL{Code: 65001, Data: []byte("x")},
				&dns.EDNS0_NSID{Code: dns.EDNS0NSID},
				&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"},
			}},
			answer: []string{"nas1.myqnapcloud.com. 60 IN A 198.51.100.1"},
			opt:    &wantOPT{size: 1232}},
		{name: "EDNS version 1 is BADVERS with an OPT of version 0", qname: "nas1.myqnapcloud.com.", qtype: dns.TypeA,
			edns:  &ednsQuery{size: 1232, version: 1},
			rcode: dns.RcodeBadVers, opt: &wantOPT{size: 1232}},
		{name: "two OPT records are FORMERR", qname: "nas1.myqnapcloud.com.", qtype: dns.TypeA, rd: true,
			edns:   &ednsQuery{size: 1232},
			mangle: func(m *dns.Msg) { m.Extra = append(m.Extra, m.Extra[0]) },
			rcode:  dns.RcodeFormatError},
		{name: "OPT with an owner other than the root is FORMERR", qname: "nas1.myqnapcloud.com.", qtype: dns.TypeA,
			edns:   &ednsQuery{size: 1232},
			mangle: func(m *dns.Msg) { m.Extra[0].Header().Name = "nas1.myqnapcloud.com." },
			rcode:  dns.RcodeFormatError},
		{name: "query for type OPT is FORMERR", qname: "nas1.myqnapcloud.com.", qtype: dns.TypeOPT, rcode: dns.RcodeFormatError},
		{name: "query with a record in the answer section is FORMERR", qname: "nas1.myqnapcloud.com.", qtype: dns.TypeA,
			mangle: func(m *dns.Msg) { m.Answer = append(m.Answer, mustRR("nas1.myqnapcloud.com. 60 IN A 192.0.2.1")) },
			rcode:  dns.RcodeFormatError},

		// Sizes: an answer over 3 times its query comes empty with TC over UDP
		// (bigger ones too, whatever EDNS size the client offers), whole over TCP.
		{name: "without EDNS the 10-nameserver NS answer, over 3 times its query, is truncated over UDP", server: srvMid, qname: "mid.test.", qtype: dns.TypeNS, aa: true,
			answer: manyNS("mid.test.", 10), tcpExtra: manyGlue("mid.test.", 10), truncatedOverUDP: true},
		{name: "EDNS 1232 does not lift the 3 times cap: the 10-nameserver NS answer is truncated over UDP", server: srvMid, qname: "mid.test.", qtype: dns.TypeNS, aa: true,
			edns:   &ednsQuery{size: 1232},
			answer: manyNS("mid.test.", 10), tcpExtra: manyGlue("mid.test.", 10), opt: &wantOPT{size: 1232}, truncatedOverUDP: true},
		{name: "EDNS 4096: the 20-nameserver NS answer is truncated over UDP and whole with its glue over TCP", server: srvBig, qname: "big.test.", qtype: dns.TypeNS, aa: true,
			edns:   &ednsQuery{size: 4096},
			answer: manyNS("big.test.", 20), tcpExtra: manyGlue("big.test.", 20), opt: &wantOPT{size: 1232}, truncatedOverUDP: true},

		// Opcodes we do not serve.
		{name: "UPDATE is NOTIMP", opcode: dns.OpcodeUpdate, qname: "myqnapcloud.com.", qtype: dns.TypeSOA, rcode: dns.RcodeNotImplemented},
		{name: "NOTIFY is NOTIMP", opcode: dns.OpcodeNotify, qname: "myqnapcloud.com.", qtype: dns.TypeSOA, rd: true, rcode: dns.RcodeNotImplemented},
		{name: "STATUS is NOTIMP", opcode: dns.OpcodeStatus, qname: "myqnapcloud.com.", qtype: dns.TypeSOA, rcode: dns.RcodeNotImplemented},

		// Malformed packets: FORMERR or silence, and the server keeps answering.
		{name: "QDCOUNT 0 is FORMERR", raw: rawHeader(0xA001, 0, 0), rcode: dns.RcodeFormatError},
		{name: "QDCOUNT 2 is FORMERR", raw: rawQuery(0xA002, 0, "nas1.myqnapcloud.com.", "cam.myqnapcloud.com."), rcode: dns.RcodeFormatError},
		{name: "QDCOUNT 1 without a question is FORMERR", raw: rawHeader(0xA003, 0, 1), rcode: dns.RcodeFormatError},
		{name: "question cut short is FORMERR", raw: rawQuery(0xA004, 0, "nas1.myqnapcloud.com.")[:20], rcode: dns.RcodeFormatError},
		{name: "RD is copied into a FORMERR", raw: rawHeader(0xA005, 1<<8, 0), rd: true, rcode: dns.RcodeFormatError},
		{name: "compression pointer loop is FORMERR", raw: append(rawHeader(0xA006, 0, 1), 0xC0, 12, 0, 1, 0, 1), rcode: dns.RcodeFormatError},
		{name: "a response (QR set) gets no reply", raw: rawQuery(0xA007, 1<<15, "nas1.myqnapcloud.com."), noReply: true},
		{name: "packet shorter than a header gets no reply", raw: []byte("hello"), noReply: true},
		{name: "empty packet gets no reply", raw: []byte{}, noReply: true},

		// Changes in the store show in the very next query.
		{name: "ddns off makes the device NXDOMAIN", qname: "toggle.myqnapcloud.com.", qtype: dns.TypeA, aa: true,
			change: func(ctx context.Context, st *store.Store) error { return ddns(ctx, st, "toggle", false) },
			rcode:  dns.RcodeNameError, ns: []string{soaNegative}, serialBumped: true},
		{name: "ddns back on answers again", qname: "toggle.myqnapcloud.com.", qtype: dns.TypeA, aa: true,
			change: func(ctx context.Context, st *store.Store) error { return ddns(ctx, st, "toggle", true) },
			answer: []string{"toggle.myqnapcloud.com. 60 IN A 203.0.113.7"}},
		{name: "address update is visible in the next query", qname: "toggle.myqnapcloud.com.", qtype: dns.TypeA, aa: true,
			change: func(ctx context.Context, st *store.Store) error { return setAddr(ctx, st, "toggle", "203.0.113.8") },
			answer: []string{"toggle.myqnapcloud.com. 60 IN A 203.0.113.8"}},
		{name: "SOA serial increases after an update", qname: "myqnapcloud.com.", qtype: dns.TypeSOA, aa: true,
			change: func(ctx context.Context, st *store.Store) error { return setAddr(ctx, st, "toggle", "203.0.113.9") },
			answer: []string{soaApex}, serialBumped: true},
		{name: "deleted device is NXDOMAIN", qname: "toggle.myqnapcloud.com.", qtype: dns.TypeA, aa: true,
			change: func(ctx context.Context, st *store.Store) error { return st.Delete(ctx, "toggle") },
			rcode:  dns.RcodeNameError, ns: []string{soaNegative}, serialBumped: true},
	}

	runCases(t, st, servers, cases)
}

// runCases runs each case against servers (which answer from st), over UDP
// and TCP, as a subtest named after the case.
func runCases(t *testing.T, st *store.Store, servers map[string]*Server, cases []dnsCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			serialBefore := st.Serial()
			if tc.change != nil {
				if err := tc.change(t.Context(), st); err != nil {
					t.Fatalf("store change: %v", err)
				}
			}
			srv := servers[tc.server]
			for _, network := range []string{"udp", "tcp"} {
				t.Run(network, func(t *testing.T) {
					req := packQuery(t, tc)
					reply, size := exchange(t, srv, network, req, tc.noReply)
					if tc.noReply {
						if reply != nil {
							t.Errorf("got a reply, expected none:\n%v", reply)
						}
						return
					}
					if reply == nil {
						t.Fatalf("got no reply")
					}
					want := tc
					if network == "tcp" {
						want.extra = append(slices.Clone(tc.extra), tc.tcpExtra...)
					}
					checkReply(t, network, want, req, reply, size, st.Serial(), serialBefore)
				})
			}
		})
	}
}

// packQuery returns the bytes of tc's query.
func packQuery(t *testing.T, tc dnsCase) []byte {
	t.Helper()
	if tc.raw != nil {
		return tc.raw
	}
	req, err := buildQuery(tc).Pack()
	if err != nil {
		t.Fatalf("pack query: %v", err)
	}
	return req
}

// exchange sends req to srv over network, followed on the same connection by a
// probe query (SOA at the apex) that must be answered: the server still works
// after whatever req was.
// It returns the reply to req (nil if none came) and its size in bytes.
func exchange(t *testing.T, srv *Server, network string, req []byte, noReply bool) (*dns.Msg, int) {
	t.Helper()
	const probeID = 0xBEEF
	// With EDNS, as resolvers ask: without, a short zone's SOA with a long
	// hostmaster is over 3 times the query, and comes over UDP truncated.
	probe := new(dns.Msg).SetQuestion(srv.Zone(), dns.TypeSOA).SetEdns0(1232, false)
	probe.Id = probeID

	c := &dns.Client{Net: network, Timeout: 2 * time.Second}
	conn, err := c.Dial(srv.Addr().String())
	if err != nil {
		t.Fatalf("dial %s %s: %v", network, srv.Addr(), err)
	}
	defer conn.Close()
	conn.UDPSize = dns.MaxMsgSize // so that an oversized UDP reply is seen whole
	if _, err := conn.Write(req); err != nil {
		t.Fatalf("send query: %v", err)
	}
	if err := conn.WriteMsg(probe); err != nil {
		t.Fatalf("send probe: %v", err)
	}

	var (
		reply     *dns.Msg
		size      int
		gotProbe  bool
		wantReply = !noReply
	)
	deadline := time.Now().Add(2 * time.Second)
	for !gotProbe || (wantReply && reply == nil) {
		conn.SetReadDeadline(deadline)
		p, err := conn.ReadMsgHeader(nil)
		if err != nil {
			t.Fatalf("waiting for replies (probe answered: %v, reply seen: %v): %v", gotProbe, reply != nil, err)
		}
		m := new(dns.Msg)
		if err := m.Unpack(p); err != nil {
			t.Fatalf("reply does not unpack: %v (%x)", err, p)
		}
		if m.Id == probeID {
			if gotProbe {
				t.Fatalf("probe answered twice")
			}
			gotProbe = true
			if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 {
				t.Fatalf("probe after the query got a broken answer: %v", m)
			}
			continue
		}
		if reply != nil {
			t.Fatalf("second reply to one query:\n%v", m)
		}
		reply, size = m, len(p)
	}
	if network == "udp" && !wantReply {
		// Datagrams are served concurrently; give a late reply the chance to show.
		conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if p, err := conn.ReadMsgHeader(nil); err == nil {
			m := new(dns.Msg)
			if m.Unpack(p) == nil {
				reply, size = m, len(p)
			}
		} else if ne := net.Error(nil); !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("waiting for a late reply: %v", err)
		}
	}
	return reply, size
}

func buildQuery(tc dnsCase) *dns.Msg {
	m := new(dns.Msg)
	m.Id = dns.Id()
	if m.Id == 0xBEEF {
		m.Id++
	}
	m.Opcode = tc.opcode
	m.RecursionDesired = tc.rd
	m.Question = []dns.Question{{Name: tc.qname, Qtype: tc.qtype, Qclass: orDefault(tc.qclass, dns.ClassINET)}}
	if e := tc.edns; e != nil {
		o := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
		o.SetUDPSize(e.size)
		o.SetVersion(e.version)
		o.Hdr.Ttl |= uint32(e.flags)
		o.Option = e.options
		m.Extra = append(m.Extra, o)
	}
	if tc.mangle != nil {
		tc.mangle(m)
	}
	return m
}

// checkReply compares a reply with what tc expects and reports every
// difference in words.
func checkReply(t *testing.T, network string, tc dnsCase, req []byte, got *dns.Msg, size int, serial, serialBefore uint32) {
	t.Helper()
	what := tc.qname + " " + dns.TypeToString[tc.qtype]
	if tc.raw != nil {
		what = fmt.Sprintf("raw packet %x", tc.raw[:min(len(tc.raw), 16)])
	}
	truncated := tc.truncatedOverUDP && network == "udp"

	if !got.Response {
		t.Errorf("QR for %s is clear, the reply must be a response", what)
	}
	if want := binary.BigEndian.Uint16(req); got.Id != want {
		t.Errorf("ID for %s is %#x, %#x expected", what, got.Id, want)
	}
	if want := int(req[2]>>3) & 0xF; got.Opcode != want {
		t.Errorf("opcode for %s is %s, %s expected", what, dns.OpcodeToString[got.Opcode], dns.OpcodeToString[want])
	}
	if got.Rcode != tc.rcode {
		t.Errorf("rcode for %s is %s, %s expected", what, dns.RcodeToString[got.Rcode], dns.RcodeToString[tc.rcode])
	}
	flag := func(name string, got, want bool) {
		if got != want {
			t.Errorf("%s for %s is %v, %v expected", name, what, got, want)
		}
	}
	flag("AA", got.Authoritative, tc.aa)
	flag("TC", got.Truncated, truncated)
	flag("RA", got.RecursionAvailable, false)
	flag("RD", got.RecursionDesired, tc.rd)

	if tc.raw == nil && len(got.Question) > 0 {
		if q := buildQuery(tc).Question[0]; got.Question[0] != q || len(got.Question) != 1 {
			t.Errorf("question for %s came back as %v, %v expected", what, got.Question, q)
		}
	}
	if tc.rcode == dns.RcodeSuccess || tc.rcode == dns.RcodeNameError {
		if len(got.Question) != 1 {
			t.Errorf("question for %s missing from the reply", what)
		}
	}

	if truncated { // empty: the client asks again over TCP
		tc.answer, tc.ns, tc.extra = nil, nil, nil
	}
	checkSection(t, "answer", what, got.Answer, tc.answer, serial)
	checkSection(t, "authority", what, got.Ns, tc.ns, serial)
	checkSection(t, "additional", what, withoutOPT(got.Extra), tc.extra, serial)
	checkOPT(t, what, got, tc.opt)

	if network == "udp" {
		limit := dns.MinMsgSize
		if tc.edns != nil && tc.mangle == nil {
			limit = min(max(int(tc.edns.size), dns.MinMsgSize), DefaultUDPSize)
		}
		if size > limit {
			t.Errorf("reply for %s is %d bytes over UDP, the limit is %d", what, size, limit)
		}
		if size > maxAmplification*len(req) {
			t.Errorf("reply for %s is %d bytes over UDP for a %d-byte query: over %d times", what, size, len(req), maxAmplification)
		}
	}
	if tc.serialBumped {
		var soa *dns.SOA
		for _, rr := range append(got.Answer, got.Ns...) {
			if s, ok := rr.(*dns.SOA); ok {
				soa = s
			}
		}
		if soa == nil || int32(soa.Serial-serialBefore) <= 0 {
			t.Errorf("SOA serial for %s did not increase from %d after the change: %v", what, serialBefore, soa)
		}
	}
}

// checkSection compares one section as a multiset of records.
func checkSection(t *testing.T, section, what string, got []dns.RR, want []string, serial uint32) {
	t.Helper()
	wantS := make([]string, 0, len(want))
	for _, w := range want {
		wantS = append(wantS, mustRR(strings.ReplaceAll(w, "{serial}", fmt.Sprint(serial))).String())
	}
	gotS := make([]string, 0, len(got))
	for _, rr := range got {
		gotS = append(gotS, rr.String())
	}
	slices.Sort(wantS)
	slices.Sort(gotS)
	missing, unexpected := sortedDiff(wantS, gotS)
	if len(missing) > 0 || len(unexpected) > 0 {
		t.Errorf("%s for %s contained %d results, %d expected\nmissing:\n\t%s\nunexpected:\n\t%s",
			section, what, len(gotS), len(wantS), strings.Join(missing, "\n\t"), strings.Join(unexpected, "\n\t"))
	}
}

// sortedDiff returns the elements of sorted a missing from sorted b, and those of b
// missing from a, counting duplicates.
func sortedDiff(a, b []string) (onlyA, onlyB []string) {
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case j == len(b) || (i < len(a) && a[i] < b[j]):
			onlyA = append(onlyA, a[i])
			i++
		case i == len(a) || b[j] < a[i]:
			onlyB = append(onlyB, b[j])
			j++
		default:
			i++
			j++
		}
	}
	return onlyA, onlyB
}

func checkOPT(t *testing.T, what string, got *dns.Msg, want *wantOPT) {
	t.Helper()
	var opts []*dns.OPT
	for _, rr := range got.Extra {
		if o, ok := rr.(*dns.OPT); ok {
			opts = append(opts, o)
		}
	}
	if want == nil {
		if len(opts) > 0 {
			t.Errorf("additional for %s contained an OPT, none expected: %v", what, opts[0])
		}
		return
	}
	if len(opts) != 1 {
		t.Errorf("additional for %s contained %d OPT records, 1 expected", what, len(opts))
		return
	}
	o := opts[0]
	if o.UDPSize() != want.size {
		t.Errorf("OPT for %s advertises %d bytes, %d expected", what, o.UDPSize(), want.size)
	}
	if o.Version() != 0 {
		t.Errorf("OPT for %s has version %d, 0 expected", what, o.Version())
	}
	wantFlags := uint16(0)
	if want.do {
		wantFlags = 1 << 15
	}
	if flags := uint16(o.Hdr.Ttl); flags != wantFlags {
		t.Errorf("OPT flags for %s are %#04x, %#04x expected (only DO may be echoed)", what, flags, wantFlags)
	}
	var gotO, wantO []string
	for _, e := range o.Option {
		gotO = append(gotO, fmt.Sprintf("%d:%s", e.Option(), e))
	}
	for _, e := range want.options {
		wantO = append(wantO, fmt.Sprintf("%d:%s", e.Option(), e))
	}
	if !slices.Equal(gotO, wantO) {
		t.Errorf("OPT options for %s are %q, %q expected", what, gotO, wantO)
	}
}

func withoutOPT(rrs []dns.RR) []dns.RR {
	return slices.DeleteFunc(slices.Clone(rrs), func(rr dns.RR) bool { return rr.Header().Rrtype == dns.TypeOPT })
}

func mustRR(s string) dns.RR {
	rr, err := dns.NewRR(s)
	if err != nil {
		panic(fmt.Sprintf("test record %q: %v", s, err))
	}
	return rr
}

func orDefault(v, def uint16) uint16 {
	if v == 0 {
		return def
	}
	return v
}

// rawHeader is a bare 12-byte DNS header.
func rawHeader(id, bits, qdcount uint16) []byte {
	b := make([]byte, 12)
	binary.BigEndian.PutUint16(b[0:], id)
	binary.BigEndian.PutUint16(b[2:], bits)
	binary.BigEndian.PutUint16(b[4:], qdcount)
	return b
}

// rawQuery is a header followed by one A/IN question per name.
func rawQuery(id, bits uint16, names ...string) []byte {
	b := rawHeader(id, bits, uint16(len(names)))
	for _, n := range names {
		buf := make([]byte, 256)
		off, err := dns.PackDomainName(n, buf, 0, nil, false)
		if err != nil {
			panic(err)
		}
		b = append(b, buf[:off]...)
		b = append(b, 0, 1, 0, 1)
	}
	return b
}

// manyNameServers are ns1..nsN, each with IPv4 and IPv6 glue.
func manyNameServers(n int) []NameServer {
	var out []NameServer
	for i := 1; i <= n; i++ {
		out = append(out, NameServer{Name: fmt.Sprintf("ns%d", i), Addrs: mustAddrs(fmt.Sprintf("192.0.2.%d", i), fmt.Sprintf("2001:db8::%d", i))})
	}
	return out
}

func manyNS(zone string, n int) []string {
	var out []string
	for i := 1; i <= n; i++ {
		out = append(out, fmt.Sprintf("%s 3600 IN NS ns%d.%s", zone, i, zone))
	}
	return out
}

func manyGlue(zone string, n int) []string {
	var out []string
	for i := 1; i <= n; i++ {
		out = append(out, fmt.Sprintf("ns%d.%s 3600 IN A 192.0.2.%d", i, zone, i), fmt.Sprintf("ns%d.%s 3600 IN AAAA 2001:db8::%d", i, zone, i))
	}
	return out
}

func mustAddrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func openStore(t testing.TB) *store.Store {
	t.Helper()
	st, err := store.Open(store.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Error(err)
		}
	})
	return st
}

// addDevice creates a device and sets the addresses given (empty: none).
func addDevice(t testing.TB, st *store.Store, name, ipv4, ipv6 string) {
	t.Helper()
	ctx := context.Background()
	if _, _, err := st.Create(ctx, name, store.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var u store.AddressUpdate
	if ipv4 != "" {
		u.IPv4 = netip.MustParseAddr(ipv4)
	}
	if ipv6 != "" {
		u.IPv6 = netip.MustParseAddr(ipv6)
	}
	if _, _, err := st.SetAddress(ctx, name, u); err != nil {
		t.Fatal(err)
	}
}

func setDDNS(t testing.TB, st *store.Store, name string, on bool) {
	t.Helper()
	if err := ddns(context.Background(), st, name, on); err != nil {
		t.Fatal(err)
	}
}

func ddns(ctx context.Context, st *store.Store, name string, on bool) error {
	_, err := st.Update(ctx, name, store.Patch{DDNS: &on})
	return err
}

func setAddr(ctx context.Context, st *store.Store, name, ipv4 string) error {
	_, _, err := st.SetAddress(ctx, name, store.AddressUpdate{IPv4: netip.MustParseAddr(ipv4)})
	return err
}

// startServer starts a server on 127.0.0.1 with a kernel-chosen port and shuts
// it down when the test ends.
func startServer(t testing.TB, cfg Config) *Server {
	t.Helper()
	cfg.Addr = "127.0.0.1:0"
	s, err := newTestServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return s
}

package dnsserver

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/store"
)

// amplification is one query's bytes in and out.
type amplification struct {
	server, query string
	in, out       int
}

func (a amplification) factor() float64 { return float64(a.out) / float64(a.in) }

func (a amplification) String() string {
	return fmt.Sprintf("%.2f (%s: %s, %d bytes in, %d out)", a.factor(), a.server, a.query, a.in, a.out)
}

// The figure: over every query an attacker can send in a victim's
// name (every type that matters, with and without EDNS, names in and out of
// the zone), the largest UDP answer is at most 3 times its query. It prints
// the factor (go test -v -run Amplification ./dnsserver).
func TestAmplificationFactorOfTheLargestAnswerIsAtMostThree(t *testing.T) {
	st := openStore(t)
	addDevice(t, st, "nas1", "198.51.100.1", "2001:db8:1::1")
	addDevice(t, st, "a", "198.51.100.2", "2001:db8:1::2") // the shortest name a device can have
	// ACME challenge values, which a device's owner chooses the number of:
	// two at nas1 (a name and its wildcard), as many as a device may
	// publish at a.
	var values []string
	for i := range store.MaxChallenges {
		values = append(values, testutil.ChallengeValue(i))
	}
	for name, vs := range map[string][]string{"nas1": values[:2], "a": values} {
		if err := setChallenges(context.Background(), st, name, store.ChallengeUpdate{Add: vs}); err != nil {
			t.Fatal(err)
		}
	}
	servers := []struct {
		name string
		cfg  Config
	}{
		{"defaults (ns1 with glue 127.0.0.1)", Config{}},
		{"two nameservers with IPv4 and IPv6 glue", Config{NameServers: []NameServer{
			{Name: "ns1", Addrs: mustAddrs("192.0.2.53", "2001:db8::53")},
			{Name: "ns2", Addrs: mustAddrs("198.51.100.53", "2001:db8:1::53")},
		}}},
		{"three nameservers, one outside the zone", Config{NameServers: []NameServer{
			{Name: "ns1", Addrs: mustAddrs("192.0.2.53", "2001:db8::53")},
			{Name: "ns2", Addrs: mustAddrs("198.51.100.53")},
			{Name: "ns.example.net."},
		}}},
		{"twenty nameservers with glue", Config{NameServers: manyNameServers(20)}},
		{"short zone, long hostmaster", Config{Zone: "x.io", Hostmaster: "dns-administrator.example.net"}},
	}
	types := []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeANY, dns.TypeSOA, dns.TypeNS, dns.TypeTXT, dns.TypeDNSKEY, dns.TypeMX, dns.TypeCAA, dns.TypeAXFR}
	type ednsCase struct {
		on   bool
		size uint16
		do   bool
	}
	ednss := []ednsCase{{}, {true, 512, false}, {true, 1232, false}, {true, 4096, false}, {true, 4096, true}}
	var all []amplification
	largestTCP := amplification{in: 1}
	for _, sv := range servers {
		cfg := sv.cfg
		cfg.Source = st
		srv := startServer(t, cfg)
		zone := srv.Zone()
		names := []string{zone, "ns1." + zone, "nas1." + zone, "a." + zone, "b." + zone, "www.a." + zone, "example.com.", ".",
			"_acme-challenge.nas1." + zone, "_acme-challenge.a." + zone}
		udp, err := (&dns.Client{Net: "udp", Timeout: 2 * time.Second}).Dial(srv.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		udp.UDPSize = dns.MaxMsgSize // see every reply whole
		for _, name := range names {
			// A connection per name: the server takes up to 128 queries on one.
			tcp, err := (&dns.Client{Net: "tcp", Timeout: 2 * time.Second}).Dial(srv.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			for _, qtype := range types {
				for _, e := range ednss {
					q := new(dns.Msg).SetQuestion(name, qtype)
					q.RecursionDesired = false
					what := name + " " + dns.TypeToString[qtype]
					if e.on {
						q.SetEdns0(e.size, e.do)
						what += fmt.Sprintf(" EDNS %d", e.size)
						if e.do {
							what += " DO"
						}
					}
					in, err := q.Pack()
					if err != nil {
						t.Fatal(err)
					}
					for _, conn := range []*dns.Conn{udp, tcp} {
						if _, err := conn.Write(in); err != nil {
							t.Fatal(err)
						}
						conn.SetReadDeadline(time.Now().Add(2 * time.Second))
						out, err := conn.ReadMsgHeader(nil)
						if err != nil {
							t.Fatalf("%s: %s: %v", sv.name, what, err)
						}
						a := amplification{server: sv.name, query: what, in: len(in), out: len(out)}
						if conn == udp {
							all = append(all, a)
						} else if a.factor() > largestTCP.factor() {
							largestTCP = a
						}
					}
				}
			}
			tcp.Close()
		}
		udp.Close()
	}
	slices.SortStableFunc(all, func(a, b amplification) int { return cmp.Compare(b.factor(), a.factor()) })
	var perServer []string
	for _, sv := range servers {
		i := slices.IndexFunc(all, func(a amplification) bool { return a.server == sv.name })
		perServer = append(perServer, all[i].String())
	}
	t.Logf("largest UDP amplification over %d queries: %s", len(all), all[0])
	t.Logf("the largest per server:\n\t%s", strings.Join(perServer, "\n\t"))
	t.Logf("for comparison, over TCP (address proven, not bounded): %s", largestTCP)
	if all[0].factor() > maxAmplification {
		t.Errorf("an attacker gets %s: over %d", all[0], maxAmplification)
	}
}

// fit still truncates to the transport's size: an answer under 3 times a long
// query can be over 512 bytes.
func TestFitTruncatesToTheTransportSize(t *testing.T) {
	name := strings.Repeat("abcdefghi.", 20) + "nas1.myqnapcloud.com." // 222 characters
	q := new(dns.Msg).SetQuestion(name, dns.TypeA)
	answer := func() *dns.Msg {
		m := new(dns.Msg).SetReply(q)
		for i := range 25 { // 639 bytes: under 3 times the query, over 512
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
				A: netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}).AsSlice()})
		}
		return m
	}
	in, _ := q.Pack()
	for _, c := range []struct {
		size      int
		tcp       bool
		truncated bool
	}{{dns.MinMsgSize, false, true}, {DefaultUDPSize, false, false}, {dns.MaxMsgSize, true, false}} {
		m := answer()
		fit(q, m, c.size, c.tcp)
		out, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		if m.Truncated != c.truncated || len(out) > c.size || len(out) > maxAmplification*len(in) {
			t.Errorf("size %d (tcp %v): %d bytes, TC %v, %d answers; want TC %v within %d bytes", c.size, c.tcp, len(out), m.Truncated, len(m.Answer), c.truncated, c.size)
		}
		if c.truncated && len(m.Answer) == 0 {
			t.Errorf("size %d: truncated to nothing, want as many records as fit", c.size)
		}
	}
}

func TestQueryLenIsTheWireSizeOfAPlainQuery(t *testing.T) {
	for _, name := range []string{".", "a.", "nas1.myqnapcloud.com.", `a\.b.example.`, `\065\066c.example.`, `x\\y.example.`} {
		for _, edns := range []bool{false, true} {
			q := new(dns.Msg).SetQuestion(name, dns.TypeA)
			if edns {
				q.SetEdns0(1232, false)
			}
			b, err := q.Pack()
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if got := queryLen(q); got != len(b) {
				t.Errorf("queryLen(%s, EDNS %v) = %d, the packed query is %d bytes", name, edns, got, len(b))
			}
		}
	}
}

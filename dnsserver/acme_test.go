package dnsserver

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/store"
)

// Challenge values as ACME clients compute them: 43 base64url characters.
var valA, valB, valC = testutil.ChallengeValue(0), testutil.ChallengeValue(1), testutil.ChallengeValue(2)

// The negative SOA of the challenge name: its own TTL is ChallengeTTL, so
// resolvers cache the absence of a value for 10 s (RFC 2308), not 60.
const soaChallengeNegative = "myqnapcloud.com. 10 IN SOA ns1.myqnapcloud.com. hostmaster.myqnapcloud.com. {serial} 1800 300 1209600 60"

const (
	srvCAA    = "caa"    // the default zone with two CAA records at the apex
	srvLowTTL = "lowttl" // TTL 5s, below ChallengeTTL
)

func setChallenges(ctx context.Context, st *store.Store, name string, u store.ChallengeUpdate) error {
	_, err := st.SetChallenges(ctx, name, u)
	return err
}

func TestChallengeAndCAAAnswersOverUDPAndTCP(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	addDevice(t, st, "nas1", "198.51.100.1", "")
	addDevice(t, st, "cam", "198.51.100.2", "")
	addDevice(t, st, "sleepy", "198.51.100.3", "")
	addDevice(t, st, "dark", "198.51.100.4", "")
	addDevice(t, st, "toggle", "198.51.100.5", "")
	setDDNS(t, st, "sleepy", false)
	setDDNS(t, st, "dark", false)
	for name, values := range map[string][]string{"nas1": {valA, valB}, "sleepy": {valC}} {
		if err := setChallenges(ctx, st, name, store.ChallengeUpdate{Add: values}); err != nil {
			t.Fatal(err)
		}
	}

	servers := map[string]*Server{
		srvMain: startServer(t, Config{Source: st}),
		srvExact: startServer(t, Config{
			Source: st, Zone: "Example.TEST", ExactNamesOnly: true, TTL: 2 * time.Hour,
			Hostmaster: "dns-admin.example.net", NameServers: []NameServer{{Name: "ns1", Addrs: mustAddrs("192.0.2.53")}},
		}),
		srvCAA: startServer(t, Config{Source: st, CAA: []string{
			`0 issue "letsencrypt.org"`,
			`128 ISSUEWILD "pki.example.net; accounturi=https://pki.example.net/acct/1"`,
			`0 iodef "mailto:hostmaster@example.net"`,
		}}),
		srvLowTTL: startServer(t, Config{Source: st, TTL: 5 * time.Second}),
	}
	// A device with as many values as it may publish.
	addDevice(t, st, "full", "198.51.100.6", "")
	var fullValues, fullAnswer []string
	for i := range store.MaxChallenges {
		fullValues = append(fullValues, testutil.ChallengeValue(10+i))
		fullAnswer = append(fullAnswer, `_acme-challenge.full.myqnapcloud.com. 10 IN TXT "`+testutil.ChallengeValue(10+i)+`"`)
	}
	if err := setChallenges(ctx, st, "full", store.ChallengeUpdate{Add: fullValues}); err != nil {
		t.Fatal(err)
	}
	const ch = "_acme-challenge.nas1.myqnapcloud.com."
	txtA := ch + ` 10 IN TXT "` + valA + `"`
	txtB := ch + ` 10 IN TXT "` + valB + `"`
	cases := []dnsCase{
		// The challenge name.
		// Two values (a name and its wildcard) are just over 3 times a query
		// without EDNS; a resolver asks with EDNS, as Unbound does.
		{name: "TXT at a device's challenge name gives each value", qname: ch, qtype: dns.TypeTXT, aa: true, edns: &ednsQuery{size: 1232}, opt: &wantOPT{size: 1232},
			answer: []string{txtA, txtB}},
		{name: "without EDNS two values, over 3 times the query, come truncated over UDP and whole over TCP", qname: ch, qtype: dns.TypeTXT, aa: true,
			answer: []string{txtA, txtB}, truncatedOverUDP: true},
		{name: "challenge name keeps the query's spelling", qname: "_ACME-Challenge.NAS1.myqnapcloud.com.", qtype: dns.TypeTXT, aa: true, edns: &ednsQuery{size: 1232}, opt: &wantOPT{size: 1232},
			answer: []string{
				`_ACME-Challenge.NAS1.myqnapcloud.com. 10 IN TXT "` + valA + `"`,
				`_ACME-Challenge.NAS1.myqnapcloud.com. 10 IN TXT "` + valB + `"`,
			}},
		{name: "ANY at the challenge name gives the values", qname: ch, qtype: dns.TypeANY, aa: true, edns: &ednsQuery{size: 1232}, opt: &wantOPT{size: 1232},
			answer: []string{txtA, txtB}},
		{name: "A at the challenge name is NODATA, not the device's address", qname: ch, qtype: dns.TypeA, aa: true,
			ns: []string{soaChallengeNegative}},
		{name: "challenge name of a device with no value is NODATA with a short negative TTL", qname: "_acme-challenge.cam.myqnapcloud.com.", qtype: dns.TypeTXT, aa: true,
			ns: []string{soaChallengeNegative}},
		{name: "challenge name of an unknown device is NXDOMAIN", qname: "_acme-challenge.nosuch.myqnapcloud.com.", qtype: dns.TypeTXT, aa: true,
			rcode: dns.RcodeNameError, ns: []string{soaNegative}},
		{name: "the zone's own challenge name is not a device's", qname: "_acme-challenge.myqnapcloud.com.", qtype: dns.TypeTXT, aa: true,
			rcode: dns.RcodeNameError, ns: []string{soaNegative}},
		{name: "a name below the challenge name answers as a name below the device", qname: "x." + ch, qtype: dns.TypeTXT, aa: true,
			ns: []string{soaNegative}},
		{name: "device TTL below ChallengeTTL applies to the values", server: srvLowTTL, qname: ch, qtype: dns.TypeTXT, aa: true, edns: &ednsQuery{size: 1232}, opt: &wantOPT{size: 1232},
			answer: []string{
				ch + ` 5 IN TXT "` + valA + `"`,
				ch + ` 5 IN TXT "` + valB + `"`,
			}},

		{name: "the most values a device publishes, over 3 times the query, come whole over TCP and truncated over UDP", qname: "_acme-challenge.full.myqnapcloud.com.", qtype: dns.TypeTXT, aa: true,
			answer: fullAnswer, truncatedOverUDP: true},

		// DDNS off.
		{name: "ddns off with a value: the value is published", qname: "_acme-challenge.sleepy.myqnapcloud.com.", qtype: dns.TypeTXT, aa: true,
			answer: []string{`_acme-challenge.sleepy.myqnapcloud.com. 10 IN TXT "` + valC + `"`}},
		{name: "ddns off with a value: the device name exists with no address", qname: "sleepy.myqnapcloud.com.", qtype: dns.TypeA, aa: true,
			ns: []string{soaNegative}},
		{name: "ddns off with a value: names below it have no address either", qname: "www.sleepy.myqnapcloud.com.", qtype: dns.TypeA, aa: true,
			ns: []string{soaNegative}},
		{name: "ddns off without a value: the challenge name is NXDOMAIN", qname: "_acme-challenge.dark.myqnapcloud.com.", qtype: dns.TypeTXT, aa: true,
			rcode: dns.RcodeNameError, ns: []string{soaNegative}},

		// Exact names: the challenge name is answered all the same.
		{name: "exact names: the challenge name gives the values", server: srvExact, qname: "_acme-challenge.nas1.example.test.", qtype: dns.TypeTXT, aa: true, edns: &ednsQuery{size: 1232}, opt: &wantOPT{size: 1232},
			answer: []string{
				`_acme-challenge.nas1.example.test. 10 IN TXT "` + valA + `"`,
				`_acme-challenge.nas1.example.test. 10 IN TXT "` + valB + `"`,
			}},
		{name: "exact names: below the challenge name is NXDOMAIN", server: srvExact, qname: "x._acme-challenge.nas1.example.test.", qtype: dns.TypeTXT, aa: true,
			rcode: dns.RcodeNameError, ns: []string{soaExactNegative}},

		// CAA.
		{name: "CAA at the apex gives the configured records", server: srvCAA, qname: "myqnapcloud.com.", qtype: dns.TypeCAA, aa: true,
			answer: []string{
				`myqnapcloud.com. 3600 IN CAA 0 issue "letsencrypt.org"`,
				`myqnapcloud.com. 3600 IN CAA 128 issuewild "pki.example.net; accounturi=https://pki.example.net/acct/1"`,
				`myqnapcloud.com. 3600 IN CAA 0 iodef "mailto:hostmaster@example.net"`,
			}, truncatedOverUDP: true},
		{name: "CAA at a device is NODATA: the CA climbs to the apex", server: srvCAA, qname: "nas1.myqnapcloud.com.", qtype: dns.TypeCAA, aa: true,
			ns: []string{soaNegative}},
		{name: "CAA at the apex without --caa is NODATA", qname: "myqnapcloud.com.", qtype: dns.TypeCAA, aa: true,
			ns: []string{soaNegative}},

		// Changes show in the very next query.
		{name: "a value set is in the next answer", qname: "_acme-challenge.toggle.myqnapcloud.com.", qtype: dns.TypeTXT, aa: true,
			change: func(ctx context.Context, st *store.Store) error {
				return setChallenges(ctx, st, "toggle", store.ChallengeUpdate{Add: []string{valC}})
			},
			answer: []string{`_acme-challenge.toggle.myqnapcloud.com. 10 IN TXT "` + valC + `"`}},
		{name: "a value withdrawn is gone from the next answer", qname: "_acme-challenge.toggle.myqnapcloud.com.", qtype: dns.TypeTXT, aa: true,
			change: func(ctx context.Context, st *store.Store) error {
				return setChallenges(ctx, st, "toggle", store.ChallengeUpdate{RemoveAll: true})
			},
			ns: []string{soaChallengeNegative}, serialBumped: true},
		{name: "a deleted device's challenge name is NXDOMAIN", qname: "_acme-challenge.sleepy.myqnapcloud.com.", qtype: dns.TypeTXT, aa: true,
			change: func(ctx context.Context, st *store.Store) error { return st.Delete(ctx, "sleepy") },
			rcode:  dns.RcodeNameError, ns: []string{soaNegative}},
	}
	runCases(t, st, servers, cases)
}

func TestCAAIsValidated(t *testing.T) {
	for _, bad := range []string{
		`issue "letsencrypt.org"`,        // no flags
		`0 issue`,                        // no value
		`5 issue "letsencrypt.org"`,      // flags other than 0 or 128
		`0 isue "letsencrypt.org"`,       // a typo of a tag
		`0 issue "a"` + "\n" + `0 iodef`, // two records in one
		`garbage`,
	} {
		err := Config{CAA: []string{bad}}.Validate()
		if err == nil || !strings.Contains(err.Error(), "CAA") {
			t.Errorf("CAA %q: Validate() = %v, want a refusal naming CAA", bad, err)
		}
	}
	if err := (Config{CAA: []string{`0 issue "letsencrypt.org"`, `0 issue ";"`}}).Validate(); err != nil {
		t.Errorf("good CAA refused: %v", err)
	}
}

// FuzzParseCAA feeds --caa values to the parser: it never panics, and what it
// accepts is a record with one of the allowed tags that packs and unpacks
// to the same record.
func FuzzParseCAA(f *testing.F) {
	for _, seed := range []string{
		`0 issue "letsencrypt.org"`, `128 issuewild "pki.example.net; accounturi=https://x/1"`,
		`0 iodef "mailto:a@b"`, `0 issue ";"`, `0 issue`, `5 issue "x"`, `0 isue "x"`, "0 issue \"a\"\n0 iodef", `0 ISSUE "x"`, `garbage`, ``,
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, v string) {
		caas, err := parseCAA([]string{v})
		if err != nil {
			return
		}
		if len(caas) != 1 {
			t.Fatalf("%q gave %d records", v, len(caas))
		}
		c := caas[0]
		if !slices.Contains([]string{"issue", "issuewild", "iodef", "issuemail"}, c.Tag) || (c.Flag != 0 && c.Flag != 128) {
			t.Fatalf("%q accepted as %v", v, c)
		}
		c.Hdr = dns.RR_Header{Name: "myqnapcloud.com.", Rrtype: dns.TypeCAA, Class: dns.ClassINET, Ttl: 3600}
		buf := make([]byte, dns.MaxMsgSize)
		n, err := dns.PackRR(c, buf, 0, nil, false)
		if err != nil {
			t.Fatalf("%q accepted but does not pack: %v", v, err)
		}
		back, _, err := dns.UnpackRR(buf[:n], 0)
		if err != nil || back.String() != c.String() {
			t.Fatalf("%q: packed %v, unpacked %v (%v)", v, c, back, err)
		}
	})
}

func TestTransfersCarryTheChallengeTXTAndTheCAA(t *testing.T) {
	st := openStore(t)
	ctx := t.Context()
	addDevice(t, st, "nas1", "198.51.100.1", "")
	addDevice(t, st, "sleepy", "198.51.100.3", "")
	addDevice(t, st, "dark", "198.51.100.4", "")
	setDDNS(t, st, "sleepy", false)
	setDDNS(t, st, "dark", false)
	for name, values := range map[string][]string{"nas1": {valA, valB}, "sleepy": {valC}} {
		if err := setChallenges(ctx, st, name, store.ChallengeUpdate{Add: values}); err != nil {
			t.Fatal(err)
		}
	}
	s := startServer(t, Config{Source: st, Transfer: TransferConfig{Secondaries: secondaryAt("127.0.0.1")},
		CAA: []string{`0 issue "letsencrypt.org"`}, NameServers: []NameServer{{Name: "ns1", Addrs: mustAddrs("192.0.2.53")}}})
	st.OnChange(s.ZoneChanged)
	start := st.Serial()

	rrs, _, err := transfer(t, s, axfrQuery(), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{soaApex,
		"myqnapcloud.com. 3600 IN NS ns1.myqnapcloud.com.",
		`myqnapcloud.com. 3600 IN CAA 0 issue "letsencrypt.org"`,
		"ns1.myqnapcloud.com. 3600 IN A 192.0.2.53",
		"nas1.myqnapcloud.com. 60 IN A 198.51.100.1",
		`_acme-challenge.nas1.myqnapcloud.com. 10 IN TXT "` + valA + `"`,
		`_acme-challenge.nas1.myqnapcloud.com. 10 IN TXT "` + valB + `"`,
		`_acme-challenge.sleepy.myqnapcloud.com. 10 IN TXT "` + valC + `"`,
		soaApex,
	}
	if got := strs(rrs); !slices.Equal(got, want) {
		t.Errorf("AXFR is\n%s\nwant\n%s\n(the values of a DDNS-off device without its address, no dark)", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	if err := setChallenges(ctx, st, "nas1", store.ChallengeUpdate{Remove: []string{valA}, Add: []string{valC}}); err != nil {
		t.Fatal(err)
	}
	if err := setChallenges(ctx, st, "sleepy", store.ChallengeUpdate{RemoveAll: true}); err != nil {
		t.Fatal(err)
	}
	rrs, _, err = transfer(t, s, ixfrQuery(start), nil)
	if err != nil {
		t.Fatal(err)
	}
	want = []string{soaApex, soaApex,
		`_acme-challenge.nas1.myqnapcloud.com. 10 IN TXT "` + valA + `"`,
		`_acme-challenge.sleepy.myqnapcloud.com. 10 IN TXT "` + valC + `"`,
		soaApex,
		`_acme-challenge.nas1.myqnapcloud.com. 10 IN TXT "` + valC + `"`,
		soaApex,
	}
	if got := strs(rrs); !slices.Equal(got, want) {
		t.Errorf("IXFR from %d is\n%s\nwant\n%s", start, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

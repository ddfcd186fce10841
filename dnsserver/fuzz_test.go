package dnsserver

import (
	"context"
	"encoding/binary"
	"testing"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/store"
)

// FuzzAnswer feeds raw packets through what the server does with a datagram or
// a TCP message: the header check, the unpack, the answer and the truncation.
// Packets miekg/dns replies to on its own (bad header, failed unpack) are
// skipped. Whatever comes in, the reply must pack, fit the transport (over UDP
// at most maxAmplification times the query) and be a well-formed response to
// the query.
func FuzzAnswer(f *testing.F) {
	st := openStore(f)
	addDevice(f, st, "nas1", "198.51.100.1", "2001:db8:1::1")
	addDevice(f, st, "cam", "198.51.100.2", "")
	if err := setChallenges(context.Background(), st, "nas1", store.ChallengeUpdate{Add: []string{valA, valB}}); err != nil {
		f.Fatal(err)
	}
	// Twenty nameservers with glue make the apex NS answer exceed every UDP size.
	s, err := newTestServer(Config{Addr: "127.0.0.1:0", Source: st, NameServers: manyNameServers(20), CAA: []string{`0 issue "letsencrypt.org"`}})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Shutdown(context.Background()) }) //nolint:errcheck // the test's own sockets

	f.Fuzz(func(t *testing.T, raw []byte) {
		if len(raw) < 12 {
			return // dropped by miekg/dns before any handler runs
		}
		dh := dns.Header{
			Id:      binary.BigEndian.Uint16(raw[0:]),
			Bits:    binary.BigEndian.Uint16(raw[2:]),
			Qdcount: binary.BigEndian.Uint16(raw[4:]),
			Ancount: binary.BigEndian.Uint16(raw[6:]),
			Nscount: binary.BigEndian.Uint16(raw[8:]),
			Arcount: binary.BigEndian.Uint16(raw[10:]),
		}
		if acceptQuery(dh) != dns.MsgAccept {
			return
		}
		r := new(dns.Msg)
		if err := r.Unpack(raw); err != nil {
			return
		}
		var queryOPTs int
		for _, rr := range r.Extra {
			if rr.Header().Rrtype == dns.TypeOPT {
				queryOPTs++
			}
		}

		for _, tcp := range []bool{false, true} {
			m, size := s.answer(r)
			if tcp {
				size = dns.MaxMsgSize
			}
			fit(r, m, size, tcp) // as ServeDNS does
			b, err := m.Pack()
			if err != nil {
				t.Fatalf("reply does not pack (tcp=%v): %v\n%v", tcp, err, m)
			}
			if len(b) > size {
				t.Fatalf("reply is %d bytes, the limit is %d (tcp=%v)\n%v", len(b), size, tcp, m)
			}
			if !tcp && len(b) > maxAmplification*len(raw) {
				t.Fatalf("UDP reply is %d bytes for a %d-byte query, more than %d times\n%v", len(b), len(raw), maxAmplification, m)
			}
			got := new(dns.Msg)
			if err := got.Unpack(b); err != nil {
				t.Fatalf("reply does not unpack (tcp=%v): %v\n%v", tcp, err, m)
			}
			if !got.Response || got.Id != r.Id || got.Opcode != dns.OpcodeQuery {
				t.Fatalf("reply header is not a response to query %d: %v", r.Id, got)
			}
			if got.RecursionAvailable || got.RecursionDesired != r.RecursionDesired {
				t.Fatalf("RA set or RD not copied: query RD=%v, reply %v", r.RecursionDesired, got)
			}
			if got.Truncated && tcp {
				t.Fatalf("TC set over TCP: %v", got)
			}
			switch got.Rcode {
			case dns.RcodeSuccess, dns.RcodeNameError:
			case dns.RcodeRefused, dns.RcodeFormatError, dns.RcodeBadVers:
				if got.Authoritative || len(got.Answer) > 0 || len(got.Ns) > 0 {
					t.Fatalf("%s reply claims authority or carries records: %v", dns.RcodeToString[got.Rcode], got)
				}
			default:
				t.Fatalf("unexpected rcode %s: %v", dns.RcodeToString[got.Rcode], got)
			}
			for _, rr := range got.Answer {
				if rr.Header().Name != r.Question[0].Name {
					t.Fatalf("answer owner %q is not the query's name %q", rr.Header().Name, r.Question[0].Name)
				}
			}
			var opts []*dns.OPT
			for _, rr := range got.Extra {
				if o, ok := rr.(*dns.OPT); ok {
					opts = append(opts, o)
				}
			}
			wantOPTs := 0
			if queryOPTs == 1 && got.Rcode != dns.RcodeFormatError {
				wantOPTs = 1
			}
			if len(opts) != wantOPTs {
				t.Fatalf("reply has %d OPT records, %d expected (query had %d): %v", len(opts), wantOPTs, queryOPTs, got)
			}
			for _, o := range opts {
				if o.Version() != 0 || uint16(o.Hdr.Ttl)&^(1<<15) != 0 || o.UDPSize() != s.udpSize {
					t.Fatalf("reply OPT is not version 0 with at most DO set and our size: %v", o)
				}
				for _, e := range o.Option {
					if e.Option() != dns.EDNS0EDE {
						t.Fatalf("reply OPT echoes option %d", e.Option())
					}
				}
			}
		}
	})
}

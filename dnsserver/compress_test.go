package dnsserver

import (
	"testing"

	"github.com/miekg/dns"
)

// Answers use name compression, as Knot's and NSD's do, even when the
// uncompressed answer would fit (miekg/dns's Truncate turns it off then).
func TestAnswersAreCompressed(t *testing.T) {
	st := openStore(t)
	addDevice(t, st, "nas1", "198.51.100.1", "2001:db8:1::1")
	srv := startServer(t, Config{Source: st})
	for _, network := range []string{"udp", "tcp"} {
		for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
			q := new(dns.Msg).SetQuestion("nas1.myqnapcloud.com.", qtype).SetEdns0(1232, false)
			req, err := q.Pack()
			if err != nil {
				t.Fatal(err)
			}
			got, size := exchange(t, srv, network, req, false)
			if len(got.Answer) != 1 {
				t.Fatalf("%s %s: answer %v", network, dns.TypeToString[qtype], got.Answer)
			}
			got.Compress = false
			if plain := got.Len(); size >= plain {
				t.Errorf("%s %s: %d bytes on the wire, %d uncompressed: the owner name is not compressed", network, dns.TypeToString[qtype], size, plain)
			}
		}
	}
}

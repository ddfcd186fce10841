package dnsserver

import (
	"fmt"
	"strings"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/store"
)

// What certificate authorities ask the zone: the ACME DNS-01 challenge TXT
// a device publishes (RFC 8555 section 8.4), and the CAA records that say
// which CAs may issue for the zone (RFC 8659).
//
// _acme-challenge.<device>.<zone> is a name of its own, whatever
// ExactNamesOnly says: TXT gives the device's current values (each its own
// record holding one string), every other type is NODATA, and so is TXT while
// the device publishes no value: the name stays the device's challenge name
// for as long as the device exists, in both naming modes alike. Values and
// negative answers alike carry at most ChallengeTTL, so a CA that asks again
// after a client changed its value sees the change within seconds. The name
// is NXDOMAIN only when the device does not resolve (unknown, or DDNS off
// and no value).
//
// CAA records are served at the apex only. A CA looking for CAA at
// nas1.<zone> gets NODATA there and climbs to the apex (RFC 8659 section
// 3), so every device inherits the apex's policy.

// challengeLabel is the label below a device that holds its challenge TXT.
const challengeLabel = "_acme-challenge"

// ChallengeTTL bounds the TTL of challenge answers (positive and negative);
// the device TTL applies when it is lower.
const ChallengeTTL = 10

// answerChallenge answers q for _acme-challenge.<device>.
func (s *Server) answerChallenge(m *dns.Msg, q dns.Question, device string) {
	rec, ok := s.src.Lookup(device)
	if !ok {
		s.nxdomain(m)
		return
	}
	ttl := min(ChallengeTTL, s.ttl.Load())
	if q.Qtype == dns.TypeTXT || q.Qtype == dns.TypeANY {
		m.Answer = append(m.Answer, challengeTXT(q.Name, rec.ACME, ttl)...)
	}
	if len(m.Answer) == 0 {
		// RFC 2308 section 5: the negative TTL is the lower of the SOA's
		// own TTL and its MINIMUM; a short SOA TTL here makes this one
		// name's negative answer short.
		m.Ns = append(m.Ns, s.soa(s.zone, min(s.soaTTL, ttl)))
	}
}

// challengeRecords are the challenge TXT records of the device whose name
// is owner, for zone transfers: at _acme-challenge.<owner>, with
// ChallengeTTL (ttl when lower), as answers give them.
func challengeRecords(owner string, rec store.Record, ttl uint32) []dns.RR {
	return challengeTXT(challengeLabel+"."+owner, rec.ACME, min(ChallengeTTL, ttl))
}

// challengeTXT is one TXT record with owner name owner per value.
func challengeTXT(owner string, values []string, ttl uint32) []dns.RR {
	out := make([]dns.RR, 0, len(values))
	for _, v := range values {
		h := dns.RR_Header{Name: owner, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: ttl}
		out = append(out, &dns.TXT{Hdr: h, Txt: []string{v}})
	}
	return out
}

// challengeDevice returns the device whose challenge name label is
// (_acme-challenge.<device>, label being the query name less the zone).
func challengeDevice(label string) (device string, ok bool) {
	device, ok = strings.CutPrefix(label, challengeLabel+".")
	return device, ok && device != "" && !strings.Contains(device, ".")
}

// parseCAA reads CAA records in the presentation format of their RDATA:
// FLAGS TAG "VALUE", e.g. `0 issue "letsencrypt.org"`. Flags are 0 or 128
// (critical); the tag is a property RFC 8659 or RFC 8657 defines, so that a
// typo cannot turn into a critical unknown property that stops every CA.
func parseCAA(values []string) ([]*dns.CAA, error) {
	var out []*dns.CAA
	for _, v := range values {
		rr, err := dns.NewRR(". 0 IN CAA " + v)
		caa, ok := rr.(*dns.CAA)
		if err != nil || !ok || strings.ContainsAny(v, "\n\r") {
			return nil, fmt.Errorf(`CAA %q: want FLAGS TAG "VALUE", e.g. 0 issue "letsencrypt.org"`, v)
		}
		if caa.Flag != 0 && caa.Flag != 128 {
			return nil, fmt.Errorf("CAA %q: flags must be 0 or 128 (critical)", v)
		}
		switch caa.Tag = strings.ToLower(caa.Tag); caa.Tag {
		case "issue", "issuewild", "iodef", "issuemail":
		default:
			return nil, fmt.Errorf("CAA %q: tag %q is not issue, issuewild, iodef or issuemail", v, caa.Tag)
		}
		out = append(out, caa)
	}
	return out, nil
}

// caaRecords are the zone's CAA records with owner name owner.
func (s *Server) caaRecords(owner string) []dns.RR {
	out := make([]dns.RR, 0, len(s.caa))
	for _, c := range s.caa {
		h := dns.RR_Header{Name: owner, Rrtype: dns.TypeCAA, Class: dns.ClassINET, Ttl: s.soaTTL}
		out = append(out, &dns.CAA{Hdr: h, Flag: c.Flag, Tag: c.Tag, Value: c.Value})
	}
	return out
}

package dnsserver

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/miekg/dns"
)

// answer builds the response to r. maxSize is the largest response the
// transport allows (65535 on TCP); the caller truncates to it.
func (s *Server) answer(r *dns.Msg) (m *dns.Msg, maxSize int) {
	m = new(dns.Msg)
	m.SetReply(r)
	m.RecursionAvailable = false
	maxSize = dns.MinMsgSize
	// The header's QDCOUNT is checked before unpacking, but a packet can end
	// right after the header (miekg/dns then unpacks no question at all).
	if len(r.Question) != 1 {
		return s.formErr(r), maxSize
	}

	// EDNS (RFC 6891): at most one OPT, in the additional section.
	var opt *dns.OPT
	for _, rr := range r.Extra {
		if o, ok := rr.(*dns.OPT); ok {
			if opt != nil || o.Hdr.Name != "." {
				return s.formErr(r), maxSize
			}
			opt = o
		}
	}
	if len(r.Answer) > 0 || len(r.Ns) > 0 {
		return s.formErr(r), maxSize
	}
	if opt != nil {
		maxSize = int(max(opt.UDPSize(), dns.MinMsgSize))
		maxSize = min(maxSize, int(s.udpSize))
		ro := new(dns.OPT)
		ro.Hdr.Name, ro.Hdr.Rrtype = ".", dns.TypeOPT
		ro.SetUDPSize(s.udpSize)
		if opt.Do() { // the only flag defined; unknown flags are never echoed
			ro.SetDo()
		}
		m.Extra = append(m.Extra, ro)
		if opt.Version() != 0 {
			m.Rcode = dns.RcodeBadVers
			return m, maxSize
		}
	}

	q := r.Question[0]
	if q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY {
		m.Rcode = dns.RcodeRefused
		return m, maxSize
	}
	switch q.Qtype {
	case dns.TypeOPT:
		return s.formErr(r), maxSize
	case dns.TypeAXFR, dns.TypeIXFR:
		m.Rcode = dns.RcodeRefused
		return m, maxSize
	}

	name := strings.ToLower(q.Name)
	if !dns.IsSubDomain(s.zone, name) {
		m.Rcode = dns.RcodeRefused
		if opt != nil {
			ro := m.Extra[len(m.Extra)-1].(*dns.OPT)
			ro.Option = append(ro.Option, &dns.EDNS0_EDE{InfoCode: dns.ExtendedErrorCodeNotAuthoritative})
		}
		return m, maxSize
	}
	m.Authoritative = true

	if name == s.zone {
		s.answerApex(m, q)
		return m, maxSize
	}
	label := name[:len(name)-len(s.zone)-1]
	if addrs, ok := s.glue[label]; ok {
		// The same records and TTL as the glue in the NS answer: one RRset.
		s.answerAddrs(m, q, s.soaTTL, addrs...)
		return m, maxSize
	}
	if device, ok := challengeDevice(label); ok {
		s.answerChallenge(m, q, device)
		return m, maxSize
	}
	if device, srv, ok := linkName(label); ok && s.linkRelays != nil {
		s.answerLink(m, q, device, srv) // link.go
		return m, maxSize
	}
	device := label
	if i := strings.LastIndexByte(label, '.'); i >= 0 {
		if s.exact.Load() {
			s.nxdomain(m)
			return m, maxSize
		}
		device = label[i+1:]
	}
	rec, ok := s.src.Lookup(device)
	if !ok {
		s.nxdomain(m)
		return m, maxSize
	}
	s.answerAddrs(m, q, s.ttl.Load(), rec.IPv4, rec.IPv6)
	return m, maxSize
}

// answerAddrs answers q with those of addrs (unmapped; invalid ones are
// skipped) that match its type, or NODATA. ANY gets one RRset, as RFC 8482
// allows: the A records if there are any, else the AAAA.
func (s *Server) answerAddrs(m *dns.Msg, q dns.Question, ttl uint32, addrs ...netip.Addr) {
	qtype := q.Qtype
	if qtype == dns.TypeANY {
		qtype = dns.TypeAAAA
		if slices.ContainsFunc(addrs, netip.Addr.Is4) {
			qtype = dns.TypeA
		}
	}
	for _, a := range addrs {
		h := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: ttl}
		switch {
		case a.Is4() && qtype == dns.TypeA:
			h.Rrtype = dns.TypeA
			m.Answer = append(m.Answer, &dns.A{Hdr: h, A: a.AsSlice()})
		case a.Is6() && qtype == dns.TypeAAAA:
			h.Rrtype = dns.TypeAAAA
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: h, AAAA: a.AsSlice()})
		}
	}
	if len(m.Answer) == 0 {
		m.Ns = append(m.Ns, s.negativeSOA())
	}
}

func (s *Server) answerApex(m *dns.Msg, q dns.Question) {
	switch q.Qtype {
	case dns.TypeCAA:
		if m.Answer = append(m.Answer, s.caaRecords(q.Name)...); len(m.Answer) == 0 {
			m.Ns = append(m.Ns, s.negativeSOA())
		}
	case dns.TypeSOA:
		m.Answer = append(m.Answer, s.soa(q.Name, s.soaTTL))
	case dns.TypeNS:
		m.Answer = append(m.Answer, s.nsRecords(q.Name)...)
		m.Extra = append(s.glueRecords(), m.Extra...)
	case dns.TypeANY: // RFC 8482: one RRset, not every one
		m.Answer = append(m.Answer, s.soa(q.Name, s.soaTTL))
	default:
		m.Ns = append(m.Ns, s.negativeSOA())
	}
}

func (s *Server) nxdomain(m *dns.Msg) {
	m.Rcode = dns.RcodeNameError
	m.Ns = append(m.Ns, s.negativeSOA())
}

// negativeSOA is the SOA for the authority section of negative answers; its TTL
// is min(SOA TTL, SOA MINIMUM) as RFC 2308 section 3 says.
func (s *Server) negativeSOA() dns.RR {
	return s.soa(s.zone, min(s.soaTTL, s.ttl.Load()))
}

func (s *Server) soa(owner string, ttl uint32) dns.RR {
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: owner, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: ttl},
		Ns:      s.ns[0].Name,
		Mbox:    s.hostmaster,
		Serial:  s.src.Serial(),
		Refresh: 1800, Retry: 300, Expire: 1209600,
		Minttl: s.ttl.Load(),
	}
}

func (s *Server) nsRecords(owner string) []dns.RR {
	out := make([]dns.RR, 0, len(s.ns))
	for _, ns := range s.ns {
		out = append(out, &dns.NS{Hdr: dns.RR_Header{Name: owner, Rrtype: dns.TypeNS, Class: dns.ClassINET, Ttl: s.soaTTL}, Ns: ns.Name})
	}
	return out
}

// glueRecords are the addresses of the in-zone nameservers.
func (s *Server) glueRecords() []dns.RR {
	var out []dns.RR
	for _, ns := range s.ns {
		for _, a := range ns.Addrs {
			h := dns.RR_Header{Name: ns.Name, Class: dns.ClassINET, Ttl: s.soaTTL}
			if a.Is4() {
				h.Rrtype = dns.TypeA
				out = append(out, &dns.A{Hdr: h, A: a.AsSlice()})
			} else {
				h.Rrtype = dns.TypeAAAA
				out = append(out, &dns.AAAA{Hdr: h, AAAA: a.AsSlice()})
			}
		}
	}
	return out
}

func (s *Server) formErr(r *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	m.SetRcodeFormatError(r)
	m.RecursionDesired = r.RecursionDesired // RFC 1035 4.1.1: RD is copied into the response
	m.RecursionAvailable = false
	return m
}

package dnsserver

import (
	"strings"

	"github.com/miekg/dns"
)

// maxAmplification bounds a UDP answer's size as a multiple of its query's:
// a spoofed query must not buy an attacker more than this many bytes sent to
// the victim per byte. TCP answers are not bounded (the handshake proves the
// address).
const maxAmplification = 3

// fit shapes m, the answer to r, for its transport: within size bytes
// (truncated with TC if need be, as RFC 1035 and RFC 6891 say) and name
// compressed. Over UDP it also
//   - leaves out the additional section (the nameservers' glue), as BIND's
//     minimal-responses does: a resolver has the glue from the parent zone,
//     and an apex NS answer with glue is four to five times its query;
//   - sends an answer more than maxAmplification times the query's size
//     empty with TC set, so that the client asks again over TCP (with up to
//     three nameservers no answer gets there; an operator with more sees
//     their NS answers come over TCP).
func fit(r, m *dns.Msg, size int, tcp bool) {
	if !tcp {
		minimalAdditional(m)
	}
	// m.Compress is false (answer builds a new Msg): the uncompressed
	// length, with no compression map to fill. Most answers fit both limits
	// by it alone.
	l := m.Len()
	if l > size {
		m.Truncate(size)
		l = -1
	}
	// Truncate turns name compression off when the answer fits; compress
	// anyway, as Knot and NSD do: answers a third smaller (less
	// amplification, more room under the 1232-byte cap).
	m.Compress = true
	if tcp {
		return
	}
	limit := maxAmplification * queryLen(r)
	if l >= 0 && l <= limit {
		return
	}
	if m.Len() > limit { // the compressed length, as it will be sent
		emptyTruncated(m)
	}
}

// minimalAdditional drops every record of the additional section but the OPT.
func minimalAdditional(m *dns.Msg) {
	n := 0
	for _, rr := range m.Extra {
		if rr.Header().Rrtype == dns.TypeOPT {
			m.Extra[n] = rr
			n++
		}
	}
	clear(m.Extra[n:])
	m.Extra = m.Extra[:n]
}

// emptyTruncated turns m into what a client must ask again over TCP: the
// header with TC set, the question and the OPT, no records. Such an answer is
// never bigger than its query but for the OPT's options (at most an Extended
// DNS Error).
func emptyTruncated(m *dns.Msg) {
	m.Truncated = true
	m.Answer, m.Ns = nil, nil
	minimalAdditional(m)
}

// queryLen is a lower bound of r's size on the wire: header, question and
// an OPT record without its options. Other records a query may carry are
// not counted, nor a compression pointer in the question: an attacker
// gains nothing by adding them.
func queryLen(r *dns.Msg) int {
	n := 12 // header
	for _, q := range r.Question {
		n += nameWireLen(q.Name) + 4
	}
	for _, rr := range r.Extra {
		if rr.Header().Rrtype == dns.TypeOPT {
			n += 11 // root owner, type, class, TTL, RDLENGTH
			break
		}
	}
	return n
}

// nameWireLen is the wire length of a fully qualified name in presentation
// form: one length byte per label and the root's zero, escapes (\. and \DDD)
// counting as the one byte they stand for.
func nameWireLen(name string) int {
	if name == "." || name == "" {
		return 1
	}
	n := len(name) + 1
	for i := strings.IndexByte(name, '\\'); i >= 0 && i < len(name)-1; {
		if i+3 < len(name) && isDigit(name[i+1]) && isDigit(name[i+2]) && isDigit(name[i+3]) {
			n -= 3
			i += 4
		} else {
			n--
			i += 2
		}
		j := strings.IndexByte(name[i:], '\\')
		if j < 0 {
			break
		}
		i += j
	}
	return n
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

package dnsserver

import (
	"encoding/binary"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/store"
)

// FuzzServeUpdate feeds raw packets through what the server does with an
// UPDATE, over TCP and UDP: the header check, the unpack, the TSIG check
// and ServeDNS. Whatever comes in, exactly one message answers it, with its
// ID and opcode, no records, and a known rcode; and the device's stored
// addresses stay ones a device may publish, at most one of each family.
func FuzzServeUpdate(f *testing.F) {
	fx := startUpdateServer(f)
	provider := tsigProvider{fx.srv.keys()}
	seed := func(m *dns.Msg, sign bool) {
		if sign {
			m.SetTsig(key1, dns.HmacSHA256, 300, time.Now().Unix())
			b, _, err := dns.TsigGenerateWithProvider(m, provider, "", false)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
			return
		}
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, c := range []struct {
		prereq, update []dns.RR
	}{
		{nil, rrs(nas1+" 0 ANY A", nas1+" 600 IN A 203.0.113.9")},
		{rrs(nas1 + " 0 IN A 198.51.100.1"), rrs(nas1+" 0 NONE A 198.51.100.1", nas1+" 60 IN AAAA 2001:db8::9")},
		{rrs(nas1+" 0 ANY ANY", "nosuch."+updZone+" 0 NONE ANY"), rrs(nas1 + " 0 ANY ANY")},
		{nil, rrs("nas2."+updZone+" 60 IN A 203.0.113.9", nas1+" 60 IN TXT \"x\"")},
		{rrs("_acme-challenge." + nas1 + " 0 NONE TXT"), rrs("_acme-challenge."+nas1+" 0 ANY TXT", "_acme-challenge."+nas1+" 60 IN TXT \""+testutil.ChallengeValue(0)+"\"")},
	} {
		for _, sign := range []bool{true, false} {
			m := new(dns.Msg).SetUpdate(updZone)
			m.Answer, m.Ns = c.prereq, c.update
			seed(m, sign)
		}
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if len(raw) < 12 {
			return
		}
		dh := dns.Header{Bits: binary.BigEndian.Uint16(raw[2:]), Qdcount: binary.BigEndian.Uint16(raw[4:])}
		if fx.srv.accept(dh) != dns.MsgAccept {
			return
		}
		r := new(dns.Msg)
		if r.Unpack(raw) != nil || r.Opcode != dns.OpcodeUpdate {
			return
		}
		// Mutations rarely keep a signature valid: a packet signed with
		// nas1's key is also taken as verified, so that the sections
		// behind the signature get fuzzed too.
		tsig := r.IsTsig()
		asSigned := tsig != nil && dns.CanonicalName(tsig.Hdr.Name) == key1 && dns.CanonicalName(tsig.Algorithm) == dns.HmacSHA256
		for _, c := range []struct{ tcp, verified bool }{{false, false}, {true, false}, {false, true}} {
			tcp := c.tcp
			if c.verified && !asSigned {
				continue
			}
			w := &recordingWriter{tcp: tcp, provider: provider}
			if tsig != nil {
				w.status = dns.TsigVerifyWithProvider(slices.Clone(raw), w.provider, "", false)
				w.requestMAC = tsig.MAC
			}
			if c.verified {
				w.status = nil
			}
			fx.srv.ServeDNS(w, r)
			if w.err != nil {
				t.Fatalf("tcp=%v: the answer is unusable: %v\nupdate %v", tcp, w.err, r)
			}
			if len(w.msgs) != 1 {
				t.Fatalf("tcp=%v: %d answers to %v", tcp, len(w.msgs), r)
			}
			m := w.msgs[0]
			if !m.Response || m.Id != r.Id || m.Opcode != dns.OpcodeUpdate || len(m.Answer)+len(m.Ns) != 0 {
				t.Fatalf("tcp=%v: %v does not answer update %d", tcp, m, r.Id)
			}
			switch m.Rcode {
			case dns.RcodeSuccess, dns.RcodeFormatError, dns.RcodeNotAuth, dns.RcodeNotZone, dns.RcodeRefused,
				dns.RcodeNameError, dns.RcodeYXDomain, dns.RcodeNXRrset, dns.RcodeYXRrset:
			default:
				t.Fatalf("tcp=%v: unexpected rcode %s", tcp, dns.RcodeToString[m.Rcode])
			}
			d, err := fx.st.Get("nas1")
			if err != nil {
				t.Fatal(err)
			}
			if d.IPv4.IsValid() && (store.ValidateAddress(d.IPv4) != nil || !d.IPv4.Is4()) ||
				d.IPv6.IsValid() && (store.ValidateAddress(d.IPv6) != nil || !d.IPv6.Is6() || d.IPv6.Is4In6()) {
				t.Fatalf("nas1 now holds %s %s", d.IPv4, d.IPv6)
			}
		}
	})
}

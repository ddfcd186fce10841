package dnsserver

import (
	"context"
	"encoding/binary"
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// recordingWriter is a dns.ResponseWriter that keeps what the handler
// writes, for the fuzz target: a client at 127.0.0.1 over TCP or UDP, with
// the TSIG status and signing of miekg/dns's own writer.
type recordingWriter struct {
	tcp        bool
	provider   dns.TsigProvider
	status     error // the request's TSIG verification
	requestMAC string
	timersOnly bool
	msgs       []*dns.Msg
	err        error
}

func (w *recordingWriter) LocalAddr() net.Addr {
	if w.tcp {
		return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
	}
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
}

func (w *recordingWriter) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
}

func (w *recordingWriter) WriteMsg(m *dns.Msg) error {
	var b []byte
	var err error
	if m.IsTsig() != nil {
		b, w.requestMAC, err = dns.TsigGenerateWithProvider(m, w.provider, w.requestMAC, w.timersOnly)
	} else {
		b, err = m.Pack()
	}
	if err != nil {
		w.err = err
		return err
	}
	return w.keep(b)
}

func (w *recordingWriter) Write(b []byte) (int, error) { return len(b), w.keep(b) }

func (w *recordingWriter) keep(b []byte) error {
	limit := dns.MaxMsgSize
	if !w.tcp {
		limit = int(DefaultUDPSize) + 200 // a signed answer adds its TSIG record
	}
	if len(b) > limit {
		w.err = net.ErrWriteToConnected
	}
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		w.err = err
		return err
	}
	w.msgs = append(w.msgs, m)
	return nil
}

func (w *recordingWriter) Close() error          { return nil }
func (w *recordingWriter) TsigStatus() error     { return w.status }
func (w *recordingWriter) TsigTimersOnly(b bool) { w.timersOnly = b }
func (w *recordingWriter) Hijack()               {}

// FuzzServeTransfer feeds raw packets through ServeDNS of a server that
// allows transfers to 127.0.0.1, over TCP and UDP: AXFR, IXFR with any
// authority section, signed queries. Every message written must pack and
// unpack and answer the query's ID; a transfer over UDP is never more than
// the SOA; a successful transfer over TCP starts and ends with the SOA.
func FuzzServeTransfer(f *testing.F) {
	st := openStore(f)
	addDevice(f, st, "nas1", "198.51.100.1", "2001:db8:1::1")
	addDevice(f, st, "cam", "198.51.100.2", "")
	s, err := newTestServer(Config{Addr: "127.0.0.1:0", Source: st, Transfer: TransferConfig{Secondaries: secondaryAt("127.0.0.1"), Keys: xfrKeys(f)}})
	if err != nil {
		f.Fatal(err)
	}
	st.OnChange(s.ZoneChanged)
	if err := setAddr(context.Background(), st, "cam", "198.51.100.3"); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Shutdown(context.Background()) }) //nolint:errcheck // the test's own sockets
	for _, m := range []*dns.Msg{axfrQuery(), ixfrQuery(1), ixfrQuery(st.Serial() - 1), ixfrQuery(st.Serial()),
		new(dns.Msg).SetQuestion(xfrZone, dns.TypeIXFR), signed(axfrQuery(), xfrKey),
		signed(new(dns.Msg).SetQuestion("nas1."+xfrZone, dns.TypeA), "nosuch.example."),
		new(dns.Msg).SetAxfr("example.org.")} {
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if len(raw) < 12 {
			return
		}
		dh := dns.Header{Bits: binary.BigEndian.Uint16(raw[2:]), Qdcount: binary.BigEndian.Uint16(raw[4:])}
		if acceptQuery(dh) != dns.MsgAccept {
			return
		}
		r := new(dns.Msg)
		if r.Unpack(raw) != nil {
			return
		}
		for _, tcp := range []bool{false, true} {
			w := &recordingWriter{tcp: tcp, provider: tsigProvider{s.keys()}}
			if t := r.IsTsig(); t != nil {
				// As the server does before the handler runs.
				w.status = dns.TsigVerifyWithProvider(slices.Clone(raw), w.provider, "", false)
				w.requestMAC = t.MAC
			}
			s.ServeDNS(w, r)
			if w.err != nil {
				t.Fatalf("tcp=%v: a written message is unusable: %v\nquery %v", tcp, w.err, r)
			}
			if len(w.msgs) == 0 {
				t.Fatalf("tcp=%v: no answer to %v", tcp, r)
			}
			for _, m := range w.msgs {
				if !m.Response || m.Id != r.Id {
					t.Fatalf("tcp=%v: %v does not answer query %d", tcp, m, r.Id)
				}
			}
			if len(r.Question) != 1 || m0(w).Rcode != dns.RcodeSuccess {
				continue
			}
			switch q := r.Question[0].Qtype; {
			case (q == dns.TypeAXFR || q == dns.TypeIXFR) && !tcp:
				if len(w.msgs) != 1 || len(m0(w).Answer) > 1 {
					t.Fatalf("a transfer over UDP sent more than the SOA: %v", w.msgs)
				}
			case q == dns.TypeAXFR || q == dns.TypeIXFR:
				first, last := m0(w).Answer, w.msgs[len(w.msgs)-1].Answer
				if len(first) == 0 || first[0].Header().Rrtype != dns.TypeSOA || last[len(last)-1].Header().Rrtype != dns.TypeSOA {
					t.Fatalf("a transfer does not start and end with the SOA: %v", w.msgs)
				}
			}
		}
	})
}

func m0(w *recordingWriter) *dns.Msg { return w.msgs[0] }

// FuzzParseKey: any --tsig-key value is a key or an error, and a key has a
// canonical name, a known algorithm and a secret long enough; the error
// never repeats the secret.
func FuzzParseKey(f *testing.F) {
	for _, s := range []string{"xfr.example:hmac-sha256:" + xfrSecret, "hmac-sha512:k:" + xfrSecret, "k:hmac-md5:x", "::", "a:b:c:d"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParseKey(s)
		if err != nil {
			if parts := strings.Split(s, ":"); len(parts) == 3 && len(parts[2]) > 8 && parts[2] != parts[0] && parts[2] != parts[1] &&
				strings.Contains(err.Error(), parts[2]) {
				t.Fatalf("the error shows the secret: %v", err)
			}
			return
		}
		if k.Name != dns.CanonicalName(k.Name) || !isDomainName(k.Name) || len(k.Secret) < minSecretLen || !k.Transfer {
			t.Fatalf("ParseKey(%q) = %+v", s, k)
		}
		if _, err := (tsigProvider{StaticKeys{k.Name: k}}).Generate([]byte("x"), &dns.TSIG{Hdr: dns.RR_Header{Name: k.Name}, Algorithm: k.Algorithm}); err != nil {
			t.Fatalf("a parsed key does not sign: %v", err)
		}
	})
}

package stun

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	pion "github.com/pion/stun/v4"
)

// build returns a modern request built by pion with the given setters.
func build(t testing.TB, setters ...pion.Setter) []byte {
	t.Helper()
	m, err := pion.Build(append([]pion.Setter{pion.TransactionID, pion.BindingRequest}, setters...)...)
	if err != nil {
		t.Fatal(err)
	}
	return m.Raw
}

// classic returns an RFC 3489 Binding request: no magic cookie.
func classic(attrs ...byte) []byte {
	b := []byte{0x00, 0x01, 0, byte(len(attrs)), 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	return append(b, attrs...)
}

type rawAttr struct {
	typ uint16
	val []byte
}

func (a rawAttr) AddTo(m *pion.Message) error {
	m.Add(pion.AttrType(a.typ), a.val)
	return nil
}

func TestAnswerShapes(t *testing.T) {
	v4 := netip.MustParseAddrPort("127.0.0.1:40000")
	v6 := netip.MustParseAddrPort("[::1]:40001")
	mapped := netip.MustParseAddrPort("[::ffff:127.0.0.1]:40002")
	badFP := build(t, pion.Fingerprint)
	badFP[len(badFP)-1] ^= 1
	indication := build(t)
	indication[1] = 0x11 // Binding indication
	tests := []struct {
		name     string
		req      []byte
		from     netip.AddrPort
		software string
		// want: "" means dropped; otherwise the answer class.
		want        string
		wantMapped  netip.AddrPort
		wantCode    int
		wantUnknown []pion.AttrType
		wantSW      bool
	}{
		{name: "modern v4", req: build(t), from: v4, want: "success", wantMapped: v4},
		{name: "modern v6 XORs with transaction ID", req: build(t), from: v6, want: "success", wantMapped: v6},
		{name: "v4-mapped source reported as v4", req: build(t), from: mapped, want: "success", wantMapped: netip.MustParseAddrPort("127.0.0.1:40002")},
		{name: "with fingerprint", req: build(t, pion.Fingerprint), from: v4, want: "success", wantMapped: v4},
		{name: "software when configured", req: build(t), from: v4, software: "nasreach", want: "success", wantMapped: v4, wantSW: true},
		{name: "ICE attributes ignored", req: build(t, pion.NewUsername("a:b"), rawAttr{0x0024, []byte{0, 0, 0, 1}}), from: v4, want: "success", wantMapped: v4},
		{name: "change-request without flags", req: build(t, rawAttr{0x0003, []byte{0, 0, 0, 0}}), from: v4, want: "success", wantMapped: v4},
		{name: "change-request asking for another port", req: build(t, rawAttr{0x0003, []byte{0, 0, 0, 2}}), from: v4, want: "error", wantCode: 420, wantUnknown: []pion.AttrType{0x0003}},
		{name: "unknown comprehension-required", req: build(t, rawAttr{0x7777, []byte{1}}), from: v4, want: "error", wantCode: 420, wantUnknown: []pion.AttrType{0x7777}},
		{name: "unknown comprehension-optional ignored", req: build(t, rawAttr{0xC001, []byte{1, 2}}), from: v4, want: "success", wantMapped: v4},
		{name: "classic gets MAPPED-ADDRESS", req: classic(), from: v4, want: "classic", wantMapped: v4},
		{name: "classic with zero change-request", req: classic(0, 3, 0, 4, 0, 0, 0, 0), from: v4, want: "classic", wantMapped: v4},
		{name: "bad fingerprint dropped", req: badFP, from: v4},
		{name: "indication dropped", req: indication, from: v4},
		{name: "response dropped", req: func() []byte { b := build(t); b[0], b[1] = 0x01, 0x01; return b }(), from: v4},
		{name: "truncated header dropped", req: build(t)[:19], from: v4},
		{name: "length past end dropped", req: func() []byte { b := build(t); b[3] = 8; return b }(), from: v4},
		{name: "attribute past end dropped", req: append(build(t), 0, 0x22, 0, 0xff)[:24], from: v4},
		{name: "top bits set dropped", req: func() []byte { b := build(t); b[0] |= 0x40; return b }(), from: v4},
		{name: "channel data dropped", req: []byte{0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4}, from: v4},
		{name: "oversized dropped", req: build(t, rawAttr{0xC002, make([]byte, MaxRequestSize)}), from: v4},
		{name: "empty dropped", req: nil, from: v4},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := NewResponder(ResponderConfig{Software: tc.software})
			if err != nil {
				t.Fatal(err)
			}
			resp := r.Answer(tc.req, tc.from)
			if tc.want == "" {
				if resp != nil {
					t.Fatalf("answered %x, want dropped", resp)
				}
				if st := r.Stats(); st.Dropped != 1 || st.Answered != 0 {
					t.Errorf("stats %+v, want one dropped", st)
				}
				return
			}
			if resp == nil {
				t.Fatal("dropped, want an answer")
			}
			if !bytes.Equal(resp[4:20], tc.req[4:20]) {
				t.Errorf("transaction ID %x, want %x", resp[4:20], tc.req[4:20])
			}
			if tc.want == "classic" {
				checkClassic(t, resp, tc.wantMapped)
				return
			}
			m := &pion.Message{Raw: resp}
			if err := m.Decode(); err != nil {
				t.Fatalf("pion cannot decode the answer: %v", err)
			}
			if err := pion.Fingerprint.Check(m); err != nil {
				t.Errorf("fingerprint: %v", err)
			}
			if got := m.Contains(pion.AttrSoftware); got != tc.wantSW {
				t.Errorf("SOFTWARE present = %v, want %v", got, tc.wantSW)
			}
			if m.Contains(pion.AttrMappedAddress) {
				t.Error("modern answer carries MAPPED-ADDRESS")
			}
			switch tc.want {
			case "success":
				if m.Type != pion.BindingSuccess {
					t.Fatalf("type %v, want binding success", m.Type)
				}
				var xa pion.XORMappedAddress
				if err := xa.GetFrom(m); err != nil {
					t.Fatal(err)
				}
				got, _ := netip.AddrFromSlice(xa.IP)
				if ap := netip.AddrPortFrom(got.Unmap(), uint16(xa.Port)); ap != tc.wantMapped {
					t.Errorf("XOR-MAPPED-ADDRESS %v, want %v", ap, tc.wantMapped)
				}
			case "error":
				var code pion.ErrorCodeAttribute
				if err := code.GetFrom(m); err != nil || int(code.Code) != tc.wantCode {
					t.Errorf("error code %v (%v), want %d", code.Code, err, tc.wantCode)
				}
				var ua pion.UnknownAttributes
				if err := ua.GetFrom(m); err != nil || len(ua) != len(tc.wantUnknown) || ua[0] != tc.wantUnknown[0] {
					t.Errorf("UNKNOWN-ATTRIBUTES %v (%v), want %v", ua, err, tc.wantUnknown)
				}
			}
		})
	}
}

// checkClassic checks an RFC 3489 answer by hand: pion only decodes modern
// messages.
func checkClassic(t *testing.T, resp []byte, want netip.AddrPort) {
	t.Helper()
	if binary.BigEndian.Uint16(resp[0:2]) != 0x0101 || int(binary.BigEndian.Uint16(resp[2:4])) != len(resp)-20 {
		t.Fatalf("bad classic header %x", resp[:4])
	}
	a := resp[20:]
	if len(a) != 12 || binary.BigEndian.Uint16(a[0:2]) != 0x0001 || binary.BigEndian.Uint16(a[2:4]) != 8 || a[5] != 1 {
		t.Fatalf("want exactly one IPv4 MAPPED-ADDRESS, got %x", a)
	}
	ip, _ := netip.AddrFromSlice(a[8:12])
	if got := netip.AddrPortFrom(ip, binary.BigEndian.Uint16(a[6:8])); got != want {
		t.Errorf("MAPPED-ADDRESS %v, want %v", got, want)
	}
}

func TestResponderRefusesLongSoftware(t *testing.T) {
	if _, err := NewResponder(ResponderConfig{Software: string(make([]byte, MaxSoftwareLen+1))}); err == nil {
		t.Fatal("accepted an over-long SOFTWARE")
	}
}

// FuzzAnswer feeds arbitrary packets to the Binding parse path. Whatever comes
// in, an answer is either nothing or a well-formed message for the same
// transaction that pion can decode (modern) and that is never larger than a
// small bound.
func FuzzAnswer(f *testing.F) {
	f.Add(build(f))
	f.Add(build(f, pion.Fingerprint))
	f.Add(build(f, pion.NewSoftware("x"), rawAttr{0x7777, []byte{1, 2, 3}}, pion.Fingerprint))
	f.Add(classic())
	r, err := NewResponder(ResponderConfig{Software: "fuzz"})
	if err != nil {
		f.Fatal(err)
	}
	from := netip.MustParseAddrPort("[::1]:3478")
	f.Fuzz(func(t *testing.T, pkt []byte) {
		resp := r.Answer(pkt, from)
		if resp == nil {
			return
		}
		if len(resp) > 256 {
			t.Fatalf("answer of %d bytes", len(resp))
		}
		if !bytes.Equal(resp[4:20], pkt[4:20]) {
			t.Fatal("answer for another transaction")
		}
		if binary.BigEndian.Uint32(pkt[4:8]) == magicCookie {
			m := &pion.Message{Raw: resp}
			if err := m.Decode(); err != nil {
				t.Fatalf("answer does not decode: %v", err)
			}
			if err := pion.Fingerprint.Check(m); err != nil {
				t.Fatalf("answer fingerprint: %v", err)
			}
		}
	})
}

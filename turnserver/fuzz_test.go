package turnserver

import (
	"bytes"
	"context"
	"net/netip"
	"testing"

	pion "github.com/pion/stun/v4"
)

// fuzzSeeds are messages a TURN client sends, signed for the test user.
func fuzzSeeds(tb testing.TB) map[string][]byte {
	key := pion.NewLongTermIntegrity(testUser, DefaultRealm, testPass)
	auth := []pion.Setter{pion.NewUsername(testUser), pion.NewRealm(DefaultRealm), pion.NewNonce("n"), key}
	build := func(s ...pion.Setter) []byte {
		m, err := pion.Build(append([]pion.Setter{pion.TransactionID}, s...)...)
		if err != nil {
			tb.Fatal(err)
		}
		return m.Raw
	}
	denied := netip.MustParseAddrPort("[::ffff:127.0.0.1]:53")
	public := netip.MustParseAddrPort("127.0.0.1:9")
	return map[string][]byte{
		"allocate-udp":       build(append([]pion.Setter{pion.NewType(pion.MethodAllocate, pion.ClassRequest), requestedTransport(17)}, auth...)...),
		"allocate-tcp":       build(append([]pion.Setter{pion.NewType(pion.MethodAllocate, pion.ClassRequest), requestedTransport(6)}, auth...)...),
		"allocate-even-port": build(append([]pion.Setter{pion.NewType(pion.MethodAllocate, pion.ClassRequest), requestedTransport(17), evenPort(true)}, append(auth, pion.Fingerprint)...)...),
		"allocate-token":     build(append([]pion.Setter{pion.NewType(pion.MethodAllocate, pion.ClassRequest), requestedTransport(17), reservationToken([]byte("12345678"))}, auth...)...),
		"permission-denied":  build(append([]pion.Setter{pion.NewType(pion.MethodCreatePermission, pion.ClassRequest), peerAddr(public), peerAddr(denied)}, auth...)...),
		"channelbind-denied": build(append([]pion.Setter{pion.NewType(pion.MethodChannelBind, pion.ClassRequest), channelNumber(0x4000), peerAddr(denied)}, auth...)...),
		"send-indication":    build(pion.NewType(pion.MethodSend, pion.ClassIndication), peerAddr(public), setterFunc(func(m *pion.Message) error { m.Add(pion.AttrData, []byte("x")); return nil })),
		"binding":            build(pion.BindingRequest, pion.Fingerprint),
		"channel-data":       {0x40, 0x00, 0x00, 0x03, 'a', 'b', 'c', 0},
		"junk":               []byte("GET / HTTP/1.1\r\n\r\n"),
	}
}

// FuzzInspect feeds arbitrary client messages to the filter in front of pion
// (the STUN/TURN parse path: header, attributes, XOR-PEER-ADDRESS,
// MESSAGE-INTEGRITY, EVEN-PORT, RESERVATION-TOKEN) and to the stream framer.
// Nothing may panic; an answer must be a STUN error response for the same
// transaction, signed; a request passed on rewritten must be a request for
// the same transaction signed with the same key, its realm marked.
func FuzzInspect(f *testing.F) {
	for _, b := range fuzzSeeds(f) {
		f.Add(b)
	}
	srv, err := New(Config{Addr: "127.0.0.1:0", Users: []string{testUser + ":" + testPass}, Sockets: 1})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { srv.Shutdown(context.Background()) })
	from := netip.MustParseAddrPort("127.0.0.1:40000")
	key := pion.NewLongTermIntegrity(testUser, DefaultRealm, testPass)
	f.Fuzz(func(t *testing.T, b []byte) {
		var answers [][]byte
		in := append([]byte(nil), b...)
		out := srv.inspect(in, from, func(r []byte) { answers = append(answers, r) })
		if out != nil && !bytes.Equal(out, b) {
			m := &pion.Message{Raw: out}
			var realm pion.Realm
			if err := m.Decode(); err != nil || realm.GetFrom(m) != nil || key.Check(m) != nil || string(out[8:20]) != string(b[8:20]) {
				t.Fatalf("rewritten request does not decode, has no realm, is not signed or is for another transaction: %v", err)
			}
			if base, mark := srv.marks.split(realm.String()); base != DefaultRealm || mark == (intent{}) {
				t.Fatalf("rewritten realm %q is not the relay's, marked", realm)
			}
		}
		srv.marks.split(string(b))
		for _, r := range answers {
			m := &pion.Message{Raw: r}
			if err := m.Decode(); err != nil {
				t.Fatalf("answer does not decode: %v", err)
			}
			if m.Type.Class == pion.ClassErrorResponse {
				if err := key.Check(m); err != nil {
					t.Fatalf("error answer not signed: %v", err)
				}
			}
			if len(b) < 20 || string(m.Raw[8:20]) != string(b[8:20]) {
				t.Fatal("answer for another transaction")
			}
		}
		for _, first := range []bool{true, false} {
			if n := frameSize(b, first); n > len(b) || (n > 0 && n < 4) {
				t.Fatalf("frameSize = %d for %d bytes", n, len(b))
			}
		}
	})
}

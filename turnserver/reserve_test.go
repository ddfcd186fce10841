package turnserver

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/testutil"
	pion "github.com/pion/stun/v4"
)

// pion's client keeps EVEN-PORT and RESERVATION-TOKEN to itself (unexported
// settings), so these tests speak them with rawClient.

// evenPort is EVEN-PORT, with the R bit when reserve is set.
func evenPort(reserve bool) pion.Setter {
	return setterFunc(func(m *pion.Message) error {
		v := byte(0)
		if reserve {
			v = 0x80
		}
		m.Add(pion.AttrEvenPort, []byte{v})
		return nil
	})
}

func reservationToken(tok []byte) pion.Setter {
	return setterFunc(func(m *pion.Message) error { m.Add(pion.AttrReservationToken, tok); return nil })
}

func lifetime(d time.Duration) pion.Setter {
	return setterFunc(func(m *pion.Message) error {
		m.Add(pion.AttrLifetime, binary.BigEndian.AppendUint32(nil, uint32(d/time.Second)))
		return nil
	})
}

var requestedIPv4 = setterFunc(func(m *pion.Message) error {
	m.Add(pion.AttrRequestedAddressFamily, []byte{1, 0, 0, 0})
	return nil
})

// release deletes the client's allocation (Refresh with LIFETIME 0).
func (r *rawClient) release() {
	r.t.Helper()
	if resp := r.request(pion.NewType(pion.MethodRefresh, pion.ClassRequest), lifetime(0)); errorCode(resp) != 0 {
		r.t.Fatalf("refresh to 0: error %d", errorCode(resp))
	}
}

// granted returns the relayed address of a successful Allocate answer and
// its RESERVATION-TOKEN (nil without one).
func granted(t *testing.T, resp *pion.Message) (netip.AddrPort, []byte) {
	t.Helper()
	if code := errorCode(resp); code != 0 {
		t.Fatalf("allocate: error %d", code)
	}
	var relayed pion.XORMappedAddress
	if err := relayed.GetFromAs(resp, pion.AttrXORRelayedAddress); err != nil {
		t.Fatal(err)
	}
	ip, _ := netip.AddrFromSlice(relayed.IP)
	tok, err := resp.Get(pion.AttrReservationToken)
	if err != nil {
		tok = nil
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(relayed.Port)), tok
}

// portHeld reports whether the relay holds UDP port ap: binding it fails.
func portHeld(t *testing.T, ap netip.AddrPort) bool {
	t.Helper()
	c, err := net.ListenPacket("udp", ap.String())
	if err != nil {
		return true
	}
	c.Close()
	return false
}

// The pair coturn's client allocates for RTP and RTCP, each half from its
// own client port, against a relay listening on two sockets: pion kept the
// token on the socket that answered the first half, and the kernel hands
// each client port to one socket or the other, so the second half used to
// be answered 508 about every other time. Eight pairs all succeed now.
func TestReservationTokenTakesTheHeldPortOnAnySocket(t *testing.T) {
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			tt := startTURN(t, func(c *Config) { c.MaxAllocationsPerUser = 100 })
			for range 8 {
				rtp := newRawClient(t, network, tt.Addr(), testUser, testPass)
				rtp.fingerprint = true
				relay, tok := granted(t, rtp.allocateWith(evenPort(true)))
				if relay.Port()%2 != 0 || len(tok) != 8 {
					t.Fatalf("EVEN-PORT with R: relayed %v, token %x; want an even port and an 8-byte token", relay, tok)
				}
				next := netip.AddrPortFrom(relay.Addr(), relay.Port()+1)
				if st := tt.Stats(); st.Reserved != 1 || !portHeld(t, next) {
					t.Fatalf("%d reserved, %v held %v; want the port above held", st.Reserved, next, portHeld(t, next))
				}
				rtcp := newRawClient(t, network, tt.Addr(), testUser, testPass)
				rtcp.fingerprint = true
				if got, tok2 := granted(t, rtcp.allocateWith(reservationToken(tok))); got != next || tok2 != nil {
					t.Fatalf("RESERVATION-TOKEN: relayed %v (token %x), want %v", got, tok2, next)
				}
				if st := tt.Stats(); st.Reserved != 0 {
					t.Fatalf("%d reserved after the token was used, want 0", st.Reserved)
				}
				rtp.conn.Close() // a few connections at a time, as one client has
				rtcp.conn.Close()
			}
		})
	}
}

// A token is good for one allocation of the user it was given to.
func TestReservationTokenIsForOneAllocationOfItsUser(t *testing.T) {
	tt := startTURN(t, func(c *Config) { c.Users = append(c.Users, "bob:builder") })
	relay, tok := granted(t, newRawClient(t, "udp", tt.Addr(), testUser, testPass).allocateWith(evenPort(true)))

	resp := newRawClient(t, "udp", tt.Addr(), "bob", "builder").allocateWith(reservationToken(tok))
	if code := errorCode(resp); code != 508 {
		t.Fatalf("another user's token: code %d, want 508", code)
	}
	if ev := tt.nextRefusal(t); ev.Outcome != "refused" || !strings.Contains(ev.Detail, "allocate: 508") ||
		!strings.Contains(ev.Detail, "reservation token") {
		t.Errorf("refusal event %+v, want a 508 for the token", ev)
	}
	if got, _ := granted(t, newRawClient(t, "udp", tt.Addr(), testUser, testPass).allocateWith(reservationToken(tok))); got.Port() != relay.Port()+1 {
		t.Fatalf("the owner's token gave %v, want port %d", got, relay.Port()+1)
	}
	if code := errorCode(newRawClient(t, "udp", tt.Addr(), testUser, testPass).allocateWith(reservationToken(tok))); code != 508 {
		t.Fatalf("a used token: code %d, want 508", code)
	}
	if st := tt.Stats(); st.QuotaRefused != 2 {
		t.Errorf("stats %+v, want the two 508s counted as quota refusals", st)
	}
}

// EVEN-PORT without R: an even port and nothing held, no token.
func TestEvenPortWithoutReserveHoldsNothing(t *testing.T) {
	tt := startTURN(t)
	for range 4 {
		relay, tok := granted(t, newRawClient(t, "udp", tt.Addr(), testUser, testPass).allocateWith(evenPort(false)))
		if relay.Port()%2 != 0 || tok != nil {
			t.Fatalf("relayed %v, token %x; want an even port and no token", relay, tok)
		}
	}
	if st := tt.Stats(); st.Reserved != 0 || st.Allocations != 4 {
		t.Errorf("stats %+v, want 4 allocations and nothing reserved", st)
	}
}

// A held port goes back when its token expires, when the allocation that
// reserved it ends, and at shutdown; its token is then refused.
func TestReservationIsReleased(t *testing.T) {
	tests := []struct {
		name string
		end  func(t *testing.T, tt *testTURN, owner *rawClient)
	}{
		{"when the token expires", func(t *testing.T, tt *testTURN, _ *rawClient) {}},
		{"when its allocation ends", func(t *testing.T, _ *testTURN, owner *rawClient) { owner.release() }},
		{"at shutdown", func(t *testing.T, tt *testTURN, _ *rawClient) {
			if err := tt.Shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			life := time.Hour // nothing expires by itself during the test
			if tc.name == "when the token expires" {
				life = 300 * time.Millisecond
			}
			tt := startTURN(t, func(c *Config) { c.ReservationLifetime = life })
			owner := newRawClient(t, "udp", tt.Addr(), testUser, testPass)
			relay, tok := granted(t, owner.allocateWith(evenPort(true)))
			next := netip.AddrPortFrom(relay.Addr(), relay.Port()+1)
			if !portHeld(t, next) {
				t.Fatalf("%v is not held", next)
			}
			tc.end(t, tt, owner)
			testutil.WaitFor(t, 5*time.Second, "the reservation to end", func() bool { return tt.Stats().Reserved == 0 })
			if portHeld(t, next) {
				t.Errorf("%v is still held", next)
			}
			if tc.name == "at shutdown" {
				return
			}
			if code := errorCode(newRawClient(t, "udp", tt.Addr(), testUser, testPass).allocateWith(reservationToken(tok))); code != 508 {
				t.Errorf("the released token: code %d, want 508", code)
			}
		})
	}
}

// A held port counts as an allocation towards the user's quota until it is
// taken; taking it costs nothing more.
func TestReservationCountsTowardsTheQuota(t *testing.T) {
	tt := startTURN(t, func(c *Config) { c.MaxAllocationsPerUser = 2 })
	relay, tok := granted(t, newRawClient(t, "udp", tt.Addr(), testUser, testPass).allocateWith(evenPort(true)))
	if code := errorCode(newRawClient(t, "udp", tt.Addr(), testUser, testPass).allocateWith()); code != 486 {
		t.Fatalf("an allocation beside the pair: code %d, want 486", code)
	}
	if ev := tt.nextRefusal(t); !strings.Contains(ev.Detail, "486") || !strings.Contains(ev.Detail, "the user has 2 of 2, 1 asked") {
		t.Errorf("refusal event %+v, want the quota explained", ev)
	}
	if got, _ := granted(t, newRawClient(t, "udp", tt.Addr(), testUser, testPass).allocateWith(reservationToken(tok))); got.Port() != relay.Port()+1 {
		t.Fatalf("token gave %v, want port %d", got, relay.Port()+1)
	}
	if code := errorCode(newRawClient(t, "udp", tt.Addr(), testUser, testPass).allocateWith(evenPort(true))); code != 486 {
		t.Fatalf("a pair beyond the quota: code %d, want 486", code)
	}
	if st := tt.Stats(); st.Allocations != 2 || st.Reserved != 0 || st.QuotaRefused != 2 {
		t.Errorf("stats %+v, want 2 allocations, nothing reserved, 2 quota refusals", st)
	}
}

// RFC 8656 §7.2: RESERVATION-TOKEN beside EVEN-PORT or
// REQUESTED-ADDRESS-FAMILY, or malformed, is a bad request.
func TestMalformedReservationRequestsAre400(t *testing.T) {
	tt := startTURN(t)
	_, tok := granted(t, newRawClient(t, "udp", tt.Addr(), testUser, testPass).allocateWith(evenPort(true)))
	tests := []struct {
		name  string
		attrs []pion.Setter
	}{
		{"token and EVEN-PORT", []pion.Setter{reservationToken(tok), evenPort(false)}},
		{"token and address family", []pion.Setter{reservationToken(tok), requestedIPv4}},
		{"short token", []pion.Setter{reservationToken(tok[:4])}},
		{"empty EVEN-PORT", []pion.Setter{setterFunc(func(m *pion.Message) error { m.Add(pion.AttrEvenPort, nil); return nil })}},
	}
	for i, tc := range tests {
		resp := newRawClient(t, "udp", tt.Addr(), testUser, testPass).allocateWith(tc.attrs...)
		if code := errorCode(resp); code != 400 {
			t.Errorf("%s: code %d, want 400", tc.name, code)
		}
		if st := tt.Stats(); st.RequestRefused != uint64(i+1) {
			t.Errorf("%s: %d requests refused, want %d", tc.name, st.RequestRefused, i+1)
		}
	}
	if st := tt.Stats(); st.Reserved != 1 {
		t.Errorf("%d reserved, want the first pair's port still held", st.Reserved)
	}
}

// The realm mark is the filter's alone: a client that writes one into
// REALM, signed for that realm, has the wrong realm like any other.
func TestForgedRealmMarkIsAWrongRealm(t *testing.T) {
	tt := startTURN(t)
	forged := DefaultRealm + "\x00" + "0123456789abcdef:pair"
	if _, in := tt.marks.split(forged); in != (intent{}) {
		t.Fatalf("a mark without the relay's secret read as %+v", in)
	}
	r := newRawClient(t, "udp", tt.Addr(), testUser, testPass)
	r.challenge()
	r.realm, r.key = forged, pion.NewLongTermIntegrity(testUser, forged, testPass)
	if code := errorCode(r.allocateWith(evenPort(true))); code != 401 {
		t.Fatalf("forged realm: code %d, want 401", code)
	}
	if ev := tt.nextRefusal(t); ev.Outcome != "badauth" || ev.Detail != "allocate: 401 wrong realm" {
		t.Errorf("refusal event %+v, want a wrong realm", ev)
	}
	if st := tt.Stats(); st.AuthFailed != 1 || st.Reserved != 0 || st.Allocations != 0 {
		t.Errorf("stats %+v, want one credential refusal and nothing allocated", st)
	}
}

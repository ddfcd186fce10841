package turnserver

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

// A reload that drops a static user ends that user's allocations at once and
// refuses new ones; the other users are untouched, and an invalid list keeps
// the running credentials.
func TestSetUsersRevokesRemovedUsers(t *testing.T) {
	tt := startTURN(t, func(c *Config) { c.Users = append(c.Users, "other:pw2") })
	peer, _ := startEcho(t)
	gone, err := allocate(t, pionClient(t, "udp", tt.Addr(), testUser, testPass))
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, gone, peer, []byte("before reload"))

	if err := tt.SetUsers([]string{"broken"}); err == nil {
		t.Fatal("SetUsers accepted a pair without a password")
	}
	roundTrip(t, gone, peer, []byte("after a refused reload")) // still served

	if err := tt.SetUsers([]string{"other:pw2"}); err != nil {
		t.Fatal(err)
	}
	if ev := tt.nextEvent(t); ev.Detail != CredentialStatic+" over udp, "+EndRevoked {
		t.Errorf("event %+v, want %s revoked", ev, testUser)
	}
	if _, err := allocate(t, pionClient(t, "udp", tt.Addr(), testUser, testPass)); turnErrorCode(err) != 401 {
		t.Errorf("allocate as a removed user: %v, want 401", err)
	}
	kept, err := allocate(t, pionClient(t, "udp", tt.Addr(), "other", "pw2"))
	if err != nil {
		t.Fatalf("allocate as the user still listed: %v", err)
	}
	roundTrip(t, kept, peer, []byte("still here"))
}

// Allowing a peer range live lets data through at once; taking it back
// stops the data through the permission already granted. (127.0.0.1 is the
// relay's own address here, so the permission itself is granted and the
// policy decides per datagram.)
func TestSetAllowPeersAppliesToData(t *testing.T) {
	tt := startTURN(t, func(c *Config) { c.AllowPeers = nil })
	peer, echoed := startEcho(t)
	conn, err := allocate(t, pionClient(t, "udp", tt.Addr(), testUser, testPass))
	if err != nil {
		t.Fatal(err)
	}
	noEcho(t, conn, peer, echoed, "refused by default")

	tt.SetAllowPeers([]netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")})
	roundTrip(t, conn, peer, []byte("allowed now"))

	tt.SetAllowPeers(nil)
	for len(echoed) > 0 {
		<-echoed
	}
	noEcho(t, conn, peer, echoed, "not any more")
}

// noEcho sends payload through conn to peer and fails if it reaches the peer
// or anything comes back.
func noEcho(t *testing.T, conn net.PacketConn, peer net.Addr, echoed chan []byte, payload string) {
	t.Helper()
	if _, err := conn.WriteTo([]byte(payload), peer); err != nil {
		t.Fatalf("write through the relay: %v", err)
	}
	conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	if n, _, err := conn.ReadFrom(make([]byte, 64)); err == nil {
		t.Fatalf("%q: got %d bytes back from a peer that is not allowed", payload, n)
	} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Fatalf("read: %v, want a timeout", err)
	}
	select {
	case p := <-echoed:
		t.Fatalf("a peer that is not allowed received %q", p)
	default:
	}
}

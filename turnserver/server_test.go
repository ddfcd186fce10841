package turnserver

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nasreach/nasreach/connlog"
	"github.com/nasreach/nasreach/internal/listen"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/store"
	pion "github.com/pion/stun/v4"
	"github.com/rs/zerolog"
)

func TestRelayRoundTripsDataToAPeer(t *testing.T) {
	for _, transport := range []string{"udp", "tcp", "tls"} {
		t.Run(transport, func(t *testing.T) {
			tt := startTURN(t, func(c *Config) {
				c.TLS = selfSigned(t)
				c.TLSAddr = "127.0.0.1:0"
			})
			srv := tt.Addr()
			if transport == "tls" {
				srv = tt.TLSAddr()
			}
			peer, got := startEcho(t)
			client := pionClient(t, transport, srv, testUser, testPass)
			relayConn, err := allocate(t, client)
			if err != nil {
				t.Fatalf("allocate over %s: %v", transport, err)
			}
			if ip := relayConn.LocalAddr().(*net.UDPAddr).IP; !ip.Equal(net.IPv4(127, 0, 0, 1)) {
				t.Errorf("relayed address %v, want on 127.0.0.1", relayConn.LocalAddr())
			}
			roundTrip(t, relayConn, peer, []byte("hello over "+transport))
			<-got
			relayConn.Close() // Refresh with lifetime 0
			ev := tt.nextEvent(t)
			want := connlog.Event{Service: "turn", Kind: "allocation", Outcome: "ok", Client: netip.MustParseAddr("127.0.0.0"), Peers: 1,
				Detail: CredentialStatic + " over " + transport + ", " + EndReleased}
			if ev.Service != want.Service || ev.Kind != want.Kind || ev.Outcome != want.Outcome || ev.Device != "" ||
				ev.Client != want.Client || ev.Peers != want.Peers || ev.Detail != want.Detail {
				t.Errorf("event %+v, want %+v", ev, want)
			}
			if n := int64(len("hello over " + transport)); ev.BytesIn < n || ev.BytesOut < n {
				t.Errorf("event bytes %d/%d, want at least %d each way", ev.BytesIn, ev.BytesOut, n)
			}
			if ev.Time.Before(ev.Start) || ev.Start.IsZero() {
				t.Errorf("event times %v..%v", ev.Start, ev.Time)
			}
		})
	}
}

func TestChannelDataRoundTrip(t *testing.T) {
	tt := startTURN(t)
	peer, _ := startEcho(t)
	client := pionClient(t, "udp", tt.Addr(), testUser, testPass)
	relayConn, err := allocate(t, client)
	if err != nil {
		t.Fatal(err)
	}
	defer relayConn.Close()
	// pion's client binds a channel after the first datagrams to a peer.
	for i := range 20 {
		roundTrip(t, relayConn, peer, []byte(fmt.Sprintf("datagram %d", i)))
	}
}

func TestRESTCredentials(t *testing.T) {
	const secret = "rest-secret"
	now := time.Now()
	tt := startTURN(t, func(c *Config) { c.Secret = secret })
	tests := []struct {
		name     string
		user     string
		pass     string
		wantCode int
	}{
		{"valid", RESTUsername(now.Add(time.Hour), "webrtc-client"), RESTPassword(secret, RESTUsername(now.Add(time.Hour), "webrtc-client")), 0},
		{"valid without a name", RESTUsername(now.Add(time.Hour), ""), RESTPassword(secret, RESTUsername(now.Add(time.Hour), "")), 0},
		{"expired", RESTUsername(now.Add(-time.Minute), "webrtc-client"), RESTPassword(secret, RESTUsername(now.Add(-time.Minute), "webrtc-client")), 401},
		{"bad signature", RESTUsername(now.Add(time.Hour), "webrtc-client"), RESTPassword("other-secret", RESTUsername(now.Add(time.Hour), "webrtc-client")), 401},
		{"wrong static password", testUser, "guess", 401},
		{"unknown user", "mallory", "x", 401},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			client := pionClient(t, "udp", tt.Addr(), tc.user, tc.pass)
			relayConn, err := allocate(t, client)
			if tc.wantCode == 0 {
				if err != nil {
					t.Fatalf("allocate: %v", err)
				}
				relayConn.Close()
				if ev := tt.nextEvent(t); !strings.HasPrefix(ev.Detail, CredentialREST+" over udp") || ev.Device != "" {
					t.Errorf("event %+v, want a REST allocation", ev)
				}
				return
			}
			if got := turnErrorCode(err); got != tc.wantCode {
				t.Fatalf("allocate error %v (code %d), want %d", err, got, tc.wantCode)
			}
		})
	}
	if st := tt.Stats(); st.AuthFailed == 0 {
		t.Errorf("stats %+v: auth failures not counted", st)
	}
}

// deviceStore opens a real store with one device and returns its token.
func deviceStore(t *testing.T, name string) (*store.Store, string) {
	t.Helper()
	st, err := store.Open(store.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	_, token, err := st.Create(context.Background(), name, store.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return st, token
}

func TestDeviceCredentialsStopWorkingWhenTheDeviceGoes(t *testing.T) {
	for _, how := range []string{"deleted", "link off"} {
		t.Run(how, func(t *testing.T) {
			st, token := deviceStore(t, "nas1")
			tt := startTURN(t, func(c *Config) { c.Devices = st })
			peer, _ := startEcho(t)
			client := pionClient(t, "udp", tt.Addr(), "nas1", DevicePassword(token))
			relayConn, err := allocate(t, client)
			if err != nil {
				t.Fatalf("device allocate: %v", err)
			}
			roundTrip(t, relayConn, peer, []byte("from nas1"))
			if wrong := pionClient(t, "udp", tt.Addr(), "nas1", token); turnErrorCode(must(allocate(t, wrong))) != 401 {
				t.Error("the raw token (not its hash) was accepted as the TURN password")
			}

			ctx := context.Background()
			if how == "deleted" {
				err = st.Delete(ctx, "nas1")
			} else {
				off := false
				_, err = st.Update(ctx, "nas1", store.Patch{Link: &off})
			}
			if err != nil {
				t.Fatal(err)
			}
			// The live allocation ends at once...
			ev := tt.nextEvent(t)
			if ev.Detail != CredentialDevice+" over udp, "+EndRevoked || ev.Device != "nas1" {
				t.Errorf("event %+v, want nas1 revoked", ev)
			}
			if tt.Stats().Allocations != 0 {
				t.Errorf("%d allocations left", tt.Stats().Allocations)
			}
			// ...and new ones are refused with 401.
			again := pionClient(t, "udp", tt.Addr(), "nas1", DevicePassword(token))
			if _, err := allocate(t, again); turnErrorCode(err) != 401 {
				t.Fatalf("allocate after %s: %v, want 401", how, err)
			}
		})
	}
}

func TestDeviceLinkBackOnRestoresCredentials(t *testing.T) {
	st, token := deviceStore(t, "nas2")
	tt := startTURN(t, func(c *Config) { c.Devices = st })
	ctx := context.Background()
	off, on := false, true
	if _, err := st.Update(ctx, "nas2", store.Patch{Link: &off}); err != nil {
		t.Fatal(err)
	}
	if _, err := allocate(t, pionClient(t, "udp", tt.Addr(), "nas2", DevicePassword(token))); turnErrorCode(err) != 401 {
		t.Fatalf("allocate with link off: %v, want 401", err)
	}
	if _, err := st.Update(ctx, "nas2", store.Patch{Link: &on}); err != nil {
		t.Fatal(err)
	}
	rc, err := allocate(t, pionClient(t, "udp", tt.Addr(), "nas2", DevicePassword(token)))
	if err != nil {
		t.Fatalf("allocate with link back on: %v", err)
	}
	rc.Close()
}

func must[T any](_ T, err error) error { return err }

func TestQuotas(t *testing.T) {
	t.Run("per user", func(t *testing.T) {
		tt := startTURN(t, func(c *Config) {
			c.MaxAllocationsPerUser = 2
			c.Users = append(c.Users, "bob:builder")
		})
		for i := range 2 {
			if _, err := allocate(t, pionClient(t, "udp", tt.Addr(), testUser, testPass)); err != nil {
				t.Fatalf("allocation %d: %v", i+1, err)
			}
		}
		_, err := allocate(t, pionClient(t, "udp", tt.Addr(), testUser, testPass))
		if code := turnErrorCode(err); code != 486 {
			t.Fatalf("third allocation: %v (code %d), want 486", err, code)
		}
		if _, err := allocate(t, pionClient(t, "udp", tt.Addr(), "bob", "builder")); err != nil {
			t.Fatalf("another user is not bound by alice's quota: %v", err)
		}
		if st := tt.Stats(); st.QuotaRefused != 1 || st.Allocations != 3 {
			t.Errorf("stats %+v, want one refusal and 3 allocations", st)
		}
	})
	t.Run("in total", func(t *testing.T) {
		tt := startTURN(t, func(c *Config) {
			c.MaxAllocations = 2
			c.Users = append(c.Users, "bob:builder")
		})
		if _, err := allocate(t, pionClient(t, "udp", tt.Addr(), testUser, testPass)); err != nil {
			t.Fatal(err)
		}
		if _, err := allocate(t, pionClient(t, "tcp", tt.Addr(), "bob", "builder")); err != nil {
			t.Fatal(err)
		}
		_, err := allocate(t, pionClient(t, "udp", tt.Addr(), "bob", "builder"))
		if code := turnErrorCode(err); code != 486 {
			t.Fatalf("allocation beyond the total: %v (code %d), want 486", err, code)
		}
	})
	t.Run("lifetime cap", func(t *testing.T) {
		tt := startTURN(t, func(c *Config) { c.MaxLifetime = 300 * time.Millisecond })
		start := time.Now()
		if _, err := allocate(t, pionClient(t, "udp", tt.Addr(), testUser, testPass)); err != nil {
			t.Fatal(err)
		}
		ev := tt.nextEvent(t)
		if !strings.HasSuffix(ev.Detail, ", "+EndCapped) {
			t.Errorf("event %+v, want reason %q", ev, EndCapped)
		}
		if d := time.Since(start); d < 300*time.Millisecond {
			t.Errorf("ended after %v, before the cap", d)
		}
	})
	t.Run("bandwidth", func(t *testing.T) {
		tt := startTURN(t, func(c *Config) { c.BandwidthPerAllocation = 4000 })
		// A peer that only counts: an echo would send datagrams back through
		// the cap, and its drops would count with the ones measured here.
		peer, received := startSink(t)
		relayConn, err := allocate(t, pionClient(t, "udp", tt.Addr(), testUser, testPass))
		if err != nil {
			t.Fatal(err)
		}
		defer relayConn.Close()
		payload := make([]byte, 1000)
		const sent = 40 // 40 kB in well under a second, ten times the cap
		for range sent {
			if _, err := relayConn.WriteTo(payload, peer); err != nil {
				t.Fatal(err)
			}
		}
		// Every datagram is either forwarded to the peer or dropped by the
		// cap; once all are accounted for the count is final.
		testutil.WaitFor(t, 5*time.Second, "every datagram forwarded or dropped", func() bool {
			return received.Load()+int64(tt.Stats().BandwidthDropped) >= sent
		})
		if n := received.Load(); n == 0 || n >= sent/2 {
			t.Errorf("peer received %d of %d datagrams, want a few (cap 4000 B/s, burst %d B)", n, sent, inboundMTU*2)
		}
		if tt.Stats().BandwidthDropped == 0 {
			t.Error("no datagram counted as dropped by the bandwidth cap")
		}
	})
}

func TestTCPAllocationIsRefusedWith442(t *testing.T) {
	tt := startTURN(t)
	r := newRawClient(t, "udp", tt.Addr(), testUser, testPass)
	resp := r.request(pion.NewType(pion.MethodAllocate, pion.ClassRequest), requestedTransport(6))
	if code := errorCode(resp); code != 442 {
		t.Fatalf("TCP allocation answered %d, want 442", code)
	}
	if err := r.key.Check(resp); err != nil {
		t.Errorf("442 answer not signed: %v", err)
	}
}

func TestPeersRelayingToEachOtherThroughTheServer(t *testing.T) {
	tt := startTURN(t, func(c *Config) { c.AllowPeers = nil }) // default policy
	a := pionClient(t, "udp", tt.Addr(), testUser, testPass)
	b := pionClient(t, "tcp", tt.Addr(), testUser, testPass)
	relayA, err := allocate(t, a)
	if err != nil {
		t.Fatal(err)
	}
	relayB, err := allocate(t, b)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.CreatePermission(relayA.LocalAddr()); err != nil {
		t.Fatalf("permission toward a relay address of this server: %v", err)
	}
	buf := make([]byte, 100)
	for attempt := 0; ; attempt++ {
		if _, err := relayA.WriteTo([]byte("ping"), relayB.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		relayB.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		n, from, err := relayB.ReadFrom(buf)
		if err == nil {
			if string(buf[:n]) != "ping" || from.String() != relayA.LocalAddr().String() {
				t.Fatalf("got %q from %v", buf[:n], from)
			}
			return
		}
		if attempt == 5 {
			t.Fatal("nothing arrived from one relay address to the other")
		}
	}
}

// TestDeniedPeers is the table of refused peer addresses: every range of
// DeniedPeerPrefixes and the IPv4-mapped, NAT64, 6to4 and Teredo forms of
// refused IPv4 addresses get 403 for CreatePermission and ChannelBind, with
// the default policy. The addresses are only data: a refused request never
// sends anything anywhere.
func TestDeniedPeers(t *testing.T) {
	tt := startTURN(t, func(c *Config) { c.AllowPeers = nil })
	_, echoPort := func() (netip.Addr, uint16) {
		p, _ := startEcho(t)
		return netip.Addr{}, uint16(p.Port)
	}()
	denied := []struct{ addr, why string }{
		{"0.0.0.0", "this network"},
		{"0.1.2.3", "this network"},
		{"10.0.0.1", "RFC 1918"},
		{"100.64.0.1", "shared address space"},
		{"100.127.255.254", "shared address space"},
		{"127.0.0.2", "loopback"},
		{"127.255.255.254", "loopback"},
		{"169.254.169.254", "link-local, cloud metadata"},
		{"172.16.0.1", "RFC 1918"},
		{"172.31.255.254", "RFC 1918"},
		{"192.0.0.8", "IETF protocol assignments"},
		{"192.168.1.1", "RFC 1918"},
		{"198.18.0.1", "benchmarking"},
		{"198.19.255.254", "benchmarking"},
		{"224.0.0.1", "multicast"},
		{"239.255.255.250", "multicast"},
		{"240.0.0.1", "reserved"},
		{"255.255.255.255", "broadcast"},
		{"::", "IPv6 unspecified"},
		{"::1", "IPv6 loopback"},
		{"fc00::1", "unique local"},
		{"fd12:3456::1", "unique local"},
		{"fe80::1", "link-local"},
		{"ff02::1", "multicast"},
		{"ff0e::1", "multicast"},
		{"::ffff:127.0.0.1", "IPv4-mapped loopback (CVE-2026-27624)"},
		{"::ffff:10.0.0.1", "IPv4-mapped private"},
		{"::ffff:169.254.169.254", "IPv4-mapped metadata"},
		{"::127.0.0.1", "IPv4-compatible loopback"},
		{"64:ff9b::7f00:1", "NAT64 of 127.0.0.1"},
		{"64:ff9b::a9fe:a9fe", "NAT64 of 169.254.169.254"},
		{"64:ff9b::c0a8:101", "NAT64 of 192.168.1.1"},
		{"64:ff9b:1::1", "local-use NAT64"},
		{"2002:7f00:1::1", "6to4 of 127.0.0.1"},
		{"2002:a00:1::1", "6to4 of 10.0.0.1"},
		{"2002:c0a8:101::1", "6to4 of 192.168.1.1"},
		{"2001:0:7f00:1::1", "Teredo with a loopback server"},
		{"2001:0:4136:e378:8000:63bf:80ff:fffe", "Teredo with client 127.0.0.1"},
		{"2001:0:4136:e378:8000:63bf:f5ff:fffe", "Teredo with client 10.0.0.1"},
	}
	r := newRawClient(t, "udp", tt.Addr(), testUser, testPass)
	r.allocate()
	for i, tc := range denied {
		t.Run(tc.addr, func(t *testing.T) {
			peer := netip.AddrPortFrom(netip.MustParseAddr(tc.addr), echoPort)
			if v := tt.policy.Check(peer); v.OK() {
				t.Fatalf("%s (%s): policy says %q", tc.addr, tc.why, v)
			}
			resp := r.request(pion.NewType(pion.MethodCreatePermission, pion.ClassRequest), peerAddr(peer))
			if code := errorCode(resp); code != 403 {
				t.Errorf("CreatePermission %s (%s): answered %d, want 403", tc.addr, tc.why, code)
			}
			resp = r.request(pion.NewType(pion.MethodChannelBind, pion.ClassRequest), channelNumber(0x4000+i), peerAddr(peer))
			if code := errorCode(resp); code != 403 {
				t.Errorf("ChannelBind %s (%s): answered %d, want 403", tc.addr, tc.why, code)
			}
			if err := r.key.Check(resp); err != nil {
				t.Errorf("403 answer not signed: %v", err)
			}
		})
	}
	// A refusal among allowed peers refuses the whole request.
	resp := r.request(pion.NewType(pion.MethodCreatePermission, pion.ClassRequest),
		peerAddr(netip.MustParseAddrPort("127.0.0.1:9")), peerAddr(netip.MustParseAddrPort("10.0.0.1:9")))
	if code := errorCode(resp); code != 403 {
		t.Errorf("mixed CreatePermission answered %d, want 403", code)
	}
}

// TestOwnAddressOnlyReachesRelayAddresses: the relay's own IP (127.0.0.1
// here) may hold a permission, because two clients of this server talk
// through their relay addresses, but a ChannelBind or Send toward any other
// port of it (a local service) is refused.
func TestOwnAddressOnlyReachesRelayAddresses(t *testing.T) {
	tt := startTURN(t, func(c *Config) { c.AllowPeers = nil })
	echo, got := startEcho(t)
	service := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(echo.Port))
	r := newRawClient(t, "udp", tt.Addr(), testUser, testPass)
	r.allocate()
	resp := r.request(pion.NewType(pion.MethodCreatePermission, pion.ClassRequest), peerAddr(service))
	if code := errorCode(resp); code != 0 {
		t.Fatalf("permission for the relay IP answered %d, want success", code)
	}
	resp = r.request(pion.NewType(pion.MethodChannelBind, pion.ClassRequest), channelNumber(0x4001), peerAddr(service))
	if code := errorCode(resp); code != 403 {
		t.Errorf("ChannelBind to a local service answered %d, want 403", code)
	}
	before := tt.Stats().PeerRefused
	r.send(pion.NewType(pion.MethodSend, pion.ClassIndication), peerAddr(service), setterFunc(func(m *pion.Message) error {
		m.Add(pion.AttrData, []byte("to a local service"))
		return nil
	}))
	select {
	case b := <-got:
		t.Fatalf("the local service received %q through the relay", b)
	case <-time.After(300 * time.Millisecond):
	}
	if tt.Stats().PeerRefused == before {
		t.Error("the Send indication was not counted as refused")
	}
}

func TestPolicyTable(t *testing.T) {
	relayIP := netip.MustParseAddr("127.0.0.1")
	live := netip.MustParseAddrPort("127.0.0.1:50000")
	p := NewPeerPolicy([]netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")}, []netip.Addr{relayIP},
		[]netip.Addr{netip.MustParseAddr("127.0.0.3"), netip.MustParseAddr("fd00::3")},
		func(ap netip.AddrPort) bool { return ap == live })
	tests := []struct {
		ap   string
		want PeerVerdict
	}{
		{"127.0.0.1:50000", PeerRelay},
		{"127.0.0.1:50001", PeerOwn},
		{"[::ffff:127.0.0.1]:50000", PeerDenied},
		{"127.0.0.3:1", PeerOwn},
		{"[fd00::3]:1", PeerOwn},
		{"[64:ff9b::7f00:1]:50000", PeerEmbedded},
		{"10.9.1.1:53", PeerAllowListed},
		{"[::ffff:10.9.1.1]:53", PeerAllowListed},
		{"10.8.1.1:53", PeerDenied},
		{"[2002:a09:101::1]:1", PeerEmbedded},
	}
	for _, tc := range tests {
		if got := p.Check(netip.MustParseAddrPort(tc.ap)); got != tc.want {
			t.Errorf("Check(%s) = %q, want %q", tc.ap, got, tc.want)
		}
	}
}

func TestBindingOnTheTURNPort(t *testing.T) {
	asked := make(chan netip.AddrPort, 4)
	tt := startTURN(t, func(c *Config) {
		c.Binding = func(req []byte, from netip.AddrPort) []byte {
			asked <- from
			m := &pion.Message{Raw: append([]byte(nil), req...)}
			if m.Decode() != nil {
				return nil
			}
			resp, _ := pion.Build(m, pion.BindingSuccess, &pion.XORMappedAddress{IP: from.Addr().AsSlice(), Port: int(from.Port())})
			return resp.Raw
		}
	})
	for _, network := range []string{"udp", "tcp"} {
		r := newRawClient(t, network, tt.Addr(), "", "")
		resp := r.roundTrip(must2(pion.Build(pion.TransactionID, pion.BindingRequest)))
		var xa pion.XORMappedAddress
		if err := xa.GetFrom(resp); err != nil {
			t.Fatalf("%s: %v", network, err)
		}
		hookSaw := <-asked
		if got := fmt.Sprintf("%s:%d", xa.IP, xa.Port); got != r.conn.LocalAddr().String() || hookSaw.String() != got {
			t.Errorf("%s: mapped %s (hook saw %s), want %s", network, got, hookSaw, r.conn.LocalAddr())
		}
	}
}

func must2[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestMalformedInputIsDropped(t *testing.T) {
	tt := startTURN(t)
	u, err := net.Dial("udp", tt.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	for _, junk := range []string{"GET / HTTP/1.1\r\n\r\n", "\xff\xff\xff\xff", strings.Repeat("\x00", 19)} {
		u.Write([]byte(junk))
	}
	// Then a Binding request: the socket is read in order, so the first
	// answer is this one's unless the junk got one.
	req := must2(pion.Build(pion.TransactionID, pion.BindingRequest))
	u.Write(req.Raw)
	u.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1500)
	n, err := u.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	if m := (&pion.Message{Raw: buf[:n]}); m.Decode() != nil || m.TransactionID != req.TransactionID {
		t.Errorf("UDP junk got a %d-byte answer", n)
	}
	c, err := net.Dial("tcp", tt.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Read(make([]byte, 100)); err == nil {
		t.Error("TCP junk got an answer")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Error("TCP connection kept open after junk")
	}
	if tt.Stats().Malformed < 3 {
		t.Errorf("stats %+v, want the junk counted", tt.Stats())
	}
}

func TestSilentTCPConnectionIsClosed(t *testing.T) {
	tt := startTURN(t, func(c *Config) { c.TCPIdleTimeout = 200 * time.Millisecond })
	c, err := net.Dial("tcp", tt.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// One request, then silence: idle after the first frame.
	r := &rawClient{t: t, conn: c, tcp: true}
	r.roundTrip(must2(pion.Build(pion.TransactionID, pion.BindingRequest)))
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Read(make([]byte, 10)); err == nil {
		t.Fatal("read data from an idle connection")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("idle connection not closed by the server")
	}
}

func TestShutdownStopsEveryGoroutine(t *testing.T) {
	before := runtime.NumGoroutine()
	events := make(chan connlog.Event, 8)
	srv, err := New(Config{
		Addr: "127.0.0.1:0", Users: []string{"u:p"}, AllowPeers: loopbackOnly, Sockets: 2,
		TLS: selfSigned(t), TLSAddr: "127.0.0.1:0",
		Events: func(ev connlog.Event) {
			if ev.Kind == "allocation" {
				events <- ev
			}
		},
		Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
	})
	if err != nil {
		t.Fatal(err)
	}
	// Live allocations over each transport, and an idle TCP connection.
	var clients []testClient
	var relays []net.PacketConn
	for _, tr := range []string{"udp", "tcp", "tls"} {
		addr := srv.Addr()
		if tr == "tls" {
			addr = srv.TLSAddr()
		}
		c := newPionClient(t, tr, addr, "u", "p")
		clients = append(clients, c)
		rc, err := allocate(t, c.client)
		if err != nil {
			t.Fatal(err)
		}
		relays = append(relays, rc)
	}
	idle, err := net.Dial("tcp", srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		select {
		case ev := <-events:
			if !strings.HasSuffix(ev.Detail, ", "+EndShutdown) {
				t.Errorf("event %+v, want reason %q", ev, EndShutdown)
			}
		case <-time.After(2 * time.Second):
			t.Fatal("an allocation emitted no event on Shutdown")
		}
	}
	// The clients' own goroutines (refresh timers, read loops) end too.
	for _, rc := range relays {
		rc.Close()
	}
	for _, c := range clients {
		c.close()
	}
	idle.Close()
	waitGoroutines(t, before)
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
}

func TestTCPFramesCoalescedAndSplitAreAllAnswered(t *testing.T) {
	// The relay serves a listener that counts the bytes it reads, so that
	// each part of the split request is sent only once the relay has read
	// everything before it: each then arrives in a read of its own.
	socks, err := listen.Bind(listen.Config{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	counted := &countingListener{Listener: socks.TCP[0]}
	tt := startTURN(t, func(c *Config) {
		c.PacketConns, c.Listeners = socks.UDP, []net.Listener{counted}
	})
	c, err := net.Dial("tcp", tt.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// 60 requests in one write (more than pion's read buffer holds), then
	// one request in three writes.
	want := map[[pion.TransactionIDSize]byte]bool{}
	var burst []byte
	for range 60 {
		m := must2(pion.Build(pion.TransactionID, pion.BindingRequest))
		want[m.TransactionID] = true
		burst = append(burst, m.Raw...)
	}
	written := 0
	write := func(b []byte) {
		t.Helper()
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		written += len(b)
		testutil.WaitFor(t, 5*time.Second, fmt.Sprintf("the relay to read %d bytes", written), func() bool {
			return counted.read.Load() >= int64(written)
		})
	}
	write(burst)
	split := must2(pion.Build(pion.TransactionID, pion.BindingRequest))
	want[split.TransactionID] = true
	for _, part := range [][]byte{split.Raw[:3], split.Raw[3:17], split.Raw[17:]} {
		write(part)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	for len(want) > 0 {
		hdr, err := r.Peek(20)
		if err != nil {
			t.Fatalf("%d answers missing: %v", len(want), err)
		}
		raw := make([]byte, 20+int(binary.BigEndian.Uint16(hdr[2:4])))
		if _, err := io.ReadFull(r, raw); err != nil {
			t.Fatal(err)
		}
		m := &pion.Message{Raw: raw}
		if err := m.Decode(); err != nil {
			t.Fatal(err)
		}
		if !want[m.TransactionID] {
			t.Fatalf("answer to an unknown or repeated transaction %x", m.TransactionID)
		}
		delete(want, m.TransactionID)
	}
}

// startSink runs a UDP peer on 127.0.0.1 that counts the datagrams it
// receives and answers none.
func startSink(t *testing.T) (*net.UDPAddr, *atomic.Int64) {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var received atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := c.ReadFrom(buf); err != nil {
				return
			}
			received.Add(1)
		}
	})
	t.Cleanup(func() { c.Close(); wg.Wait() })
	return c.LocalAddr().(*net.UDPAddr), &received
}

// countingListener counts the bytes read from the connections it accepts.
type countingListener struct {
	net.Listener
	read atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c, read: &l.read}, nil
}

type countingConn struct {
	net.Conn
	read *atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

// Sockets handed to New belong to the relay from the call on: when New
// fails, it has closed every one of them.
func TestNewClosesGivenSocketsOnError(t *testing.T) {
	for _, tc := range []struct {
		name                   string
		udp, tcp, tls, withTLS bool
		users                  []string
	}{
		{"Listeners without PacketConns", false, true, false, false, []string{"u:p"}},
		{"TLSListeners without TLS", true, true, true, false, []string{"u:p"}},
		{"invalid user", true, true, true, true, []string{"no-password"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			socks, err := listen.Bind(listen.Config{Addr: "127.0.0.1:0"})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { socks.Close() })
			tlsSocks, err := listen.Bind(listen.Config{Addr: "127.0.0.1:0", TCPOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { tlsSocks.Close() })
			cfg := Config{Addr: "127.0.0.1:0", Users: tc.users}
			if tc.udp {
				cfg.PacketConns = socks.UDP
			}
			if tc.tcp {
				cfg.Listeners = socks.TCP
			}
			if tc.tls {
				cfg.TLSListeners = tlsSocks.TCP
			}
			if tc.withTLS {
				cfg.TLS = selfSigned(t)
			}
			if srv, err := New(cfg); err == nil {
				srv.Shutdown(context.Background())
				t.Fatal("New succeeded")
			}
			for _, c := range cfg.PacketConns {
				if !testutil.Closed(c) {
					t.Errorf("PacketConn %v still open after New failed", c.LocalAddr())
				}
			}
			for _, l := range append(slices.Clone(cfg.Listeners), cfg.TLSListeners...) {
				if !testutil.Closed(l.(*net.TCPListener)) {
					t.Errorf("listener %v still open after New failed", l.Addr())
				}
			}
		})
	}
}

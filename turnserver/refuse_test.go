package turnserver

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/testutil"
	pion "github.com/pion/stun/v4"
	"github.com/rs/zerolog"
)

// Every refused request is counted under its reason, once, logged with the
// client masked, and sent to Events; nothing else is counted.
func TestEveryRefusalIsCountedLoggedAndRecorded(t *testing.T) {
	const secret = "rest-secret"
	refusedPeer := netip.MustParseAddrPort("192.168.1.10:9")
	tests := []struct {
		name    string
		refuse  func(t *testing.T, tt *testTURN) int // returns the code answered
		reason  string
		outcome string
		detail  string
	}{
		{"wrong password", func(t *testing.T, tt *testTURN) int {
			_, err := allocate(t, pionClient(t, "udp", tt.Addr(), testUser, "guess"))
			return turnErrorCode(err)
		}, RefusedAuth, "badauth", "allocate: 401 wrong password"},
		{"unknown user", func(t *testing.T, tt *testTURN) int {
			_, err := allocate(t, pionClient(t, "tcp", tt.Addr(), "mallory", "x"))
			return turnErrorCode(err)
		}, RefusedAuth, "badauth", "allocate: 401 unknown user"},
		{"expired REST credentials", func(t *testing.T, tt *testTURN) int {
			user := RESTUsername(time.Now().Add(-time.Minute), "webrtc")
			_, err := allocate(t, pionClient(t, "udp", tt.Addr(), user, RESTPassword(secret, user)))
			return turnErrorCode(err)
		}, RefusedAuth, "badauth", "allocate: 401 expired REST credentials"},
		{"quota", func(t *testing.T, tt *testTURN) int {
			if _, err := allocate(t, pionClient(t, "udp", tt.Addr(), testUser, testPass)); err != nil {
				t.Fatal(err)
			}
			_, err := allocate(t, pionClient(t, "udp", tt.Addr(), testUser, testPass))
			return turnErrorCode(err)
		}, RefusedQuota, "refused", "allocate: 486 allocation quota reached: the user has 1 of 1, 1 asked"},
		{"no such reservation", func(t *testing.T, tt *testTURN) int {
			return errorCode(newRawClient(t, "udp", tt.Addr(), testUser, testPass).allocateWith(reservationToken([]byte("12345678"))))
		}, RefusedQuota, "refused", "allocate: 508 reservation token unknown, expired or used"},
		{"refused peer", func(t *testing.T, tt *testTURN) int {
			r := newRawClient(t, "udp", tt.Addr(), testUser, testPass)
			r.allocate()
			return errorCode(r.request(pion.NewType(pion.MethodCreatePermission, pion.ClassRequest), peerAddr(refusedPeer)))
		}, RefusedPeer, "refused", "createpermission: 403 permission for a peer the policy refuses"},
		{"TCP relay", func(t *testing.T, tt *testTURN) int {
			return errorCode(newRawClient(t, "udp", tt.Addr(), testUser, testPass).request(
				pion.NewType(pion.MethodAllocate, pion.ClassRequest), requestedTransport(protoTCP)))
		}, RefusedRequest, "refused", "allocate: 442 relaying over TCP (RFC 6062) is not supported"},
		{"pion's own refusal", func(t *testing.T, tt *testTURN) int {
			r := newRawClient(t, "udp", tt.Addr(), testUser, testPass)
			r.allocate()
			return errorCode(r.allocateWith()) // a second Allocate on the same 5-tuple
		}, RefusedRequest, "refused", "allocate: 437 allocation mismatch"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var logs testutil.Buffer
			tt := startTURN(t, func(c *Config) {
				c.Secret = secret
				c.MaxAllocationsPerUser = 1
				c.Logger = zerolog.New(&logs)
			})
			code := tc.refuse(t, tt)
			if code < 400 {
				t.Fatalf("answered %d, want a refusal", code)
			}
			ev := tt.nextRefusal(t)
			if ev.Service != "turn" || ev.Kind != "request" || ev.Outcome != tc.outcome || ev.Detail != tc.detail ||
				ev.Client != netip.MustParseAddr("127.0.0.0") {
				t.Errorf("event %+v, want outcome %q, detail %q, client 127.0.0.0", ev, tc.outcome, tc.detail)
			}
			select {
			case ev := <-tt.refusals:
				t.Errorf("a second refusal event %+v", ev)
			case <-time.After(100 * time.Millisecond):
			}
			st := tt.Stats()
			got := map[string]uint64{RefusedAuth: st.AuthFailed, RefusedQuota: st.QuotaRefused, RefusedPeer: st.PeerRefused, RefusedRequest: st.RequestRefused}
			for reason, n := range got {
				if want := map[bool]uint64{true: 1}[reason == tc.reason]; n != want {
					t.Errorf("%s refusals = %d, want %d (stats %+v)", reason, n, want, st)
				}
			}
			testutil.WaitFor(t, 2*time.Second, "the refusal's log line", func() bool {
				return strings.Contains(logs.String(), `"detail":"`+tc.detail+`"`)
			})
			var line string
			for l := range strings.Lines(logs.String()) {
				if strings.Contains(l, `"detail":"`+tc.detail+`"`) {
					line = l
				}
			}
			if !strings.Contains(line, `"message":"turn request refused"`) || !strings.Contains(line, `"reason":"`+tc.reason+`"`) ||
				!strings.Contains(line, `"client":"127.0.0.0"`) || strings.Contains(line, "127.0.0.1") {
				t.Errorf("log line %s, want the refusal with the client masked", line)
			}
		})
	}
}

// The 401 that challenges a request without credentials and the 438 that
// asks for a fresh nonce are how TURN authenticates, not refusals.
func TestChallengesAreNotRefusals(t *testing.T) {
	tt := startTURN(t)
	if _, err := allocate(t, pionClient(t, "udp", tt.Addr(), testUser, testPass)); err != nil {
		t.Fatal(err) // challenged first, then allocated
	}
	r := newRawClient(t, "udp", tt.Addr(), testUser, testPass)
	r.challenge()
	r.nonce = "stale"
	stale := r.roundTrip(must2(pion.Build(pion.TransactionID, pion.NewType(pion.MethodAllocate, pion.ClassRequest),
		requestedTransport(17), pion.NewUsername(testUser), pion.NewRealm(DefaultRealm), pion.NewNonce("stale"), r.key)))
	if code := errorCode(stale); code != 438 {
		t.Fatalf("stale nonce answered %d, want 438", code)
	}
	if st := tt.Stats(); st.AuthFailed+st.QuotaRefused+st.PeerRefused+st.RequestRefused != 0 {
		t.Errorf("stats %+v, want no refusal", st)
	}
	select {
	case ev := <-tt.refusals:
		t.Errorf("refusal event %+v", ev)
	case <-time.After(100 * time.Millisecond):
	}
}

// A device's refusals name it; an unknown username is never written down.
func TestRefusalNamesOnlyAKnownDevice(t *testing.T) {
	st, token := deviceStore(t, "nas1")
	tt := startTURN(t, func(c *Config) { c.Devices = st })
	if _, err := allocate(t, pionClient(t, "udp", tt.Addr(), "nas1", "not-the-hash")); turnErrorCode(err) != 401 {
		t.Fatalf("wrong device password: %v", err)
	}
	if ev := tt.nextRefusal(t); ev.Device != "nas1" || ev.Detail != "allocate: 401 wrong password" {
		t.Errorf("event %+v, want nas1's wrong password", ev)
	}
	if _, err := allocate(t, pionClient(t, "udp", tt.Addr(), "hunter2", DevicePassword(token))); turnErrorCode(err) != 401 {
		t.Fatalf("unknown user: %v", err)
	}
	if ev := tt.nextRefusal(t); ev.Device != "" || ev.Detail != "allocate: 401 unknown user" {
		t.Errorf("event %+v, want an unnamed unknown user", ev)
	}
}

// Refusal log lines are rate-limited; what is not logged is counted and
// said on the next line that is.
func TestRefusalLogIsRateLimited(t *testing.T) {
	var logs testutil.Buffer
	tt := startTURN(t, func(c *Config) { c.Logger = zerolog.New(&logs) })
	r := newRawClient(t, "udp", tt.Addr(), testUser, testPass)
	r.allocate()
	const n = refusalLogBurst + 20
	for range n {
		if code := errorCode(r.allocateWith()); code != 437 {
			t.Fatalf("answered %d, want 437", code)
		}
	}
	if st := tt.Stats(); st.RequestRefused != n {
		t.Fatalf("%d refusals counted, want %d", st.RequestRefused, n)
	}
	lines := strings.Count(logs.String(), "turn request refused")
	if lines >= n || lines < refusalLogBurst {
		t.Fatalf("%d refusal lines for %d refusals, want the burst of %d and a few", lines, n, refusalLogBurst)
	}
	time.Sleep(time.Second / refusalLogRate * 2)
	r.allocateWith()
	testutil.WaitFor(t, 2*time.Second, "a line counting the refusals not logged", func() bool {
		return strings.Contains(logs.String(), `"refusals_not_logged":`)
	})
}

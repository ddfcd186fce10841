package api

import (
	"fmt"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/testutil"
)

// tight is a throttle small enough to trip in a test.
var tight = Throttle{FailedLogins: 3, FailedLoginsWindow: time.Minute, Block: 5 * time.Minute, Registrations: 3, RegistrationsWindow: time.Hour}

func withThrottle(t Throttle) func(*Config) { return func(c *Config) { c.Throttle = t } }

func TestRepeatedFailedLoginsBlockTheSourceForAWhile(t *testing.T) {
	s := startServer(t, withThrottle(tight))
	tok := s.device("nas1")
	const attacker, neighbour = "198.51.100.66", "198.51.100.67"
	good := req{path: "/v1/devices/nas1", bearer: tok, from: attacker}
	for i := range tight.FailedLogins {
		r := s.do(req{path: "/v1/devices/nas1", bearer: "guess" + fmt.Sprint(i), from: attacker})
		wantError(t, "failed login", r, http.StatusUnauthorized)
	}
	r := s.do(good)
	wantError(t, "right token from a blocked source", r, http.StatusTooManyRequests, "too many")
	if r.header.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
	if r := s.do(req{path: "/nic/update?hostname=nas1.example.com", basic: []string{"nas1", tok}, from: attacker}); r.code != 429 || r.body != "abuse\n" {
		t.Errorf("dyndns2 from a blocked source = %d %q, want 429 abuse", r.code, r.body)
	}
	if r := s.do(req{path: "/v1/devices", bearer: testAdmin, from: attacker}); r.code != 429 {
		t.Errorf("admin call from a blocked source = %d, want 429", r.code)
	}
	if r := s.do(req{path: "/v1/devices/nas1", bearer: tok, from: neighbour}); r.code != 200 {
		t.Errorf("another source is blocked too: %d %s", r.code, r.body)
	}
	s.clock.Advance(tight.Block - time.Second)
	wantError(t, "just before the block ends", s.do(good), http.StatusTooManyRequests)
	s.clock.Advance(time.Second)
	if r := s.do(good); r.code != 200 {
		t.Fatalf("after the block: %d %s", r.code, r.body)
	}
}

func TestFailedLoginsCountAcrossRESTDyndns2AndAdmin(t *testing.T) {
	s := startServer(t, withThrottle(tight))
	tok := s.device("nas1")
	const src = "198.51.100.66"
	s.do(req{path: "/v1/devices/nas1", bearer: "guess", from: src})
	s.do(req{path: "/nic/update?hostname=nas1.example.com", basic: []string{"nas1", "guess"}, from: src})
	s.do(req{path: "/v1/devices", bearer: "not-the-admin-token-at-all", from: src})
	if r := s.do(req{path: "/v1/devices/nas1", bearer: tok, from: src}); r.code != http.StatusTooManyRequests {
		t.Fatalf("after one failure on each front: %d %s, want 429", r.code, r.body)
	}
}

func TestFailuresSpreadOverWindowsDoNotBlock(t *testing.T) {
	s := startServer(t, withThrottle(tight))
	tok := s.device("nas1")
	const src = "198.51.100.66"
	for range 4 {
		for range tight.FailedLogins - 1 {
			s.do(req{path: "/v1/devices/nas1", bearer: "guess", from: src})
		}
		s.clock.Advance(tight.FailedLoginsWindow)
	}
	if r := s.do(req{path: "/v1/devices/nas1", bearer: tok, from: src}); r.code != 200 {
		t.Fatalf("%d failures per window blocked the source: %d %s", tight.FailedLogins-1, r.code, r.body)
	}
}

func TestMissingCredentialsAreNotFailedLogins(t *testing.T) {
	s := startServer(t, withThrottle(tight))
	tok := s.device("nas1")
	const src = "198.51.100.66"
	for range 2 * tight.FailedLogins {
		s.do(req{path: "/v1/devices/nas1", from: src})
		s.do(req{path: "/v1/devices", from: src})
		s.do(req{path: "/nic/update?hostname=nas1.example.com", from: src})
	}
	if r := s.do(req{path: "/v1/devices/nas1", bearer: tok, from: src}); r.code != 200 {
		t.Fatalf("requests without credentials blocked the source: %d %s", r.code, r.body)
	}
}

func TestIPv6SourcesAreThrottledPer64(t *testing.T) {
	s := startServer(t, withThrottle(tight))
	tok := s.device("nas1")
	for i := range tight.FailedLogins {
		s.do(req{path: "/v1/devices/nas1", bearer: "guess", from: fmt.Sprintf("2001:db8:1:2::%x", i+1)})
	}
	cases := []struct {
		from string
		code int
	}{
		{"2001:db8:1:2::ffff", http.StatusTooManyRequests},
		{"2001:db8:1:2:aaaa:bbbb:cccc:dddd", http.StatusTooManyRequests},
		{"2001:db8:1:3::1", http.StatusOK},
		{"198.51.100.1", http.StatusOK},
	}
	for _, c := range cases {
		if r := s.do(req{path: "/v1/devices/nas1", bearer: tok, from: c.from}); r.code != c.code {
			t.Errorf("from %s: %d, want %d", c.from, r.code, c.code)
		}
	}
}

func TestOpenRegistrationIsThrottledPerSource(t *testing.T) {
	s := startServer(t, func(c *Config) { c.OpenRegistration = true; c.Throttle = tight })
	n := 0
	register := func(from string, bearer string) resp {
		n++
		return s.do(req{method: "POST", path: "/v1/devices", body: fmt.Sprintf(`{"name":"dev%d"}`, n), from: from, bearer: bearer})
	}
	for i := range tight.Registrations {
		if r := register("198.51.100.5", ""); r.code != http.StatusCreated {
			t.Fatalf("registration %d: %d %s", i+1, r.code, r.body)
		}
	}
	r := register("198.51.100.5", "")
	wantError(t, "one registration too many", r, http.StatusTooManyRequests, "too many registrations")
	if r.header.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
	if r := register("198.51.100.6", ""); r.code != http.StatusCreated {
		t.Errorf("another source: %d %s", r.code, r.body)
	}
	if r := register("198.51.100.5", testAdmin); r.code != http.StatusCreated {
		t.Errorf("the admin is throttled like an anonymous caller: %d %s", r.code, r.body)
	}
	if got := s.st.Len(); got != tight.Registrations+2 {
		t.Errorf("%d devices stored, want %d", got, tight.Registrations+2)
	}
	s.clock.Advance(tight.RegistrationsWindow)
	if r := register("198.51.100.5", ""); r.code != http.StatusCreated {
		t.Errorf("after the window: %d %s", r.code, r.body)
	}
}

func TestRetryAfterTellsTheConfiguredWait(t *testing.T) {
	th := Throttle{FailedLogins: 1, Block: 10 * time.Minute, Registrations: 1, RegistrationsWindow: 2 * time.Hour}
	s := startServer(t, func(c *Config) { c.OpenRegistration = true; c.Throttle = th })
	tok := s.device("nas1")
	s.do(req{path: "/v1/devices/nas1", bearer: "guess", from: "198.51.100.1"})
	s.do(req{method: "POST", path: "/v1/devices", body: `{"name":"a1"}`, from: "198.51.100.2"})
	cases := []struct {
		what string
		r    req
		want string
	}{
		{"REST after failed logins", req{path: "/v1/devices/nas1", bearer: tok, from: "198.51.100.1"}, "600"},
		{"dyndns2 after failed logins", req{path: "/nic/update", basic: []string{"nas1", tok}, from: "198.51.100.1"}, "600"},
		{"open registration", req{method: "POST", path: "/v1/devices", body: `{"name":"a2"}`, from: "198.51.100.2"}, "7200"},
	}
	var wrong []string
	for _, c := range cases {
		r := s.do(c.r)
		if r.code != http.StatusTooManyRequests {
			t.Fatalf("%s: %d, want 429", c.what, r.code)
		}
		if got := r.header.Get("Retry-After"); got != c.want {
			wrong = append(wrong, fmt.Sprintf("%s: Retry-After %s, want %s", c.what, got, c.want))
		}
	}
	if wrong != nil {
		t.Errorf("Retry-After ignores Config.Throttle (api/devices.go and api/dyndns2.go use DefaultThrottle.Block and a fixed 3600): %v", wrong)
	}
}

func TestLimiterBlocksASourceThatReachesTheLimit(t *testing.T) {
	clk := testutil.NewClock(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC))
	a, b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	l := newLimiter(3, time.Minute, 10*time.Minute, clk.Now)
	steps := []struct {
		advance time.Duration
		src     netip.Addr
		allowed bool
	}{
		{0, a, true}, {0, a, true}, {0, b, true},
		{0, a, true}, // the third: allowed, and now a is at the limit
		{0, a, false},
		{0, b, true},
		{time.Minute, a, false},                   // the window has passed, the block has not
		{9*time.Minute - time.Second, a, false},   // one second before the block ends
		{time.Second, a, true},                    // a fresh window
		{0, a, true}, {0, a, true}, {0, a, false}, // and a fresh limit
	}
	for i, st := range steps {
		clk.Advance(st.advance)
		if got := l.allow(st.src); got != st.allowed {
			t.Fatalf("step %d (%s at +%v): allow = %v, want %v", i, st.src, st.advance, got, st.allowed)
		}
	}
}

func TestLimiterSweepForgetsOnlyWhatNoLongerMatters(t *testing.T) {
	clk := testutil.NewClock(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC))
	l := newLimiter(2, time.Minute, time.Hour, clk.Now)
	quiet, blocked := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	l.add(quiet)
	l.add(blocked)
	l.add(blocked)
	clk.Advance(2 * time.Minute)
	l.sweep()
	if n := tracked(l); n != 1 || !l.blocked(blocked) {
		t.Fatalf("after the window: %d sources tracked, blocked=%v; want only the blocked one kept", n, l.blocked(blocked))
	}
	clk.Advance(time.Hour)
	l.sweep()
	if n := tracked(l); n != 0 {
		t.Fatalf("after the block: %d sources still tracked", n)
	}
}

func TestLimiterKeepsBlocksWhenManySourcesAreTracked(t *testing.T) {
	clk := testutil.NewClock(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC))
	l := newLimiter(1, time.Minute, time.Hour, clk.Now)
	bad := netip.MustParseAddr("192.0.2.1")
	l.add(bad)
	for i := range maxTracked + 1 { // a spray from many /64s
		l.add(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, byte(i >> 16), byte(i >> 8), byte(i)}))
	}
	l.sweep()
	if n, m := len(l.blocks), l.events.Len(); n > maxTracked || m > maxTracked {
		t.Fatalf("%d blocks and %d buckets tracked after a sweep, want at most %d each", n, m, maxTracked)
	}
	if !l.blocked(bad) {
		t.Error("a spray from many IPv6 /64s pushed a blocked source out of the limiter")
	}
}

// tracked is how many source networks l remembers anything about.
func tracked(l *limiter) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.blocks) + l.events.Len()
}

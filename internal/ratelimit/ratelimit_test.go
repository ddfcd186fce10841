package ratelimit

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

var t0 = time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)

// step is one Allow call: at offset from t0, from src, and its answer.
type step struct {
	at    time.Duration
	src   string
	allow bool
}

func TestAllowSpendsABurstThenRefillsAtTheRate(t *testing.T) {
	cases := []struct {
		name  string
		rate  float64
		burst int
		steps []step
	}{
		{"burst then refused", 1, 3, []step{
			{0, "192.0.2.1", true}, {0, "192.0.2.1", true}, {0, "192.0.2.1", true}, {0, "192.0.2.1", false},
		}},
		{"one token a second", 1, 2, []step{
			{0, "192.0.2.1", true}, {0, "192.0.2.1", true}, {0, "192.0.2.1", false},
			{999 * time.Millisecond, "192.0.2.1", false},
			{time.Second, "192.0.2.1", true}, {time.Second, "192.0.2.1", false},
		}},
		{"refill stops at the burst", 10, 2, []step{
			{0, "192.0.2.1", true},
			{time.Hour, "192.0.2.1", true}, {time.Hour, "192.0.2.1", true}, {time.Hour, "192.0.2.1", false},
		}},
		{"fractional rate", 0.5, 1, []step{
			{0, "192.0.2.1", true}, {time.Second, "192.0.2.1", false}, {2 * time.Second, "192.0.2.1", true},
		}},
		{"zero rate never refills", 0, 1, []step{
			{0, "192.0.2.1", true}, {24 * time.Hour, "192.0.2.1", false},
		}},
		{"zero burst allows nothing", 5, 0, []step{
			{0, "192.0.2.1", false}, {time.Hour, "192.0.2.1", false},
		}},
		{"a clock stepping back takes nothing", 1, 1, []step{
			{time.Minute, "192.0.2.1", true}, {0, "192.0.2.1", false}, {time.Minute + time.Second, "192.0.2.1", true},
		}},
		{"IPv4 addresses are separate", 1, 1, []step{
			{0, "192.0.2.1", true}, {0, "192.0.2.1", false}, {0, "192.0.2.2", true}, {0, "198.51.100.1", true},
		}},
		{"IPv6 counts per /64", 1, 2, []step{
			{0, "2001:db8:1:2::1", true},
			{0, "2001:db8:1:2:aaaa:bbbb:cccc:dddd", true},
			{0, "2001:db8:1:2::ffff", false},
			{0, "2001:db8:1:3::1", true},
		}},
		{"a mapped IPv4 address counts as itself", 1, 1, []step{
			{0, "192.0.2.1", true}, {0, "::ffff:192.0.2.1", false}, {0, "::ffff:192.0.2.2", true},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := New(tc.rate, tc.burst, 0)
			for i, s := range tc.steps {
				if got := l.Allow(netip.MustParseAddr(s.src), t0.Add(s.at)); got != s.allow {
					t.Fatalf("step %d (%s at +%v): Allow = %v, want %v", i, s.src, s.at, got, s.allow)
				}
			}
		})
	}
}

func TestSetAppliesToBucketsInUse(t *testing.T) {
	a := netip.MustParseAddr("192.0.2.1")
	l := New(1, 4, 0)
	for range 3 {
		l.Allow(a, t0)
	}
	l.Set(1, 1) // one token left, within the new burst
	if !l.Allow(a, t0) || l.Allow(a, t0) {
		t.Fatal("after lowering the burst: want the one remaining token and no more")
	}
	l.Set(100, 5)
	for i := range 5 {
		if !l.Allow(a, t0.Add(time.Second)) {
			t.Fatalf("after raising rate and burst: attempt %d refused", i+1)
		}
	}
	if l.Allow(a, t0.Add(time.Second)) {
		t.Error("the raised burst is exceeded and still allowed")
	}
}

func TestTableStaysBoundedAndKeepsTheBusiestSources(t *testing.T) {
	const size = 16
	l := New(1, 2, size)
	busy := netip.MustParseAddr("192.0.2.1")
	l.Allow(busy, t0)
	l.Allow(busy, t0) // empty now
	for i := range 10 * size {
		// a spray from many /64s, each using one of its two tokens
		l.Allow(netip.MustParseAddr(fmt.Sprintf("2001:db8:%x::1", i)), t0)
		if n := l.Len(); n > size {
			t.Fatalf("after %d sources: %d in the table, want at most %d", i+2, n, size)
		}
	}
	if l.Allow(busy, t0) {
		t.Error("the spray pushed out the one source that had used up its burst")
	}
}

func TestPruneForgetsOnlyRefilledBuckets(t *testing.T) {
	l := New(1, 2, 0)
	quiet, busy := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")
	l.Allow(quiet, t0)
	l.Allow(busy, t0.Add(time.Second))
	l.Allow(busy, t0.Add(time.Second))
	l.Prune(t0.Add(time.Second)) // quiet has refilled, busy has not
	if n := l.Len(); n != 1 {
		t.Fatalf("%d buckets after the prune, want only the busy one", n)
	}
	if l.Allow(busy, t0.Add(time.Second)) {
		t.Error("Prune refilled a bucket still in use")
	}
	l.Prune(t0.Add(time.Minute))
	if n := l.Len(); n != 0 {
		t.Errorf("%d buckets after everything refilled, want 0", n)
	}
}

func TestNetworkGroupsIPv6By64(t *testing.T) {
	cases := []struct{ in, want string }{
		{"192.0.2.1", "192.0.2.1/32"},
		{"::ffff:192.0.2.1", "192.0.2.1/32"},
		{"2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"},
		{"fe80::1%eth0", "fe80::/64"},
	}
	for _, tc := range cases {
		if got := Network(netip.MustParseAddr(tc.in)).String(); got != tc.want {
			t.Errorf("Network(%s) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

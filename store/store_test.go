package store

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/testutil"
)

// newClock is a clock for Config.Now, at the same moment in every test.
func newClock() *testutil.Clock {
	return testutil.NewClock(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
}

// openStore opens a store in dir (a fresh temp dir when empty) and closes it
// when the test ends.
func openStore(t *testing.T, cfg Config) *Store {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	s, err := Open(cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// openFunc opens one implementation of Backend for a test and closes it when
// the test ends, whether or not the test closed it already. cfg.Dir names the
// data: empty means fresh data, and opening again with the same Dir finds
// everything committed before, as after a restart. Now, Reserved, Quarantine,
// UninitializedTTL and SweepEvery mean the same to every implementation.
type openFunc func(t *testing.T, cfg Config) Backend

// backends are the implementations the behaviour tests run against; a new
// Backend adds its line here. Tests of the bbolt file itself, which another
// implementation has no counterpart of, are in bbolt_test.go.
var backends = []struct {
	name string
	open openFunc
}{
	{"bbolt", func(t *testing.T, cfg Config) Backend { return openStore(t, cfg) }},
	{"etcd", openEtcd}, // etcd_test.go: a real etcd, skipped without one
}

// forEachBackend runs test against every implementation, each as a subtest
// named after it.
func forEachBackend(t *testing.T, test func(t *testing.T, open openFunc)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) { test(t, b.open) })
	}
}

func mustCreate(t *testing.T, s Backend, name string) (Device, string) {
	t.Helper()
	d, tok, err := s.Create(context.Background(), name, CreateOptions{})
	if err != nil {
		t.Fatalf("Create(%q): %v", name, err)
	}
	return d, tok
}

func ptr[T any](v T) *T { return &v }

var (
	v4a = netip.MustParseAddr("203.0.113.7")
	v4b = netip.MustParseAddr("198.51.100.9")
	v6a = netip.MustParseAddr("2001:db8::7")
	v6b = netip.MustParseAddr("2001:db8:1::9")
)

func TestCreatedDeviceResolvesAtOnceWithDefaults(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		clk := newClock()
		s := open(t, Config{Now: clk.Now})
		d, tok := mustCreate(t, s, "nas1")
		if tok == "" {
			t.Fatal("Create returned no token")
		}
		want := Device{
			Name: "nas1", TokenSHA256: HashToken(tok), DDNS: true, Link: true,
			Access: AccessPublic, State: StateActive, Created: clk.Now(), Updated: clk.Now(),
		}
		if !reflect.DeepEqual(d, want) {
			t.Fatalf("Create = %+v, want %+v", d, want)
		}
		if got, err := s.Get("nas1"); err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("Get = %+v, %v; want %+v", got, err, want)
		}
		if rec, ok := s.Lookup("nas1"); !ok || !reflect.DeepEqual(rec, Record{}) {
			t.Fatalf("Lookup right after Create = %+v, %v; want an empty record that resolves", rec, ok)
		}
		if s.Len() != 1 {
			t.Fatalf("Len = %d, want 1", s.Len())
		}
	})
}

func TestCreateCanStartUninitializedButNotInAnUnknownState(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		s := open(t, Config{})
		d, _, err := s.Create(context.Background(), "cloud1", CreateOptions{State: StateUninitialized})
		if err != nil || d.State != StateUninitialized {
			t.Fatalf("Create uninitialized = %+v, %v", d, err)
		}
		if _, _, err := s.Create(context.Background(), "cloud2", CreateOptions{State: "zombie"}); !errors.Is(err, ErrInvalid) {
			t.Fatalf("Create in state zombie = %v, want ErrInvalid", err)
		}
		if _, err := s.Get("cloud2"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("refused device was stored: Get = %v", err)
		}
	})
}

func TestNamesAreCaseInsensitive(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		s := open(t, Config{})
		d, tok := mustCreate(t, s, "NAS1")
		if d.Name != "nas1" {
			t.Fatalf("Create(NAS1).Name = %q, want nas1", d.Name)
		}
		if _, _, err := s.Create(context.Background(), "nas1", CreateOptions{}); !errors.Is(err, ErrExists) {
			t.Fatalf("Create(nas1) after NAS1 = %v, want ErrExists", err)
		}
		if _, err := s.Get("Nas1"); err != nil {
			t.Fatalf("Get(Nas1) = %v", err)
		}
		if _, err := s.Authenticate("NAS1", tok); err != nil {
			t.Fatalf("Authenticate(NAS1) = %v", err)
		}
		if _, _, err := s.SetAddress(context.Background(), "nAs1", AddressUpdate{IPv4: v4a}); err != nil {
			t.Fatalf("SetAddress(nAs1) = %v", err)
		}
		if rec, ok := s.Lookup("nas1"); !ok || rec.IPv4 != v4a {
			t.Fatalf("Lookup after SetAddress(nAs1) = %+v, %v", rec, ok)
		}
		if err := s.Delete(context.Background(), "NaS1"); err != nil {
			t.Fatalf("Delete(NaS1) = %v", err)
		}
		if _, ok := s.Lookup("nas1"); ok {
			t.Fatal("nas1 still resolves after Delete(NaS1)")
		}
	})
}

func TestOnlyASCIIIsCaseFolded(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		s := open(t, Config{})
		_, tok := mustCreate(t, s, "nask")
		kelvin := "NAS\u212a" // strings.ToLower makes this "nask"
		if _, err := s.Get(kelvin); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get(%+q) = %v, want ErrNotFound: it is not nask", kelvin, err)
		}
		if _, err := s.Authenticate(kelvin, tok); !errors.Is(err, ErrBadCredentials) {
			t.Errorf("Authenticate(%+q, nask's token) = %v, want ErrBadCredentials", kelvin, err)
		}
		if _, _, err := s.SetAddress(context.Background(), kelvin, AddressUpdate{IPv4: v4a}); !errors.Is(err, ErrNotFound) {
			t.Errorf("SetAddress(%+q) = %v, want ErrNotFound", kelvin, err)
		}
		if d, _ := s.Get("nask"); d.IPv4.IsValid() {
			t.Errorf("nask got %v through %+q", d.IPv4, kelvin)
		}
	})
}

func TestCreateRefusesInvalidAndReservedNamesWithAReason(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		s := open(t, Config{Reserved: []string{"mail"}})
		cases := []struct {
			name string
			want error
		}{
			{"-nas", ErrInvalidName},
			{"nas_1", ErrInvalidName},
			{strings.Repeat("x", 64), ErrInvalidName},
			{"", ErrInvalidName},
			{"ns1", ErrReserved},
			{"NS2", ErrReserved},
			{"WWW", ErrReserved},
			{"_acme-challenge", ErrReserved},
			{"_anything", ErrReserved},
			{"mail", ErrReserved},
			{"WPAD", ErrReserved},
			{"localhost", ErrReserved},
			{"NAS\u212a", ErrInvalidName}, // the Kelvin sign is not folded to k
			{"xn--zz", ErrInvalidName},
			{"xn--", ErrInvalidName},
		}
		for _, c := range cases {
			_, _, err := s.Create(context.Background(), c.name, CreateOptions{})
			if !errors.Is(err, c.want) {
				t.Errorf("Create(%q) = %v, want %v", c.name, err, c.want)
			}
		}
		if n := s.Len(); n != 0 {
			t.Fatalf("%d refused devices were stored", n)
		}
	})
}

func TestConfiguredReservedNamesAreCaseInsensitive(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		// serve passes --reserved values through as typed; names are lower-cased
		// before the check, so the list must be too.
		s := open(t, Config{Reserved: []string{"Mail"}})
		_, _, err := s.Create(context.Background(), "mail", CreateOptions{})
		if !errors.Is(err, ErrReserved) {
			t.Errorf("store.ValidateName compares Config.Reserved case-sensitively: Reserved [Mail], Create(mail) = %v, want ErrReserved", err)
		}
	})
}

func TestAuthenticateCannotTellUnknownDeviceFromWrongToken(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		s := open(t, Config{})
		_, tok1 := mustCreate(t, s, "nas1")
		_, tok2 := mustCreate(t, s, "nas2")
		cases := []struct{ what, name, token string }{
			{"wrong token", "nas1", "not-the-token"},
			{"other device's token", "nas1", tok2},
			{"empty token", "nas1", ""},
			{"token in other case", "nas1", strings.ToUpper(tok1)},
			{"token with a suffix", "nas1", tok1 + "x"},
			{"unknown device", "ghost", tok1},
			{"unknown device, empty token", "ghost", ""},
			{"invalid name", "-", tok1},
		}
		for _, c := range cases {
			d, err := s.Authenticate(c.name, c.token)
			if err != ErrBadCredentials || !reflect.DeepEqual(d, Device{}) {
				t.Errorf("%s: Authenticate = %+v, %v; want exactly ErrBadCredentials and no device", c.what, d, err)
			}
		}
		if d, err := s.Authenticate("nas1", tok1); err != nil || d.Name != "nas1" {
			t.Fatalf("Authenticate with the right token = %+v, %v", d, err)
		}
	})
}

func TestSetAddressKeepsFamiliesApart(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		cases := []struct {
			what        string
			u           AddressUpdate
			wantErr     error
			want4       netip.Addr
			want6       netip.Addr
			wantChanged bool
		}{
			{"new ipv4 keeps ipv6", AddressUpdate{IPv4: v4b}, nil, v4b, v6a, true},
			{"new ipv6 keeps ipv4", AddressUpdate{IPv6: v6b}, nil, v4a, v6b, true},
			{"both", AddressUpdate{IPv4: v4b, IPv6: v6b}, nil, v4b, v6b, true},
			{"same addresses", AddressUpdate{IPv4: v4a, IPv6: v6a}, nil, v4a, v6a, false},
			{"nothing", AddressUpdate{}, nil, v4a, v6a, false},
			{"clear ipv4", AddressUpdate{ClearIPv4: true}, nil, netip.Addr{}, v6a, true},
			{"clear ipv6", AddressUpdate{ClearIPv6: true}, nil, v4a, netip.Addr{}, true},
			{"address wins over clear", AddressUpdate{IPv4: v4b, ClearIPv4: true}, nil, v4b, v6a, true},
			{"mapped ipv4 is stored plain", AddressUpdate{IPv4: netip.MustParseAddr("::ffff:198.51.100.9")}, nil, v4b, v6a, true},
			{"an address with a zone is refused", AddressUpdate{IPv6: netip.MustParseAddr("2001:db8::9%eth0")}, ErrInvalid, v4a, v6a, false},
			{"link-local is refused", AddressUpdate{IPv6: netip.MustParseAddr("fe80::1")}, ErrInvalid, v4a, v6a, false},
			{"unspecified is refused", AddressUpdate{IPv4: netip.MustParseAddr("0.0.0.0")}, ErrInvalid, v4a, v6a, false},
			{"mapped unspecified is refused", AddressUpdate{IPv4: netip.MustParseAddr("::ffff:0.0.0.0")}, ErrInvalid, v4a, v6a, false},
			{"one refused address keeps both", AddressUpdate{IPv4: v4b, IPv6: netip.MustParseAddr("ff02::1")}, ErrInvalid, v4a, v6a, false},
			{"ipv6 as ipv4", AddressUpdate{IPv4: v6b}, ErrInvalid, v4a, v6a, false},
			{"ipv4 as ipv6", AddressUpdate{IPv6: v4b}, ErrInvalid, v4a, v6a, false},
			{"mapped ipv4 as ipv6", AddressUpdate{IPv6: netip.MustParseAddr("::ffff:198.51.100.9")}, ErrInvalid, v4a, v6a, false},
		}
		for _, c := range cases {
			t.Run(c.what, func(t *testing.T) {
				s := open(t, Config{})
				mustCreate(t, s, "nas1")
				ctx := context.Background()
				if _, _, err := s.SetAddress(ctx, "nas1", AddressUpdate{IPv4: v4a, IPv6: v6a}); err != nil {
					t.Fatal(err)
				}
				before := s.Serial()
				d, changed, err := s.SetAddress(ctx, "nas1", c.u)
				if !errors.Is(err, c.wantErr) {
					t.Fatalf("SetAddress = %v, want %v", err, c.wantErr)
				}
				if err == nil && (d.IPv4 != c.want4 || d.IPv6 != c.want6 || changed != c.wantChanged) {
					t.Errorf("SetAddress = %v %v changed=%v; want %v %v changed=%v", d.IPv4, d.IPv6, changed, c.want4, c.want6, c.wantChanged)
				}
				got, _ := s.Get("nas1")
				rec, _ := s.Lookup("nas1")
				if got.IPv4 != c.want4 || got.IPv6 != c.want6 || rec.IPv4 != c.want4 || rec.IPv6 != c.want6 {
					t.Errorf("stored %v %v, resolving %v %v; want %v %v", got.IPv4, got.IPv6, rec.IPv4, rec.IPv6, c.want4, c.want6)
				}
				if bumped := s.Serial() != before; bumped != c.wantChanged {
					t.Errorf("serial bumped = %v, want %v", bumped, c.wantChanged)
				}
			})
		}
	})
}

func TestChangesToUnknownDevicesAreNotFound(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		s := open(t, Config{})
		ctx := context.Background()
		if _, _, err := s.SetAddress(ctx, "ghost", AddressUpdate{IPv4: v4a}); !errors.Is(err, ErrNotFound) {
			t.Errorf("SetAddress(ghost) = %v, want ErrNotFound", err)
		}
		if _, err := s.Update(ctx, "ghost", Patch{DDNS: ptr(false)}); !errors.Is(err, ErrNotFound) {
			t.Errorf("Update(ghost) = %v, want ErrNotFound", err)
		}
		if err := s.Delete(ctx, "ghost"); !errors.Is(err, ErrNotFound) {
			t.Errorf("Delete(ghost) = %v, want ErrNotFound", err)
		}
		if _, err := s.Get("ghost"); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get(ghost) = %v, want ErrNotFound", err)
		}
		if _, ok := s.Lookup("ghost"); ok || s.Len() != 0 {
			t.Error("failed writes to ghost made it resolve")
		}
	})
}

func TestUpdateRefusesUnknownAccessAndState(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		s := open(t, Config{})
		mustCreate(t, s, "nas1")
		ctx := context.Background()
		if _, err := s.Update(ctx, "nas1", Patch{Access: ptr(Access("everyone")), DDNS: ptr(false)}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "access") {
			t.Errorf("Update access=everyone = %v, want ErrInvalid naming access", err)
		}
		if _, err := s.Update(ctx, "nas1", Patch{State: ptr(State("gone"))}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "state") {
			t.Errorf("Update state=gone = %v, want ErrInvalid naming state", err)
		}
		if d, _ := s.Get("nas1"); !d.DDNS || d.Access != AccessPublic || d.State != StateActive {
			t.Errorf("a refused patch changed the device: %+v", d)
		}
	})
}

func TestSerialBumpsOnEveryDNSChangeOnly(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		clk := newClock()
		s := open(t, Config{Now: clk.Now})
		ctx := context.Background()
		steps := []struct {
			what    string
			do      func() error
			bumps   bool
			resolve bool
		}{
			{"create", func() error { _, _, err := s.Create(ctx, "nas1", CreateOptions{}); return err }, true, true},
			{"set address", func() error { _, _, err := s.SetAddress(ctx, "nas1", AddressUpdate{IPv4: v4a}); return err }, true, true},
			{"same address", func() error { _, _, err := s.SetAddress(ctx, "nas1", AddressUpdate{IPv4: v4a}); return err }, false, true},
			{"link off", func() error { _, err := s.Update(ctx, "nas1", Patch{Link: ptr(false)}); return err }, false, true},
			{"access token", func() error { _, err := s.Update(ctx, "nas1", Patch{Access: ptr(AccessToken)}); return err }, false, true},
			{"ddns off", func() error { _, err := s.Update(ctx, "nas1", Patch{DDNS: ptr(false)}); return err }, true, false},
			{"ddns off again", func() error { _, err := s.Update(ctx, "nas1", Patch{DDNS: ptr(false)}); return err }, false, false},
			// Nothing a resolver or a secondary sees changes: no serial, so
			// not even the timing of a hidden device's updates shows.
			{"address while ddns off", func() error { _, _, err := s.SetAddress(ctx, "nas1", AddressUpdate{IPv4: v4b}); return err }, false, false},
			{"ddns on", func() error { _, err := s.Update(ctx, "nas1", Patch{DDNS: ptr(true)}); return err }, true, true},
			{"failed create", func() error {
				if _, _, err := s.Create(ctx, "nas1", CreateOptions{}); !errors.Is(err, ErrExists) {
					return fmt.Errorf("second Create = %v, want ErrExists", err)
				}
				return nil
			}, false, true},
			{"delete", func() error { return s.Delete(ctx, "nas1") }, true, false},
		}
		for _, st := range steps {
			before := s.Serial()
			clk.Advance(time.Second)
			if err := st.do(); err != nil {
				t.Fatalf("%s: %v", st.what, err)
			}
			after := s.Serial()
			if st.bumps && !serialNewer(after, before) {
				t.Errorf("%s: serial %d -> %d, want it bumped", st.what, before, after)
			}
			if !st.bumps && after != before {
				t.Errorf("%s: serial %d -> %d, want it unchanged", st.what, before, after)
			}
			if _, ok := s.Lookup("nas1"); ok != st.resolve {
				t.Errorf("%s: Lookup ok = %v, want %v", st.what, ok, st.resolve)
			}
		}
	})
}

func TestSerialNewerWrapsAround(t *testing.T) {
	cases := []struct {
		a, b uint32
		want bool
	}{
		{2, 1, true}, {1, 2, false}, {1, 1, false},
		{1, 0xFFFFFFFF, true}, {0xFFFFFFFF, 1, false},
		{0x80000000, 1, true}, {0x90000000, 1, false}, {0x7FFFFFFF, 0, true},
	}
	for _, c := range cases {
		if got := serialNewer(c.a, c.b); got != c.want {
			t.Errorf("serialNewer(%d, %d) = %v, want %v", c.a, c.b, got, c.want)
		}
	}
}

func TestUpdatedTimeMovesOnlyWithRealChanges(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		clk := newClock()
		s := open(t, Config{Now: clk.Now})
		ctx := context.Background()
		created, _ := mustCreate(t, s, "nas1")
		clk.Advance(time.Minute)
		d, _, err := s.SetAddress(ctx, "nas1", AddressUpdate{IPv4: v4a})
		if err != nil || !d.Updated.Equal(clk.Now()) || !d.Created.Equal(created.Created) {
			t.Fatalf("after SetAddress: %+v, %v; want Updated=%v and Created kept", d, err, clk.Now())
		}
		clk.Advance(time.Minute)
		d, _, _ = s.SetAddress(ctx, "nas1", AddressUpdate{IPv4: v4a})
		if d.Updated.Equal(clk.Now()) {
			t.Fatal("an unchanged address moved Updated")
		}
		d, _ = s.Update(ctx, "nas1", Patch{Link: ptr(false)})
		if !d.Updated.Equal(clk.Now()) {
			t.Fatalf("Link off: Updated = %v, want %v", d.Updated, clk.Now())
		}
	})
}

func TestListIsSortedByName(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		s := open(t, Config{})
		for _, n := range []string{"zeta", "alpha", "mid", "b0"} {
			mustCreate(t, s, n)
		}
		ds, err := s.List()
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, d := range ds {
			got = append(got, d.Name)
		}
		if strings.Join(got, ",") != "alpha,b0,mid,zeta" {
			t.Fatalf("List = %v, want alpha,b0,mid,zeta", got)
		}
	})
}

func TestDeleteRemovesEverything(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		s := open(t, Config{})
		ctx := context.Background()
		_, tok := mustCreate(t, s, "nas1")
		if _, _, err := s.SetAddress(ctx, "nas1", AddressUpdate{IPv4: v4a, IPv6: v6a}); err != nil {
			t.Fatal(err)
		}
		if err := s.Delete(ctx, "nas1"); err != nil {
			t.Fatal(err)
		}
		if _, ok := s.Lookup("nas1"); ok {
			t.Fatal("nas1 resolves after Delete returned")
		}
		if _, err := s.Authenticate("nas1", tok); err != ErrBadCredentials {
			t.Fatalf("old token after Delete: %v, want ErrBadCredentials", err)
		}
		if ds, _ := s.List(); len(ds) != 0 {
			t.Fatalf("List after Delete = %+v", ds)
		}
	})
}

func TestDeletedNameIsQuarantinedThenFreeWithNothingInherited(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		cases := []struct {
			what       string
			quarantine time.Duration
			wait       time.Duration // before the name is free again
		}{
			{"default quarantine", 0, DefaultQuarantine},
			{"short quarantine", time.Hour, time.Hour},
			{"quarantine disabled", -1, 0},
		}
		for _, c := range cases {
			t.Run(c.what, func(t *testing.T) {
				clk := newClock()
				s := open(t, Config{Now: clk.Now, Quarantine: c.quarantine, SweepEvery: -1})
				ctx := context.Background()
				_, tok := mustCreate(t, s, "nas1")
				if _, _, err := s.SetAddress(ctx, "nas1", AddressUpdate{IPv4: v4a, IPv6: v6a}); err != nil {
					t.Fatal(err)
				}
				if err := s.Delete(ctx, "nas1"); err != nil {
					t.Fatal(err)
				}
				if c.wait > 0 {
					clk.Advance(c.wait - time.Second)
					_, _, err := s.Create(ctx, "nas1", CreateOptions{})
					if !errors.Is(err, ErrQuarantined) || !strings.Contains(err.Error(), "until") {
						t.Fatalf("Create 1s before the quarantine ends = %v, want ErrQuarantined saying until when", err)
					}
					if _, ok := s.Lookup("nas1"); ok {
						t.Fatal("a refused Create made the name resolve")
					}
					clk.Advance(time.Second)
				}
				d, tok2 := mustCreate(t, s, "nas1")
				if tok2 == tok || d.IPv4.IsValid() || d.IPv6.IsValid() {
					t.Fatalf("re-created nas1 inherited state: %+v (same token: %v)", d, tok2 == tok)
				}
				if _, err := s.Authenticate("nas1", tok); err != ErrBadCredentials {
					t.Fatalf("the old token works on the re-created device: %v", err)
				}
				if rec, ok := s.Lookup("nas1"); !ok || !reflect.DeepEqual(rec, Record{}) {
					t.Fatalf("re-created nas1: Lookup = %+v, %v", rec, ok)
				}
			})
		}
	})
}

func TestQuarantineSurvivesReopen(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		dir := t.TempDir()
		clk := newClock()
		s := open(t, Config{Dir: dir, Now: clk.Now, SweepEvery: -1})
		mustCreate(t, s, "nas1")
		if err := s.Delete(context.Background(), "nas1"); err != nil {
			t.Fatal(err)
		}
		s.Close()
		s = open(t, Config{Dir: dir, Now: clk.Now, SweepEvery: -1})
		if _, _, err := s.Create(context.Background(), "nas1", CreateOptions{}); !errors.Is(err, ErrQuarantined) {
			t.Fatalf("Create after restart = %v, want ErrQuarantined", err)
		}
	})
}

func TestSweepExpiresOnlyUninitializedDevicesPastTheirTTL(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		clk := newClock()
		s := open(t, Config{Now: clk.Now, UninitializedTTL: time.Hour, SweepEvery: -1})
		ctx := context.Background()
		var changes []Change
		s.OnChange(func(c Change) { changes = append(changes, c) })
		mustCreate(t, s, "owned")
		for _, n := range []string{"cloud1", "cloud2"} {
			if _, _, err := s.Create(ctx, n, CreateOptions{State: StateUninitialized}); err != nil {
				t.Fatal(err)
			}
		}
		clk.Advance(30 * time.Minute)
		if _, _, err := s.Create(ctx, "cloud3", CreateOptions{State: StateUninitialized}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Update(ctx, "cloud2", Patch{State: ptr(StateActive)}); err != nil { // activated in time
			t.Fatal(err)
		}
		clk.Advance(30 * time.Minute)
		changes = nil
		n, err := s.Sweep(ctx)
		if err != nil || n != 1 {
			t.Fatalf("Sweep = %d, %v; want 1 (cloud1)", n, err)
		}
		for name, want := range map[string]bool{"owned": true, "cloud1": false, "cloud2": true, "cloud3": true} {
			_, err := s.Get(name)
			if _, ok := s.Lookup(name); ok != want || (err == nil) != want {
				t.Errorf("after Sweep %s resolves=%v Get=%v, want kept=%v", name, ok, err, want)
			}
		}
		if len(changes) != 1 || changes[0].Kind != Expired || changes[0].Device.Name != "cloud1" {
			t.Errorf("observers saw %+v, want one Expired for cloud1", changes)
		}
		if _, _, err := s.Create(ctx, "cloud1", CreateOptions{}); err != nil {
			t.Errorf("an expired device's name is quarantined: %v", err)
		}
	})
}

func TestSweepCountsOnlyDevicesItExpired(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		clk := newClock()
		s := open(t, Config{Now: clk.Now, UninitializedTTL: time.Hour, SweepEvery: -1})
		ctx := context.Background()
		for _, n := range []string{"a", "b"} {
			if _, _, err := s.Create(ctx, n, CreateOptions{State: StateUninitialized}); err != nil {
				t.Fatal(err)
			}
		}
		clk.Advance(time.Hour)
		// The owner of b activates it while the sweep is expiring a.
		s.OnChange(func(c Change) {
			if c.Kind == Expired && c.Device.Name == "a" {
				if _, err := s.Update(ctx, "b", Patch{State: ptr(StateActive)}); err != nil {
					t.Error(err)
				}
			}
		})
		n, err := s.Sweep(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Get("b"); err != nil {
			t.Fatalf("b was activated in time but is gone: %v", err)
		}
		if n != 1 {
			t.Errorf("store.Sweep counts (and logs as expired) a device activated between its scan and its write: Sweep = %d, want 1", n)
		}
	})
}

func TestCanceledContextWritesNothing(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		s := open(t, Config{})
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, _, err := s.Create(ctx, "nas1", CreateOptions{}); !errors.Is(err, context.Canceled) {
			t.Fatalf("Create with canceled context = %v, want context.Canceled", err)
		}
		if _, err := s.Get("nas1"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("canceled Create stored the device: %v", err)
		}
	})
}

func TestOnChangeSeesEveryCommittedChangeAfterTheIndex(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		s := open(t, Config{})
		ctx := context.Background()
		type seen struct {
			kind     ChangeKind
			dev      Device
			resolves bool
			rec      Record
		}
		var got []seen
		s.OnChange(func(c Change) {
			rec, ok := s.Lookup(c.Device.Name)
			got = append(got, seen{c.Kind, c.Device, ok, rec})
		})
		mustCreate(t, s, "nas1")
		if _, _, err := s.SetAddress(ctx, "nas1", AddressUpdate{IPv4: v4a}); err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.SetAddress(ctx, "nas1", AddressUpdate{IPv4: v4a}); err != nil { // no change, no event
			t.Fatal(err)
		}
		if _, err := s.Update(ctx, "nas1", Patch{Link: ptr(false)}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Update(ctx, "nas1", Patch{DDNS: ptr(false)}); err != nil {
			t.Fatal(err)
		}
		if err := s.Delete(ctx, "nas1"); err != nil {
			t.Fatal(err)
		}
		if err := s.Delete(ctx, "nas1"); !errors.Is(err, ErrNotFound) { // failed, no event
			t.Fatal(err)
		}
		want := []struct {
			kind     ChangeKind
			ipv4     netip.Addr
			link     bool
			ddns     bool
			resolves bool
		}{
			{Created, netip.Addr{}, true, true, true},
			{Updated, v4a, true, true, true},
			{Updated, v4a, false, true, true},
			{Updated, v4a, false, false, false},
			{Deleted, v4a, false, false, false}, // the device as it was
		}
		if len(got) != len(want) {
			t.Fatalf("observer saw %d changes, want %d: %+v", len(got), len(want), got)
		}
		for i, w := range want {
			g := got[i]
			if g.kind != w.kind || g.dev.Name != "nas1" || g.dev.IPv4 != w.ipv4 || g.dev.Link != w.link || g.dev.DDNS != w.ddns {
				t.Errorf("change %d = %+v, want %+v", i, g, w)
			}
			if g.resolves != w.resolves || (g.resolves && g.rec.IPv4 != w.ipv4) {
				t.Errorf("change %d: observer's Lookup = %+v, %v; the index must already show the change", i, g.rec, g.resolves)
			}
		}
	})
}

func TestDDNSOffHidesTheDeviceFromLookupButKeepsIt(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		s := open(t, Config{})
		ctx := context.Background()
		mustCreate(t, s, "nas1")
		if _, _, err := s.SetAddress(ctx, "nas1", AddressUpdate{IPv4: v4a}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Update(ctx, "nas1", Patch{DDNS: ptr(false)}); err != nil {
			t.Fatal(err)
		}
		if _, ok := s.Lookup("nas1"); ok || s.Len() != 0 {
			t.Fatal("a device with DDNS off resolves")
		}
		if _, _, err := s.SetAddress(ctx, "nas1", AddressUpdate{IPv4: v4b}); err != nil {
			t.Fatal(err)
		}
		if _, ok := s.Lookup("nas1"); ok {
			t.Fatal("an address update made a device with DDNS off resolve")
		}
		if d, err := s.Get("nas1"); err != nil || d.IPv4 != v4b {
			t.Fatalf("Get = %+v, %v; the device and its address must be kept", d, err)
		}
		if _, err := s.Update(ctx, "nas1", Patch{DDNS: ptr(true)}); err != nil {
			t.Fatal(err)
		}
		if rec, ok := s.Lookup("nas1"); !ok || rec.IPv4 != v4b {
			t.Fatalf("DDNS back on: Lookup = %+v, %v; want %v", rec, ok, v4b)
		}
	})
}

func TestReopenKeepsDevicesAddressesTokensAndSerial(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		dir := t.TempDir()
		ctx := context.Background()
		s := open(t, Config{Dir: dir})
		_, tok := mustCreate(t, s, "nas1")
		mustCreate(t, s, "nas2")
		if _, _, err := s.SetAddress(ctx, "nas1", AddressUpdate{IPv4: v4a, IPv6: v6a}); err != nil {
			t.Fatal(err)
		}
		if err := s.Delete(ctx, "nas2"); err != nil {
			t.Fatal(err)
		}
		serial := s.Serial()
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}

		s = open(t, Config{Dir: dir})
		if s.Serial() != serial {
			t.Errorf("serial after reopen = %d, want %d", s.Serial(), serial)
		}
		if rec, ok := s.Lookup("nas1"); !ok || rec.IPv4 != v4a || rec.IPv6 != v6a {
			t.Errorf("Lookup(nas1) after reopen = %+v, %v", rec, ok)
		}
		if _, ok := s.Lookup("nas2"); ok {
			t.Error("deleted nas2 resolves after reopen")
		}
		if _, err := s.Authenticate("nas1", tok); err != nil {
			t.Errorf("token after reopen: %v", err)
		}
		if _, _, err := s.SetAddress(ctx, "nas1", AddressUpdate{IPv4: v4b}); err != nil {
			t.Fatal(err)
		}
		if !serialNewer(s.Serial(), serial) {
			t.Errorf("serial after reopen and a change = %d, want newer than %d", s.Serial(), serial)
		}
		if rec, _ := s.Lookup("nas1"); rec.IPv4 != v4b {
			t.Errorf("a write after reopen is not visible: %+v", rec)
		}
	})
}

func TestDDNSOffDeviceStaysHiddenAfterReopen(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		dir := t.TempDir()
		s := open(t, Config{Dir: dir})
		mustCreate(t, s, "nas1")
		if _, _, err := s.SetAddress(context.Background(), "nas1", AddressUpdate{IPv4: v4a}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Update(context.Background(), "nas1", Patch{DDNS: ptr(false)}); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s = open(t, Config{Dir: dir})
		if rec, ok := s.Lookup("nas1"); ok || s.Len() != 0 {
			t.Fatalf("after a restart a device with DDNS off resolves again (Lookup = %+v, Len = %d)", rec, s.Len())
		}
	})
}

func TestDeleteIsNotUndoneByConcurrentWrites(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		s := open(t, Config{MaxBatchDelay: time.Millisecond})
		ctx := context.Background()
		for round := range 30 {
			name := fmt.Sprintf("nas%d", round)
			mustCreate(t, s, name)
			var wg sync.WaitGroup
			stop := make(chan struct{})
			for w := range 4 {
				wg.Go(func() {
					for i := 0; ; i++ {
						select {
						case <-stop:
							return
						default:
						}
						ip := netip.AddrFrom4([4]byte{10, byte(w), byte(i >> 8), byte(i)})
						var err error
						if i%2 == 0 {
							_, _, err = s.SetAddress(ctx, name, AddressUpdate{IPv4: ip})
						} else {
							_, err = s.Update(ctx, name, Patch{DDNS: ptr(i%4 == 1)})
						}
						if errors.Is(err, ErrNotFound) {
							return
						}
						if err != nil {
							t.Error(err)
							return
						}
					}
				})
			}
			time.Sleep(time.Duration(round%5) * time.Millisecond)
			if err := s.Delete(ctx, name); err != nil {
				t.Fatal(err)
			}
			if _, ok := s.Lookup(name); ok {
				t.Fatalf("round %d: %s resolves right after Delete returned", round, name)
			}
			close(stop)
			wg.Wait()
			if _, ok := s.Lookup(name); ok {
				t.Fatalf("round %d: a concurrent write resurrected %s in the index", round, name)
			}
			if _, err := s.Get(name); !errors.Is(err, ErrNotFound) {
				t.Fatalf("round %d: a concurrent write resurrected %s on disk: %v", round, name, err)
			}
		}
		if s.Len() != 0 {
			t.Fatalf("Len = %d after deleting everything", s.Len())
		}
	})
}

// TestAccessCodeIDsAreSafeOnACommandLine: an id starting with '-' was read
// as a flag by `nasreach device code rm NAME ID` (about one code in 32).
func TestAccessCodeIDsAreSafeOnACommandLine(t *testing.T) {
	ok := regexp.MustCompile(`^[a-z2-7]{10}$`)
	for range 2000 {
		ac, _, _, err := newAccessCode(time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if !ok.MatchString(ac.ID) {
			t.Fatalf("access code id %q: want 10 characters of a-z and 2-7", ac.ID)
		}
	}
}

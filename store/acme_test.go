package store

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/testutil"
)

// Challenge values as ACME clients compute them: 43 base64url characters.
var chA, chB, chC = testutil.ChallengeValue(0), testutil.ChallengeValue(1), testutil.ChallengeValue(2)

// challenges returns the values Lookup gives for name, nil if it does not
// resolve.
func challenges(s Backend, name string) []string {
	rec, ok := s.Lookup(name)
	if !ok {
		return nil
	}
	return rec.ACME
}

func mustSetChallenges(t *testing.T, s Backend, name string, u ChallengeUpdate) Device {
	t.Helper()
	d, err := s.SetChallenges(context.Background(), name, u)
	if err != nil {
		t.Fatalf("SetChallenges(%s, %+v): %v", name, u, err)
	}
	return d
}

func TestChallengeValuesAreInTheNextLookupUntilWithdrawn(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		clk := newClock()
		s := open(t, Config{Now: clk.Now, SweepEvery: -1})
		created, _ := mustCreate(t, s, "nas1")
		if _, _, err := s.SetAddress(context.Background(), "nas1", AddressUpdate{IPv4: v4a}); err != nil {
			t.Fatal(err)
		}
		var seen []Change
		s.OnChange(func(c Change) { seen = append(seen, c) })
		serial := s.Serial()
		clk.Advance(time.Minute)

		d := mustSetChallenges(t, s, "NAS1", ChallengeUpdate{Add: []string{chA, chB}})
		want := []ACMEChallenge{{Value: chA, Expires: clk.Now().Add(time.Hour)}, {Value: chB, Expires: clk.Now().Add(time.Hour)}}
		if !reflect.DeepEqual(d.ACMEChallenges, want) {
			t.Fatalf("SetChallenges returned %+v, want %+v", d.ACMEChallenges, want)
		}
		if got, _ := s.Get("nas1"); !reflect.DeepEqual(got.ACMEChallenges, want) || !got.Updated.Equal(created.Updated) {
			t.Fatalf("Get = %+v; want the values with their expiry and Updated left at %v", got, created.Updated)
		}
		if rec, ok := s.Lookup("nas1"); !ok || rec.IPv4 != v4a || !slices.Equal(rec.ACME, []string{chA, chB}) {
			t.Fatalf("Lookup = %+v, %v; want the address and both values", rec, ok)
		}
		if !serialNewer(s.Serial(), serial) {
			t.Errorf("serial %d did not move past %d: secondaries would not see the values", s.Serial(), serial)
		}
		if len(seen) != 1 || seen[0].Kind != Updated || len(seen[0].Device.ACMEChallenges) != 2 {
			t.Errorf("observers saw %+v, want one Updated with both values", seen)
		}

		mustSetChallenges(t, s, "nas1", ChallengeUpdate{Remove: []string{chA}})
		if got := challenges(s, "nas1"); !slices.Equal(got, []string{chB}) {
			t.Fatalf("after removing one: %v, want only the other", got)
		}
		serial = s.Serial()
		mustSetChallenges(t, s, "nas1", ChallengeUpdate{Remove: []string{chA}})
		if s.Serial() != serial {
			t.Error("removing a value that is not published wrote a change")
		}
		d = mustSetChallenges(t, s, "nas1", ChallengeUpdate{RemoveAll: true})
		if d.ACMEChallenges != nil || challenges(s, "nas1") != nil {
			t.Fatalf("after removing all: %+v / %v", d.ACMEChallenges, challenges(s, "nas1"))
		}
		if rec, ok := s.Lookup("nas1"); !ok || rec.IPv4 != v4a {
			t.Fatalf("the device stopped resolving with its values: %+v, %v", rec, ok)
		}
	})
}

func TestChallengeValueExpiresAnHourAfterItWasSet(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		clk := newClock()
		s := open(t, Config{Now: clk.Now, SweepEvery: -1})
		mustCreate(t, s, "nas1")
		mustSetChallenges(t, s, "nas1", ChallengeUpdate{Add: []string{chA}})
		clk.Advance(30 * time.Minute)
		mustSetChallenges(t, s, "nas1", ChallengeUpdate{Add: []string{chB}})
		clk.Advance(30*time.Minute - time.Second)
		if n, err := s.Sweep(context.Background()); err != nil || n != 0 {
			t.Fatalf("Sweep = %d, %v; challenge values are not devices", n, err)
		}
		if got := challenges(s, "nas1"); len(got) != 2 {
			t.Fatalf("a second before its hour: %v, want both", got)
		}
		clk.Advance(time.Second)
		serial := s.Serial()
		if _, err := s.Sweep(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got := challenges(s, "nas1"); !slices.Equal(got, []string{chB}) {
			t.Fatalf("an hour after the first was set: %v, want only the second", got)
		}
		if !serialNewer(s.Serial(), serial) {
			t.Error("an expiry did not move the serial")
		}
		// Re-adding renews: chB set again now lives another full hour.
		mustSetChallenges(t, s, "nas1", ChallengeUpdate{Add: []string{chB}})
		clk.Advance(59 * time.Minute)
		if _, err := s.Sweep(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got := challenges(s, "nas1"); !slices.Equal(got, []string{chB}) {
			t.Fatalf("a renewed value expired with its old time: %v", got)
		}
		clk.Advance(time.Minute)
		if _, err := s.Sweep(context.Background()); err != nil {
			t.Fatal(err)
		}
		if d, _ := s.Get("nas1"); d.ACMEChallenges != nil || challenges(s, "nas1") != nil {
			t.Fatalf("after every hour passed: stored %+v, published %v", d.ACMEChallenges, challenges(s, "nas1"))
		}
	})
}

func TestExpiredChallengeValuesAreDroppedByTheNextChange(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		clk := newClock()
		s := open(t, Config{Now: clk.Now, SweepEvery: -1})
		mustCreate(t, s, "nas1")
		mustSetChallenges(t, s, "nas1", ChallengeUpdate{Add: []string{chA, chB}})
		clk.Advance(time.Hour)
		d := mustSetChallenges(t, s, "nas1", ChallengeUpdate{Add: []string{chC}})
		if len(d.ACMEChallenges) != 1 || d.ACMEChallenges[0].Value != chC {
			t.Fatalf("after the others expired: %+v, want only the new value", d.ACMEChallenges)
		}
	})
}

func TestAddingAValueAgainKeepsOneCopyAsTheNewest(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		s := open(t, Config{})
		mustCreate(t, s, "nas1")
		mustSetChallenges(t, s, "nas1", ChallengeUpdate{Add: []string{chA, chB}})
		mustSetChallenges(t, s, "nas1", ChallengeUpdate{Add: []string{chA}})
		if got := challenges(s, "nas1"); !slices.Equal(got, []string{chB, chA}) {
			t.Fatalf("after adding the first again: %v, want [B A]", got)
		}
		mustSetChallenges(t, s, "nas1", ChallengeUpdate{Add: []string{chC, chC}})
		if got := challenges(s, "nas1"); !slices.Equal(got, []string{chB, chA, chC}) {
			t.Fatalf("one value twice in a call: %v", got)
		}
	})
}

func TestKeepKeepsTheMostRecentValuesAsAcmeDNSDoes(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		s := open(t, Config{})
		mustCreate(t, s, "nas1")
		for _, v := range []string{chA, chB, chC} {
			mustSetChallenges(t, s, "nas1", ChallengeUpdate{Add: []string{v}, Keep: 2})
		}
		if got := challenges(s, "nas1"); !slices.Equal(got, []string{chB, chC}) {
			t.Fatalf("three values with Keep 2: %v, want the last two", got)
		}
		mustSetChallenges(t, s, "nas1", ChallengeUpdate{Add: []string{chB}, Keep: 2})
		if got := challenges(s, "nas1"); !slices.Equal(got, []string{chC, chB}) {
			t.Fatalf("an old value again with Keep 2: %v, want [C B]", got)
		}
	})
}

func TestChallengeValuesAreValidatedAndBounded(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		s := open(t, Config{})
		mustCreate(t, s, "nas1")
		secret := "this-is-not-a-challenge-value-but-a-secret!"
		for _, v := range []string{"", "short", chA + "A", strings.Repeat("x", 256), secret, chA[:42] + "=", chA[:42] + "é"[:1]} {
			_, err := s.SetChallenges(context.Background(), "nas1", ChallengeUpdate{Add: []string{v}})
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("value %q: err = %v, want ErrInvalid", v, err)
			} else if v != "" && strings.Contains(err.Error(), v) {
				t.Errorf("the refusal repeats the value: %v", err)
			}
			_, err = s.SetChallenges(context.Background(), "nas1", ChallengeUpdate{Remove: []string{v}})
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("removing %q: err = %v, want ErrInvalid", v, err)
			}
		}
		var values []string
		for i := range MaxChallenges {
			values = append(values, testutil.ChallengeValue(10+i))
		}
		mustSetChallenges(t, s, "nas1", ChallengeUpdate{Add: values[:MaxChallenges-1]})
		_, err := s.SetChallenges(context.Background(), "nas1", ChallengeUpdate{Add: []string{chA, chB}})
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "at most 8") {
			t.Fatalf("one value over the cap: err = %v, want ErrInvalid naming the cap", err)
		}
		if got := challenges(s, "nas1"); !slices.Equal(got, values[:MaxChallenges-1]) {
			t.Fatalf("a refused change changed the values: %v", got)
		}
		// Replacing within the cap works: remove and add in one change.
		mustSetChallenges(t, s, "nas1", ChallengeUpdate{RemoveAll: true, Add: []string{chA, chB}})
		if got := challenges(s, "nas1"); !slices.Equal(got, []string{chA, chB}) {
			t.Fatalf("RemoveAll then Add: %v", got)
		}
		if _, err := s.SetChallenges(context.Background(), "nas9", ChallengeUpdate{Add: []string{chA}}); !errors.Is(err, ErrNotFound) {
			t.Fatalf("unknown device: %v, want ErrNotFound", err)
		}
	})
}

func TestChallengeValuesGoWithTheDeviceAndSurviveReopen(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		dir := t.TempDir()
		clk := newClock()
		s := open(t, Config{Dir: dir, Now: clk.Now, Quarantine: -1, SweepEvery: -1})
		mustCreate(t, s, "nas1")
		mustCreate(t, s, "nas2")
		mustSetChallenges(t, s, "nas1", ChallengeUpdate{Add: []string{chA}})
		mustSetChallenges(t, s, "nas2", ChallengeUpdate{Add: []string{chB}})
		if err := s.Delete(context.Background(), "nas2"); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s = open(t, Config{Dir: dir, Now: clk.Now, Quarantine: -1, SweepEvery: -1})
		if got := challenges(s, "nas1"); !slices.Equal(got, []string{chA}) {
			t.Fatalf("after reopen nas1 publishes %v", got)
		}
		mustCreate(t, s, "nas2")
		if got, _ := s.Get("nas2"); got.ACMEChallenges != nil || challenges(s, "nas2") != nil {
			t.Fatalf("a new device of a deleted name inherited its values: %+v", got.ACMEChallenges)
		}
		// Values that expired while the daemon was down go at the first sweep.
		clk.Advance(time.Hour)
		if _, err := s.Sweep(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got := challenges(s, "nas1"); got != nil {
			t.Fatalf("after their hour: %v", got)
		}
	})
}

func TestDDNSOffDeviceResolvesOnlyWhilePublishingChallenges(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		dir := t.TempDir()
		s := open(t, Config{Dir: dir})
		mustCreate(t, s, "nas1")
		if _, _, err := s.SetAddress(context.Background(), "nas1", AddressUpdate{IPv4: v4a, IPv6: v6a}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Update(context.Background(), "nas1", Patch{DDNS: ptr(false)}); err != nil {
			t.Fatal(err)
		}
		mustSetChallenges(t, s, "nas1", ChallengeUpdate{Add: []string{chA}})
		want := Record{ACME: []string{chA}}
		if rec, ok := s.Lookup("nas1"); !ok || !reflect.DeepEqual(rec, want) {
			t.Fatalf("DDNS off with a value: Lookup = %+v, %v; want the value and no address", rec, ok)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s = open(t, Config{Dir: dir})
		if rec, ok := s.Lookup("nas1"); !ok || !reflect.DeepEqual(rec, want) {
			t.Fatalf("after reopen: Lookup = %+v, %v; want %+v", rec, ok, want)
		}
		mustSetChallenges(t, s, "nas1", ChallengeUpdate{RemoveAll: true})
		if rec, ok := s.Lookup("nas1"); ok || s.Len() != 0 {
			t.Fatalf("DDNS off with no value resolves: %+v (Len %d)", rec, s.Len())
		}
		if d, _ := s.Get("nas1"); d.IPv4 != v4a || d.IPv6 != v6a {
			t.Fatalf("the device lost its addresses: %+v", d)
		}
	})
}

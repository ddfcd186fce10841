package store

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/testutil"
)

func TestEditRecordsCommitsWhatDecideSaysAndNothingOnError(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		s := open(t, Config{})
		ctx := context.Background()
		mustCreate(t, s, "nas1")
		if _, _, err := s.SetAddress(ctx, "nas1", AddressUpdate{IPv4: v4a, IPv6: v6a}); err != nil {
			t.Fatal(err)
		}
		serial := s.Serial()
		var seen Device
		d, changed, err := s.EditRecords(ctx, "NAS1", func(cur Device) (RecordEdit, error) {
			seen = cur
			return RecordEdit{Address: AddressUpdate{IPv4: v4b, ClearIPv6: true}}, nil
		})
		if err != nil || !changed || d.IPv4 != v4b || d.IPv6.IsValid() {
			t.Fatalf("EditRecords = %+v, %v, %v; want %s and no IPv6, changed", d, changed, err, v4b)
		}
		if seen.IPv4 != v4a || seen.IPv6 != v6a {
			t.Errorf("decide saw %s %s, want the stored %s %s", seen.IPv4, seen.IPv6, v4a, v6a)
		}
		if rec, ok := s.Lookup("nas1"); !ok || rec.IPv4 != v4b || rec.IPv6.IsValid() {
			t.Fatalf("Lookup after EditRecords = %+v, %v", rec, ok)
		}
		if s.Serial() != serial+1 {
			t.Errorf("serial %d after an edit, want %d", s.Serial(), serial+1)
		}

		// Nothing changes: no write, no serial.
		_, changed, err = s.EditRecords(ctx, "nas1", func(Device) (RecordEdit, error) {
			return RecordEdit{Address: AddressUpdate{IPv4: v4b}}, nil
		})
		if err != nil || changed || s.Serial() != serial+1 {
			t.Fatalf("an edit to the same address: changed %v, err %v, serial %d", changed, err, s.Serial())
		}

		// decide's error is returned as it is; so is a refused address.
		refuse := errors.New("prerequisite failed")
		if _, _, err := s.EditRecords(ctx, "nas1", func(Device) (RecordEdit, error) { return RecordEdit{}, refuse }); err != refuse {
			t.Fatalf("decide's error came back as %v", err)
		}
		for _, bad := range []AddressUpdate{
			{IPv4: netip.MustParseAddr("0.0.0.0")},
			{IPv6: netip.MustParseAddr("fe80::1")},
			{IPv4: v6a},
		} {
			if _, _, err := s.EditRecords(ctx, "nas1", func(Device) (RecordEdit, error) { return RecordEdit{Address: bad}, nil }); !errors.Is(err, ErrInvalid) {
				t.Errorf("EditRecords(%+v) = %v, want ErrInvalid", bad, err)
			}
		}
		if rec, _ := s.Lookup("nas1"); rec.IPv4 != v4b || s.Serial() != serial+1 {
			t.Fatalf("a refused edit changed the record to %+v (serial %d)", rec, s.Serial())
		}
		if _, _, err := s.EditRecords(ctx, "nobody", func(Device) (RecordEdit, error) { return RecordEdit{}, nil }); !errors.Is(err, ErrNotFound) {
			t.Fatalf("EditRecords(nobody) = %v, want ErrNotFound", err)
		}
	})
}

// Concurrent edits that each read the address and set the next one lose
// none: decide always sees the committed state of the edit before it.
func TestEditRecordsDecidesOnTheCommittedState(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		s := open(t, Config{})
		ctx := context.Background()
		mustCreate(t, s, "nas1")
		start := netip.MustParseAddr("10.0.0.0")
		if _, _, err := s.SetAddress(ctx, "nas1", AddressUpdate{IPv4: start}); err != nil {
			t.Fatal(err)
		}
		const n = 40
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				_, _, err := s.EditRecords(ctx, "nas1", func(cur Device) (RecordEdit, error) {
					return RecordEdit{Address: AddressUpdate{IPv4: cur.IPv4.Next()}}, nil
				})
				if err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		want := start
		for range n {
			want = want.Next()
		}
		if d, _ := s.Get("nas1"); d.IPv4 != want {
			t.Fatalf("after %d increments the address is %s, want %s: an edit decided on a stale record", n, d.IPv4, want)
		}
	})
}

// An edit changes addresses and ACME challenge values in one commit, by
// the rules SetChallenges keeps: valid values only, at most MaxChallenges,
// and Updated moved by the addresses alone.
func TestEditRecordsChangesAddressesAndChallengesTogether(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		clk := newClock()
		s := open(t, Config{Now: clk.Now})
		ctx := context.Background()
		mustCreate(t, s, "nas1")
		a, b := testutil.ChallengeValue(0), testutil.ChallengeValue(1)
		clk.Advance(time.Minute)
		d, changed, err := s.EditRecords(ctx, "nas1", func(Device) (RecordEdit, error) {
			return RecordEdit{Address: AddressUpdate{IPv4: v4a}, Challenges: ChallengeUpdate{Add: []string{a, b}}}, nil
		})
		if err != nil || !changed || d.IPv4 != v4a || len(d.ACMEChallenges) != 2 || !d.Updated.Equal(clk.Now()) {
			t.Fatalf("EditRecords = %+v, %v, %v", d, changed, err)
		}
		if rec, ok := s.Lookup("nas1"); !ok || rec.IPv4 != v4a || !slices.Equal(rec.ACME, []string{a, b}) {
			t.Fatalf("Lookup = %+v, %v", rec, ok)
		}
		clk.Advance(time.Minute)
		d, changed, err = s.EditRecords(ctx, "nas1", func(Device) (RecordEdit, error) {
			return RecordEdit{Challenges: ChallengeUpdate{Remove: []string{a}}}, nil
		})
		if err != nil || !changed || d.Updated.Equal(clk.Now()) {
			t.Fatalf("removing a value: %+v, %v, %v; want a change that leaves Updated", d, changed, err)
		}
		if rec, _ := s.Lookup("nas1"); !slices.Equal(rec.ACME, []string{b}) {
			t.Fatalf("after removing %s: %q", a, rec.ACME)
		}
		for _, bad := range []ChallengeUpdate{
			{Add: []string{"not a challenge value"}},
			{Add: []string{testutil.ChallengeValue(2), testutil.ChallengeValue(3), testutil.ChallengeValue(4), testutil.ChallengeValue(5),
				testutil.ChallengeValue(6), testutil.ChallengeValue(7), testutil.ChallengeValue(8), testutil.ChallengeValue(9)}}, // 9 in all
		} {
			_, _, err := s.EditRecords(ctx, "nas1", func(Device) (RecordEdit, error) {
				return RecordEdit{Address: AddressUpdate{IPv4: v4b}, Challenges: bad}, nil
			})
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("EditRecords(%+v) = %v, want ErrInvalid", bad, err)
			}
		}
		if rec, _ := s.Lookup("nas1"); rec.IPv4 != v4a || !slices.Equal(rec.ACME, []string{b}) {
			t.Fatalf("a refused edit changed the record to %+v", rec)
		}
	})
}

package store

import (
	"context"
	"iter"
	"net/netip"
	"sync"
	"testing"
)

// TestChangesCarryTheirSerialAndThePriorDevice: observers learn the serial
// each change to the zone produced, one more than the last, and the device
// as it was, which is what a zone transfer's history needs.
func TestChangesCarryTheirSerialAndThePriorDevice(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		s := open(t, Config{})
		ctx := context.Background()
		var mu sync.Mutex
		var got []Change
		s.OnChange(func(c Change) {
			mu.Lock()
			defer mu.Unlock()
			got = append(got, c)
		})
		start := s.Serial()
		mustCreate(t, s, "nas1")
		if _, _, err := s.SetAddress(ctx, "nas1", AddressUpdate{IPv4: v4a}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Update(ctx, "nas1", Patch{Link: ptr(false)}); err != nil {
			t.Fatal(err)
		}
		if err := s.Delete(ctx, "nas1"); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(got) != 4 {
			t.Fatalf("%d changes observed, want 4", len(got))
		}
		want := []struct {
			serial   uint32
			before   bool
			beforeIP netip.Addr
		}{{start + 1, false, netip.Addr{}}, {start + 2, true, netip.Addr{}}, {0, true, v4a}, {start + 3, true, v4a}}
		for i, w := range want {
			c := got[i]
			if c.Serial != w.serial || (c.Before != nil) != w.before || (c.Before != nil && c.Before.IPv4 != w.beforeIP) {
				t.Errorf("change %d (%v): serial %d, before %+v; want serial %d, before present %v with %v", i, c.Kind, c.Serial, c.Before, w.serial, w.before, w.beforeIP)
			}
		}
	})
}

// TestZoneSnapshotIsOneCommittedState: the snapshot lists what resolves at
// its serial, and writes made while it is read do not show in it.
func TestZoneSnapshotIsOneCommittedState(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		s := open(t, Config{})
		ctx := context.Background()
		for _, n := range []string{"b", "a", "hidden", "c"} {
			mustCreate(t, s, n)
			if _, _, err := s.SetAddress(ctx, n, AddressUpdate{IPv4: v4a}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := s.Update(ctx, "hidden", Patch{DDNS: ptr(false)}); err != nil {
			t.Fatal(err)
		}
		serial := s.Serial()
		var names []string
		err := s.ZoneSnapshot(func(snap uint32, devices iter.Seq2[string, Record]) error {
			if snap != serial {
				t.Errorf("snapshot serial %d, want %d", snap, serial)
			}
			for name, rec := range devices {
				names = append(names, name)
				if rec.IPv4 != v4a {
					t.Errorf("%s: %v, want %v", name, rec.IPv4, v4a)
				}
				if name == "a" {
					// A write during the iteration commits, but is not seen.
					if _, _, err := s.SetAddress(ctx, "c", AddressUpdate{IPv4: v4b}); err != nil {
						t.Fatal(err)
					}
					if err := s.Delete(ctx, "b"); err != nil {
						t.Fatal(err)
					}
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if got := len(names); got != 3 || names[0] != "a" || names[1] != "b" || names[2] != "c" {
			t.Errorf("snapshot lists %v, want [a b c] (the DDNS-off device left out)", names)
		}
		if r, _ := s.Lookup("c"); r.IPv4 != v4b || !serialNewer(s.Serial(), serial) {
			t.Errorf("the write made during the snapshot did not land: %v, serial %d", r.IPv4, s.Serial())
		}
	})
}

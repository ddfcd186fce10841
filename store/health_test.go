package store

import (
	"context"
	"errors"
	"testing"
)

// A refused change (a taken name, an unknown device) is the caller's
// problem, not the store's: it must not make the daemon unready. A failed
// commit is tested on a full disk in daemon's TestReadyzSaysNotReadyWhileTheDiskIsFull.
func TestRefusedChangesDoNotMakeTheStoreUnready(t *testing.T) {
	s := openStore(t, Config{SweepEvery: -1})
	mustCreate(t, s, "nas1")
	ctx := context.Background()
	if _, _, err := s.Create(ctx, "nas1", CreateOptions{}); !errors.Is(err, ErrExists) {
		t.Fatalf("second Create = %v, want ErrExists", err)
	}
	if _, _, err := s.SetAddress(ctx, "nobody", AddressUpdate{IPv4: v4a}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("SetAddress of an unknown device = %v, want ErrNotFound", err)
	}
	if err := s.Ping(); err != nil {
		t.Fatalf("Ping after refused changes = %v, want nil", err)
	}
	s.Close()
	if err := s.Ping(); err == nil {
		t.Fatal("Ping of a closed store = nil")
	}
}

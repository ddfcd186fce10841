package store

import (
	"context"
	"errors"
	"testing"
)

func TestAccessCodesWorkUntilRevokedAndGoWithTheDevice(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		ctx := context.Background()
		s := open(t, Config{SweepEvery: -1})
		if _, _, err := s.Create(ctx, "nas1", CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		id1, code1, err := s.AddAccessCode(ctx, "nas1")
		if err != nil {
			t.Fatal(err)
		}
		_, code2, err := s.AddAccessCode(ctx, "NAS1")
		if err != nil {
			t.Fatal(err)
		}
		if !s.CheckAccessCode("nas1", code1) || !s.CheckAccessCode("nas1", code2) || s.CheckAccessCode("nas1", "guess") {
			t.Fatal("issued codes must pass and a guess must fail")
		}
		codes, _ := s.AccessCodes("nas1")
		if len(codes) != 2 || codes[0].SHA256 == code1 || codes[0].SHA256 != HashToken(code1) {
			t.Fatalf("stored codes = %+v; want two, hashed", codes)
		}
		if err := s.RevokeAccessCode(ctx, "nas1", id1); err != nil {
			t.Fatal(err)
		}
		if s.CheckAccessCode("nas1", code1) || !s.CheckAccessCode("nas1", code2) {
			t.Fatal("revoking one code must stop exactly that code")
		}
		if err := s.RevokeAccessCode(ctx, "nas1", id1); !errors.Is(err, ErrNotFound) {
			t.Fatalf("revoking twice: %v, want ErrNotFound", err)
		}
		for range MaxAccessCodes - 1 {
			if _, _, err := s.AddAccessCode(ctx, "nas1"); err != nil {
				t.Fatal(err)
			}
		}
		if _, _, err := s.AddAccessCode(ctx, "nas1"); !errors.Is(err, ErrInvalid) {
			t.Fatalf("code %d: %v, want ErrInvalid (limit)", MaxAccessCodes+1, err)
		}
		if err := s.Delete(ctx, "nas1"); err != nil {
			t.Fatal(err)
		}
		if codes, _ := s.AccessCodes("nas1"); len(codes) != 0 || s.CheckAccessCode("nas1", code2) {
			t.Fatalf("a deleted device keeps %d access codes", len(codes))
		}
	})
}

func TestPublicKeyIsRecordedAndBounded(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		ctx := context.Background()
		s := open(t, Config{SweepEvery: -1})
		if _, _, err := s.Create(ctx, "nas1", CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.SetPublicKey(ctx, "nas1", "MCowBQYDK2VwAyEA"); err != nil {
			t.Fatal(err)
		}
		if d, _ := s.Get("nas1"); d.PublicKey != "MCowBQYDK2VwAyEA" {
			t.Fatalf("public key = %q", d.PublicKey)
		}
		if _, err := s.SetPublicKey(ctx, "nas1", string(make([]byte, MaxPublicKeyLen+1))); !errors.Is(err, ErrInvalid) {
			t.Fatalf("oversized key: %v, want ErrInvalid", err)
		}
		if _, err := s.SetPublicKey(ctx, "nope", "x"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("unknown device: %v", err)
		}
	})
}

func TestDDNSOffSurvivesReopen(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		ctx := context.Background()
		dir := t.TempDir()
		s := open(t, Config{Dir: dir, SweepEvery: -1})
		s.Create(ctx, "nas1", CreateOptions{})
		off := false
		if _, err := s.Update(ctx, "nas1", Patch{DDNS: &off}); err != nil {
			t.Fatal(err)
		}
		s.Close()
		s = open(t, Config{Dir: dir, SweepEvery: -1})
		if _, ok := s.Lookup("nas1"); ok {
			t.Fatal("a device with DDNS off resolves again after the store is reopened")
		}
	})
}

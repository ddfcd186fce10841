package store

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"
)

func TestTSIGKeyIsIssuedRotatedAndRevoked(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		clk := newClock()
		s := open(t, Config{Now: clk.Now})
		ctx := context.Background()
		mustCreate(t, s, "nas1")
		if _, ok := s.TSIGKey("nas1"); ok {
			t.Fatal("a new device has a TSIG key")
		}
		serial := s.Serial()
		clk.Advance(time.Minute)
		k1, err := s.IssueTSIGKey(ctx, "NAS1")
		if err != nil {
			t.Fatal(err)
		}
		if k1.Algorithm != "hmac-sha256" || len(k1.Secret) != TSIGSecretLen || !k1.Created.Equal(clk.Now()) {
			t.Fatalf("IssueTSIGKey = %+v, want hmac-sha256, %d bytes, created now", k1, TSIGSecretLen)
		}
		if got, ok := s.TSIGKey("nas1"); !ok || !bytes.Equal(got.Secret, k1.Secret) {
			t.Fatalf("TSIGKey after issue = %+v, %v", got, ok)
		}
		if s.Serial() != serial {
			t.Error("issuing a key moved the zone serial; the zone did not change")
		}
		k2, err := s.IssueTSIGKey(ctx, "nas1")
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(k1.Secret, k2.Secret) {
			t.Fatal("a second key has the first one's secret")
		}
		if got, _ := s.TSIGKey("nas1"); !bytes.Equal(got.Secret, k2.Secret) {
			t.Fatal("after a second issue the first key is still the one in force")
		}
		if d, _ := s.Get("nas1"); d.TSIGKey == nil || !bytes.Equal(d.TSIGKey.Secret, k2.Secret) {
			t.Fatalf("Get holds key %+v, want the second", d.TSIGKey)
		}
		if err := s.RevokeTSIGKey(ctx, "nas1"); err != nil {
			t.Fatal(err)
		}
		if _, ok := s.TSIGKey("nas1"); ok {
			t.Fatal("the key works after RevokeTSIGKey")
		}
		if err := s.RevokeTSIGKey(ctx, "nas1"); err != nil {
			t.Fatalf("revoking no key = %v, want nil (nothing to do)", err)
		}
		if _, err := s.IssueTSIGKey(ctx, "nobody"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("IssueTSIGKey(nobody) = %v, want ErrNotFound", err)
		}
		if err := s.RevokeTSIGKey(ctx, "nobody"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("RevokeTSIGKey(nobody) = %v, want ErrNotFound", err)
		}
	})
}

func TestTSIGKeySurvivesRestartAndDDNSOffAndGoesWithTheDevice(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		dir := t.TempDir()
		ctx := context.Background()
		s := open(t, Config{Dir: dir, SweepEvery: -1})
		mustCreate(t, s, "nas1")
		key, err := s.IssueTSIGKey(ctx, "nas1")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Update(ctx, "nas1", Patch{DDNS: ptr(false)}); err != nil {
			t.Fatal(err)
		}
		s.Close()
		s = open(t, Config{Dir: dir, SweepEvery: -1})
		if got, ok := s.TSIGKey("nas1"); !ok || !bytes.Equal(got.Secret, key.Secret) {
			t.Fatalf("TSIGKey after restart with DDNS off = %+v, %v; want the key issued", got, ok)
		}
		if err := s.Delete(ctx, "nas1"); err != nil {
			t.Fatal(err)
		}
		if _, ok := s.TSIGKey("nas1"); ok {
			t.Fatal("a deleted device's key still works")
		}
		s.Close()
		s = open(t, Config{Dir: dir, SweepEvery: -1})
		if _, ok := s.TSIGKey("nas1"); ok {
			t.Fatal("a deleted device's key works again after a restart")
		}
	})
}

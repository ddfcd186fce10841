package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Sweep removes uninitialized devices older than the uninitialized TTL (with
// all their data, and without quarantine: they never had an owner), ACME
// challenge values past their expiry and quarantine entries that have ended. The background sweeper calls it; tests
// call it with a fake clock.
func (s *Store) Sweep(ctx context.Context) (expired int, err error) {
	now := s.now()
	var names, challenged []string
	err = s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketDevices).ForEach(func(k, v []byte) error {
			var d Device
			if err := json.Unmarshal(v, &d); err != nil {
				return fmt.Errorf("device %q is unreadable: %w", k, err)
			}
			switch {
			case s.expired(d, now):
				names = append(names, d.Name)
			case hasExpiredChallenge(d, now):
				challenged = append(challenged, d.Name)
			}
			return nil
		})
	})
	if err != nil {
		return 0, fmt.Errorf("sweep: %w", err)
	}
	for _, name := range names {
		var gone bool // decided by the mutation's last run, the committed one
		err := s.write(ctx, name, Expired, func(cur *Device) (outcome, error) {
			gone = cur != nil && s.expired(*cur, s.now())
			if !gone {
				return outcome{}, nil // activated or deleted meanwhile
			}
			return outcome{del: true}, nil
		})
		if err != nil {
			return expired, fmt.Errorf("sweep: expire %q: %w", name, err)
		}
		if !gone {
			continue
		}
		expired++
		s.log.Info().Str("device", name).Msg("uninitialized device expired; its data is deleted")
	}
	for _, name := range challenged {
		if err := s.expireChallenges(ctx, name); err != nil {
			return expired, fmt.Errorf("sweep: expire the acme challenges of %q: %w", name, err)
		}
	}
	if err := s.endQuarantines(now); err != nil {
		return expired, fmt.Errorf("sweep quarantine: %w", err)
	}
	return expired, nil
}

func (s *Store) expired(d Device, now time.Time) bool {
	return d.State == StateUninitialized && !now.Before(d.Created.Add(s.uninitTTL))
}

// sweep is the background sweeper's run.
func (s *Store) sweep() {
	if _, err := s.Sweep(context.Background()); err != nil {
		s.log.Error().Err(err).Msg("store sweep failed")
	}
}

// every calls f every interval until Close; Open runs the background work
// with it.
func (s *Store) every(interval time.Duration, f func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			f()
		}
	}
}

package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	bolt "go.etcd.io/bbolt"
)

// Sweep removes uninitialized devices older than the uninitialized TTL (with
// all their data, and without quarantine: they never had an owner), ACME
// challenge values past their expiry and quarantine entries that have
// ended. The background sweeper calls it; tests call it with a fake clock.
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
	expired, err = s.rules().expire(ctx, names, s.uninitTTL, s.log)
	if err != nil {
		return expired, err
	}
	if err := s.rules().expireChallenges(ctx, challenged); err != nil {
		return expired, err
	}
	if err := s.endQuarantines(now); err != nil {
		return expired, fmt.Errorf("sweep quarantine: %w", err)
	}
	return expired, nil
}

func (s *Store) expired(d Device, now time.Time) bool { return expiredAt(d, now, s.uninitTTL) }

// expiredAt reports whether d is an uninitialized device past its ttl at now.
func expiredAt(d Device, now time.Time, ttl time.Duration) bool {
	return d.State == StateUninitialized && !now.Before(d.Created.Add(ttl))
}

// expire deletes the named devices that are still uninitialized and past
// ttl when their deletion commits, and returns how many it deleted.
func (w writeRules) expire(ctx context.Context, names []string, ttl time.Duration, log zerolog.Logger) (expired int, err error) {
	for _, name := range names {
		var gone bool // decided by the mutation's last run, the committed one
		err := w.write(ctx, name, Expired, func(cur *Device) (outcome, error) {
			gone = cur != nil && expiredAt(*cur, w.now(), ttl)
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
		log.Info().Str("device", name).Msg("uninitialized device expired; its data is deleted")
	}
	return expired, nil
}

// sweep is the background sweeper's run.
func (s *Store) sweep() {
	if _, err := s.Sweep(context.Background()); err != nil {
		s.log.Error().Err(err).Msg("store sweep failed")
	}
	releaseMapped(s.db) // the sweep read the whole file
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

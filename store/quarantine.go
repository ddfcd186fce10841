package store

import (
	"encoding/binary"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// quarantined reports whether a quarantine entry (the deletion time) is
// still in force at now.
func (s *Store) quarantined(v []byte, now time.Time) bool {
	if len(v) != 8 || s.quarantine < 0 {
		return false
	}
	return now.Before(deletedAt(v).Add(s.quarantine))
}

// deletedAt decodes a quarantine entry of 8 bytes: the deletion time.
func deletedAt(v []byte) time.Time { return time.Unix(0, int64(binary.BigEndian.Uint64(v))) }

// checkQuarantine refuses a name whose quarantine is still in force.
func (s *Store) checkQuarantine(tx *bolt.Tx, name string) error {
	v := tx.Bucket(bucketQuarantine).Get([]byte(name))
	if v != nil && s.quarantined(v, s.now()) {
		free := deletedAt(v).Add(s.quarantine).UTC()
		return fmt.Errorf("%q: %w until %s", name, ErrQuarantined, free.Format(time.RFC3339))
	}
	return nil
}

// quarantineName starts the quarantine of a deleted device's name, unless
// quarantine is disabled. Only the name and the deletion time are kept.
func (s *Store) quarantineName(tx *bolt.Tx, name string) error {
	if s.quarantine <= 0 {
		return nil
	}
	var ts [8]byte
	binary.BigEndian.PutUint64(ts[:], uint64(s.now().UnixNano()))
	return tx.Bucket(bucketQuarantine).Put([]byte(name), ts[:])
}

// endQuarantines deletes the quarantine entries that have ended at now.
func (s *Store) endQuarantines(now time.Time) error {
	return s.transact(s.db.Update, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketQuarantine)
		var done [][]byte
		_ = b.ForEach(func(k, v []byte) error {
			if !s.quarantined(v, now) {
				done = append(done, k)
			}
			return nil
		})
		for _, k := range done {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
}

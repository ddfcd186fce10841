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
	deleted := time.Unix(0, int64(binary.BigEndian.Uint64(v)))
	return now.Before(deleted.Add(s.quarantine))
}

// checkQuarantine refuses a name whose quarantine is still in force.
func (s *Store) checkQuarantine(tx *bolt.Tx, name string) error {
	v := tx.Bucket(bucketQuarantine).Get([]byte(name))
	if v != nil && s.quarantined(v, s.now()) {
		free := time.Unix(0, int64(binary.BigEndian.Uint64(v))).Add(s.quarantine).UTC()
		return fmt.Errorf("%q: %w until %s", name, ErrQuarantined, free.Format(time.RFC3339))
	}
	return nil
}

package store

import (
	"encoding/json"
	"fmt"
	"iter"

	bolt "go.etcd.io/bbolt"
)

// ZoneSnapshot calls f with the zone serial and the devices that resolve
// (see Resolvable), by name in byte order, both as of one committed state:
// a zone transfer streams them at that serial while writes go on. It holds
// a bbolt read transaction until f returns and copies nothing up front:
// each device is decoded as the iteration reaches it, so a transfer of a
// million devices needs no second copy of the zone. A long f keeps the
// pages it reads from being reused (the file may grow meanwhile) and must
// not wait for a write of this store. A record that cannot be decoded ends
// the iteration, and ZoneSnapshot returns its error.
func (s *Store) ZoneSnapshot(f func(serial uint32, devices iter.Seq2[string, Record]) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		serial := uint32(getUint(tx.Bucket(bucketMeta), keySerial))
		var bad error
		devices := func(yield func(string, Record) bool) {
			c := tx.Bucket(bucketDevices).Cursor()
			for k, v := c.First(); k != nil; k, v = c.Next() {
				var d Device
				if err := json.Unmarshal(v, &d); err != nil {
					bad = fmt.Errorf("zone snapshot: device %q is unreadable: %w", k, err)
					return
				}
				if rec, ok := resolvable(&d); ok && !yield(d.Name, rec) {
					return
				}
			}
		}
		if err := f(serial, devices); err != nil {
			return err
		}
		return bad
	})
}

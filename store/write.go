package store

import (
	"context"
	"encoding/binary"
	"encoding/json"

	bolt "go.etcd.io/bbolt"
)

// outcome is what a mutation decided: store put, delete the record, or (the
// zero value) change nothing. dns says whether DNS data changes.
type outcome struct {
	put *Device
	del bool
	dns bool
	tx  func(*bolt.Tx) error // more changes in the same transaction (other buckets)
}

// mutation decides the new state of one device from the current record (nil
// if none). It may run several times (a read-only check first, then bbolt may
// retry a batch) and must have no effect other than what it returns.
type mutation func(cur *Device) (outcome, error)

// write runs m in a batched, fsynced transaction, then updates the index and
// notifies observers. A mutation that changes nothing (an unchanged address, an
// error) is decided in a read-only transaction and costs no commit.
func (s *Store) write(ctx context.Context, name string, kind ChangeKind, m mutation) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var noop bool
	err := s.db.View(func(tx *bolt.Tx) error {
		if kind == Created {
			if err := s.checkQuarantine(tx, name); err != nil {
				return err
			}
		}
		cur, err := readDevice(tx.Bucket(bucketDevices), name)
		if err != nil {
			return err
		}
		o, err := m(cur)
		noop = o.put == nil && !o.del && o.tx == nil
		return err
	})
	if err != nil || noop {
		return err
	}
	var (
		rev    uint64
		serial uint32
		wrote  bool
		stored Device
		o      outcome
	)
	err = s.db.Batch(func(tx *bolt.Tx) error {
		wrote = false
		b := tx.Bucket(bucketDevices)
		if kind == Created {
			if err := s.checkQuarantine(tx, name); err != nil {
				return err
			}
		}
		cur, err := readDevice(b, name)
		if err != nil {
			return err
		}
		if o, err = m(cur); err != nil {
			return err
		}
		switch {
		case o.del:
			if err := b.Delete([]byte(name)); err != nil {
				return err
			}
			stored = *cur
			if err := deletePrefix(tx.Bucket(bucketAccessCodes), name+"/"); err != nil {
				return err
			}
			if kind == Deleted && s.quarantine > 0 {
				var ts [8]byte
				binary.BigEndian.PutUint64(ts[:], uint64(s.now().UnixNano()))
				if err := tx.Bucket(bucketQuarantine).Put([]byte(name), ts[:]); err != nil {
					return err
				}
			}
		case o.put != nil:
			buf, err := json.Marshal(o.put)
			if err != nil {
				return err
			}
			if err := b.Put([]byte(name), buf); err != nil {
				return err
			}
			stored = *o.put
		case o.tx != nil:
			stored = *cur
		default:
			return nil // nothing to change
		}
		if o.tx != nil {
			if err := o.tx(tx); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		rev = getUint(meta, keyRev) + 1
		if err := putUint(meta, keyRev, rev); err != nil {
			return err
		}
		serial = uint32(getUint(meta, keySerial))
		if o.dns {
			serial++
			if serial == 0 {
				serial = 1
			}
			if err := putUint(meta, keySerial, uint64(serial)); err != nil {
				return err
			}
		}
		wrote = true
		return nil
	})
	if err != nil {
		return err
	}
	if !wrote {
		return nil
	}
	s.mu.Lock()
	if e, ok := s.index[name]; !ok || e.rev < rev {
		s.index[name] = entry{rev: rev, deleted: o.del || !stored.resolves(), rec: stored.record()}
	}
	if o.dns && serialNewer(serial, s.serial) {
		s.serial = serial
	}
	observers := s.observers
	s.mu.Unlock()
	for _, f := range observers {
		f(Change{Kind: kind, Device: stored})
	}
	return nil
}

package store

import (
	"context"

	bolt "go.etcd.io/bbolt"
)

// outcome is what a mutation decided: store put, delete the record, or (the
// zero value) change nothing. Whether DNS data changes is not the
// mutation's to say: commit compares what resolves before and after.
type outcome struct {
	put *Device
	del bool
	tx  func(*bolt.Tx) error // more changes in the same transaction (other buckets)
}

// changes reports whether o writes anything.
func (o outcome) changes() bool { return o.put != nil || o.del || o.tx != nil }

// mutation decides the new state of one device from the current record (nil
// if none). It may run several times (a read-only check first, then bbolt may
// retry a batch) and must have no effect other than what it returns.
type mutation func(cur *Device) (outcome, error)

// committed is what one committed write changed, for the index and observers.
type committed struct {
	rev     uint64 // the write's place in commit order
	serial  uint32 // the zone serial after the commit
	dns     bool   // whether DNS data changed, and serial with it
	deleted bool   // the device record is gone
	device  Device // the device after the change (before it, when deleted)
	before  *Device
}

// write is the one path every change to a device takes, so the durability
// contract is kept in one place: it returns nil only after the change is
// committed and fsynced and the index shows it, and observers have been told.
// A mutation that changes nothing (an unchanged address, an error) is decided
// in a read-only transaction and costs no commit.
func (s *Store) write(ctx context.Context, name string, kind ChangeKind, m mutation) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if changes, err := s.check(name, kind, m); err != nil || !changes {
		return err
	}
	c, wrote, err := s.commit(name, kind, m)
	if err != nil || !wrote {
		return err
	}
	change := Change{Kind: kind, Device: c.device, Before: c.before}
	if c.dns {
		change.Serial = c.serial
	}
	for _, f := range s.updateIndex(name, c) {
		f(change)
	}
	return nil
}

// check runs m in a read-only transaction and reports whether it changes
// anything.
func (s *Store) check(name string, kind ChangeKind, m mutation) (changes bool, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		_, o, err := s.decide(tx, name, kind, m)
		changes = o.changes()
		return err
	})
	return changes, err
}

// commit runs m again in a batched transaction, the one that counts: the
// record may have changed since check. wrote is false when m now changes
// nothing; then nothing is written.
func (s *Store) commit(name string, kind ChangeKind, m mutation) (c committed, wrote bool, err error) {
	err = s.transact(s.db.Batch, func(tx *bolt.Tx) error {
		c, wrote = committed{}, false // bbolt may run this more than once
		cur, o, err := s.decide(tx, name, kind, m)
		if err != nil || !o.changes() {
			return err
		}
		device, err := s.persist(tx, name, kind, cur, o)
		if err != nil {
			return err
		}
		after := &device
		if o.del {
			after = nil
		}
		dns := dnsChanged(cur, after)
		rev, serial, err := bumpCounters(tx.Bucket(bucketMeta), dns)
		if err != nil {
			return err
		}
		c = committed{rev: rev, serial: serial, dns: dns, deleted: o.del, device: device, before: cur}
		wrote = true
		return nil
	})
	return c, wrote, err
}

// decide reads the device's current record in tx and runs m on it. A name is
// created only when its quarantine has ended.
func (s *Store) decide(tx *bolt.Tx, name string, kind ChangeKind, m mutation) (*Device, outcome, error) {
	if kind == Created {
		if err := s.checkQuarantine(tx, name); err != nil {
			return nil, outcome{}, err
		}
	}
	cur, err := readDevice(tx.Bucket(bucketDevices), name)
	if err != nil {
		return nil, outcome{}, err
	}
	o, err := m(cur)
	return cur, o, err
}

// persist writes o to tx and returns the device as the change leaves it (as
// it was, for a deletion).
func (s *Store) persist(tx *bolt.Tx, name string, kind ChangeKind, cur *Device, o outcome) (Device, error) {
	var device Device
	switch {
	case o.del:
		if err := s.deleteDevice(tx, name, kind); err != nil {
			return Device{}, err
		}
		device = *cur
	case o.put != nil:
		if err := putDevice(tx.Bucket(bucketDevices), name, o.put); err != nil {
			return Device{}, err
		}
		device = *o.put
	default: // only o.tx: the record itself stays as it is
		device = *cur
	}
	if o.tx != nil {
		if err := o.tx(tx); err != nil {
			return Device{}, err
		}
	}
	return device, nil
}

// deleteDevice removes a device's record and its access codes. A deleted
// device's name is quarantined; an expired one's is not: it never had an owner
// whose clients might still resolve it.
func (s *Store) deleteDevice(tx *bolt.Tx, name string, kind ChangeKind) error {
	if err := tx.Bucket(bucketDevices).Delete([]byte(name)); err != nil {
		return err
	}
	if err := deletePrefix(tx.Bucket(bucketAccessCodes), name+"/"); err != nil {
		return err
	}
	if kind == Deleted {
		return s.quarantineName(tx, name)
	}
	return nil
}

// dnsChanged reports whether a change from before to after (nil: no record)
// changes what the zone holds, and so its serial: whether the device
// resolves, or what it resolves to. An address update of a device with DDNS
// off changes nothing a resolver or a secondary can see.
func dnsChanged(before, after *Device) bool {
	rb, okb := resolvable(before)
	ra, oka := resolvable(after)
	return okb != oka || !rb.Equal(ra)
}

// bumpCounters advances the write revision, and the zone serial when DNS data
// changed, and returns both as they now are.
func bumpCounters(meta *bolt.Bucket, dns bool) (rev uint64, serial uint32, err error) {
	rev = getUint(meta, keyRev) + 1
	if err := putUint(meta, keyRev, rev); err != nil {
		return 0, 0, err
	}
	serial = uint32(getUint(meta, keySerial))
	if !dns {
		return rev, serial, nil
	}
	serial++
	if serial == 0 {
		serial = 1
	}
	return rev, serial, putUint(meta, keySerial, uint64(serial))
}

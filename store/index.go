package store

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"sync"

	bolt "go.etcd.io/bbolt"
)

// memIndex is the in-memory view of the devices and the zone serial that
// the DNS hot path reads, and the observers of changes, shared by every
// Backend: each feeds it with updateIndex as its changes commit.
type memIndex struct {
	mu        sync.RWMutex
	entries   map[string]entry
	serial    uint32
	observers []func(Change)
}

// entry is the in-memory view of one device for the DNS hot path. A hidden
// entry is one Lookup does not return and Len does not count: a deleted device
// (kept as a tombstone so that a slower, older write cannot resurrect it) or a
// device with DDNS off (see record).
type entry struct {
	rev    uint64
	hidden bool
	rec    Record
	key    *TSIGKey // the device's TSIG key; nil without one, and once deleted
}

// Record is what the DNS server needs to answer for a device: its addresses
// (none while its DDNS switch is off) and the ACME challenge values it
// publishes as TXT at _acme-challenge.<device>, oldest first. The index is
// the zone: a zone transfer that walks it finds every record an answer
// gives. A Record's slices are shared and must not be modified.
type Record struct {
	IPv4, IPv6 netip.Addr
	ACME       []string
}

// ChangeKind says what happened to a device.
type ChangeKind int

// The kinds of Change.
const (
	Created ChangeKind = iota + 1
	Updated
	Deleted // unregistered by the owner or the operator
	Expired // an uninitialized device that was never activated
)

// Change describes one committed change, passed to observers after commit.
type Change struct {
	Kind   ChangeKind
	Device Device // the device after the change (before it, for Deleted and Expired)
	// Before is the device as the change found it; nil when it created it.
	Before *Device
	// Serial is the zone serial this change produced, or 0 when it changed
	// nothing the zone holds (see Resolvable). Each change to the zone bumps
	// the serial by one, so a zone transfer can replay changes in serial
	// order; observers may be called out of that order, by concurrent
	// writers.
	Serial uint32
}

// load fills the index and the serial from the file at Open. Every entry
// takes the file's current revision, which every later write exceeds.
func (s *Store) load() error {
	return s.db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		s.serial = uint32(getUint(meta, keySerial))
		rev := getUint(meta, keyRev)
		return tx.Bucket(bucketDevices).ForEach(func(k, v []byte) error {
			var d Device
			if err := json.Unmarshal(v, &d); err != nil {
				return fmt.Errorf("device %q: %w", k, err)
			}
			s.entries[d.Name] = entryFor(rev, d, false)
			return nil
		})
	})
}

// OnChange registers f to be called after every committed change, in the
// writer's goroutine, once the index shows it. f must not block.
func (s *memIndex) OnChange(f func(Change)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.observers = append(s.observers, f)
}

// Lookup returns the DNS record of a device whose DDNS switch is on, or
// which publishes ACME challenge values (see Resolvable). name must be lower
// case. It reads only memory.
func (s *memIndex) Lookup(name string) (Record, bool) {
	s.mu.RLock()
	e, ok := s.entries[name]
	s.mu.RUnlock()
	if !ok || e.hidden {
		return Record{}, false
	}
	return e.rec, true
}

// LookupBytes is Lookup for a name held as bytes, without making a string
// of it: the DNS fast path's per-query lookup allocates nothing.
func (s *memIndex) LookupBytes(name []byte) (Record, bool) {
	s.mu.RLock()
	e, ok := s.entries[string(name)]
	s.mu.RUnlock()
	if !ok || e.hidden {
		return Record{}, false
	}
	return e.rec, true
}

// Serial returns the zone's SOA serial, bumped by every change to DNS data.
func (s *memIndex) Serial() uint32 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.serial
}

// Len returns the number of devices that currently resolve.
func (s *memIndex) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	n := 0
	for _, e := range s.entries {
		if !e.hidden {
			n++
		}
	}
	return n
}

// Resolvable returns what the zone holds of d (nil: no device): its record,
// and whether the name exists at all. It is the one rule of what resolves:
// a device whose DDNS switch is on, with the addresses it has and the ACME
// challenge values it publishes; and a device with DDNS off while it
// publishes challenge values, with those values and no address (its owner
// is getting a certificate, say for use on the LAN: a CA's resolver that
// finds <device>.<zone> NXDOMAIN stops there, RFC 8020, and never asks for
// _acme-challenge below it). The index, the zone serial (bumped exactly when
// this changes) and zone transfers follow it; a new kind of record per
// device is added to Record and here.
func Resolvable(d *Device) (Record, bool) { return resolvable(d) }

func resolvable(d *Device) (Record, bool) {
	if d == nil {
		return Record{}, false
	}
	rec := Record{ACME: challengeValues(d.ACMEChallenges)}
	if d.DDNS {
		rec.IPv4, rec.IPv6 = d.IPv4, d.IPv6
	}
	return rec, d.DDNS || len(rec.ACME) > 0
}

// Equal reports whether r and o hold the same records.
func (r Record) Equal(o Record) bool {
	return r.IPv4 == o.IPv4 && r.IPv6 == o.IPv6 && slices.Equal(r.ACME, o.ACME)
}

// serialNewer compares SOA serials with RFC 1982 arithmetic.
func serialNewer(a, b uint32) bool { return a != b && int32(a-b) > 0 }

// entryFor is the index entry of d as of revision rev; deleted says that its
// record is gone. The entry holds d's addresses whether DDNS is on or off. A
// device that does not resolve (see Resolvable: DDNS off and no ACME
// challenge value) gets an entry marked hidden: Lookup reports no such name,
// so the DNS server answers NXDOMAIN, and Len does not count it, while Get
// still returns the device with its addresses. Address updates still reach
// the hidden entry but leave the zone serial alone, since no answer and no
// zone transfer changes; switching DDNS either way bumps it. Open builds
// entries the same way, so DDNS off survives a restart.
func entryFor(rev uint64, d Device, deleted bool) entry {
	rec, ok := resolvable(&d)
	if !ok {
		rec = Record{IPv4: d.IPv4, IPv6: d.IPv6}
	}
	e := entry{rev: rev, hidden: deleted || !ok, rec: rec}
	if !deleted {
		e.key = d.TSIGKey
	}
	return e
}

// updateIndex shows a committed write in the index and returns the observers
// to notify once the lock is released. Writers get here after their commits
// but not necessarily in commit order, so an entry only replaces an older one.
func (s *memIndex) updateIndex(name string, c committed) []func(Change) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.entries[name]; !ok || e.rev < c.rev {
		s.entries[name] = entryFor(c.rev, c.device, c.deleted)
	}
	if c.dns && serialNewer(c.serial, s.serial) {
		s.serial = c.serial
	}
	return s.observers
}

package store

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	gojson "github.com/goccy/go-json"

	bolt "go.etcd.io/bbolt"
)

// memIndex is the in-memory view of the devices and the zone serial that
// the DNS hot path reads, and the observers of changes, shared by every
// Backend: each feeds it with updateIndex as its changes commit.
//
// Readers (Lookup, LookupBytes, TSIGKey, Serial, Len) take no lock: they
// load the table and the serial atomically. Writers hold mu. The owner
// stores an empty table (newDevTable) before any use.
type memIndex struct {
	mu        sync.Mutex
	tab       atomic.Pointer[devTable]
	serial    atomic.Uint32
	observers []func(Change)
}

// setEntry makes e the entry of name; the caller holds mu.
func (s *memIndex) setEntry(name string, e entry) {
	t := s.tab.Load()
	if nt := t.set(name, e); nt != t {
		s.tab.Store(nt)
	}
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
// Decoding the records is most of a start-up (a million devices are half
// a gigabyte of JSON), so GOMAXPROCS workers decode them in chunks while
// bbolt's cursor walks the file; the records stay valid while the read
// transaction is open, which it is until every worker is done.
func (s *Store) load() error {
	return s.db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		s.serial.Store(uint32(getUint(meta, keySerial)))
		rev := getUint(meta, keyRev)
		err := decodeIndex(func(chunk func([]byte, []byte) error) error {
			return tx.Bucket(bucketDevices).ForEach(chunk)
		}, func(name string, e entry) {
			s.mu.Lock()
			s.setEntry(name, e)
			s.mu.Unlock()
		}, func([]byte) uint64 { return rev })
		s.tab.Store(s.tab.Load().trimmed())
		return err
	})
}

// indexChunk is how many records one decoding worker takes at a time.
const indexChunk = 512

// decodeIndex decodes every device record that walk yields (key, value)
// into its index entry at the revision rev gives for the key, and hands
// each to add, from GOMAXPROCS goroutines at once. It returns the first
// record that cannot be read, naming it.
func decodeIndex(walk func(func(k, v []byte) error) error, add func(string, entry), rev func(k []byte) uint64) error {
	type record struct{ k, v []byte }
	work := make(chan []record, runtime.GOMAXPROCS(0))
	var (
		wg       sync.WaitGroup
		errMu    sync.Mutex
		firstErr error
	)
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for chunk := range work {
				for _, r := range chunk {
					name, e, err := decodeEntry(r.v, rev(r.k))
					if err != nil {
						errMu.Lock()
						if firstErr == nil {
							firstErr = fmt.Errorf("device %q: %w", r.k, err)
						}
						errMu.Unlock()
						continue
					}
					add(name, e)
				}
			}
		})
	}
	chunk := make([]record, 0, indexChunk)
	err := walk(func(k, v []byte) error {
		chunk = append(chunk, record{k, v})
		if len(chunk) == indexChunk {
			work <- chunk
			chunk = make([]record, 0, indexChunk)
		}
		return nil
	})
	work <- chunk
	close(work)
	wg.Wait()
	if err != nil {
		return err
	}
	return firstErr
}

// decodeIndexFields decodes a record's index fields with goccy/go-json,
// or with encoding/json where goccy refuses it.
func decodeIndexFields(v []byte) (indexFields, error) {
	var f indexFields
	if gojson.Unmarshal(v, &f) == nil {
		return f, nil
	}
	f = indexFields{}
	err := json.Unmarshal(v, &f)
	return f, err
}

// indexFields are the fields of a device record its index entry is made
// of (see entryFor): decoding these alone skips the rest (timestamps,
// hashes, keys), which is most of the time a record takes.
type indexFields struct {
	Name           string          `json:"name"`
	IPv4           netip.Addr      `json:"ipv4,omitzero"`
	IPv6           netip.Addr      `json:"ipv6,omitzero"`
	DDNS           bool            `json:"ddns"`
	ACMEChallenges []ACMEChallenge `json:"acme_challenges,omitempty"`
	TSIGKey        *TSIGKey        `json:"tsig_key,omitempty"`
}

// decodeEntry decodes a device record (JSON, as putDevice writes it) into
// its index entry at revision rev. Most records are read by
// scanIndexFields, which reads the few fields it needs; the others with
// goccy/go-json, which decodes them about three times as fast as
// encoding/json; a record goccy refuses is decoded again by encoding/json,
// whose error, if it has one, is the one reported, and whose result
// stands. A million devices start in about a second rather than several.
func decodeEntry(v []byte, rev uint64) (string, entry, error) {
	f, ok := scanIndexFields(v)
	if !ok {
		var err error
		if f, err = decodeIndexFields(v); err != nil {
			return "", entry{}, err
		}
	}
	// goccy's strings share the copy of the record it decoded from, which
	// the few that the index keeps would hold in memory whole.
	for i := range f.ACMEChallenges {
		f.ACMEChallenges[i].Value = strings.Clone(f.ACMEChallenges[i].Value)
	}
	if f.TSIGKey != nil {
		f.TSIGKey.Algorithm = strings.Clone(f.TSIGKey.Algorithm)
	}
	d := Device{Name: f.Name, IPv4: f.IPv4, IPv6: f.IPv6, DDNS: f.DDNS, ACMEChallenges: f.ACMEChallenges, TSIGKey: f.TSIGKey}
	return d.Name, entryFor(rev, d, false), nil
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
	e, ok := s.tab.Load().get(name)
	if !ok || e.hidden {
		return Record{}, false
	}
	return e.rec, true
}

// LookupBytes is Lookup for a name held as bytes, without making a string
// of it: the DNS fast path's per-query lookup allocates nothing.
func (s *memIndex) LookupBytes(name []byte) (Record, bool) {
	e, ok := s.tab.Load().getBytes(name)
	if !ok || e.hidden {
		return Record{}, false
	}
	return e.rec, true
}

// Serial returns the zone's SOA serial, bumped by every change to DNS data.
func (s *memIndex) Serial() uint32 { return s.serial.Load() }

// Len returns the number of devices that currently resolve.
func (s *memIndex) Len() int { return int(s.tab.Load().visible.Load()) }

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
	if deleted {
		// A tombstone keeps nothing of the device but its revision.
		return entry{rev: rev, hidden: true}
	}
	return entry{rev: rev, hidden: !ok, rec: rec, key: d.TSIGKey}
}

// updateIndex shows a committed write in the index and returns the observers
// to notify once the lock is released. Writers get here after their commits
// but not necessarily in commit order, so an entry only replaces an older one.
func (s *memIndex) updateIndex(name string, c committed) []func(Change) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.tab.Load().get(name); !ok || e.rev < c.rev {
		s.setEntry(name, entryFor(c.rev, c.device, c.deleted))
	}
	if c.dns && serialNewer(c.serial, s.serial.Load()) {
		s.serial.Store(c.serial)
	}
	return s.observers
}

// Package store is the device table: one bbolt file holding device records,
// hashed credentials and the zone serial, plus an in-memory index that the DNS
// hot path reads.
//
// Durability contract: every method that changes data returns only after the
// bbolt transaction holding the change has been committed and fsynced, and after
// the in-memory index shows it. An acknowledged change therefore survives a crash
// and is visible to the very next Lookup.
package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/rs/zerolog"
	bolt "go.etcd.io/bbolt"
)

// SchemaVersion is the version of the on-disk layout this code writes.
const SchemaVersion = 1

// FileName is the name of the database file inside the data directory.
const FileName = "nasreach.db"

var (
	bucketMeta    = []byte("meta")
	bucketDevices = []byte("devices")

	keySchema = []byte("schema")
	keySerial = []byte("serial")
	keyRev    = []byte("rev")
)

// migrations[i] upgrades a database from schema version i+1 to i+2. A new
// layout appends a function here and bumps SchemaVersion.
var migrations = []func(tx *bolt.Tx) error{}

// Config configures Open.
type Config struct {
	// Dir is the data directory; the database is Dir/nasreach.db. Required.
	Dir string
	// Reserved are labels refused as device names in addition to DefaultReserved.
	Reserved []string
	// Now is the clock; nil means time.Now. Tests inject a fake one.
	Now func() time.Time
	// Logger receives store events; the zero value logs nothing.
	Logger zerolog.Logger
	// MaxBatchDelay bounds how long a write waits to share a commit with other
	// writes; zero means 2ms.
	MaxBatchDelay time.Duration
}

// Store is the device table. It is safe for concurrent use.
type Store struct {
	db       *bolt.DB
	reserved []string
	now      func() time.Time
	log      zerolog.Logger

	mu        sync.RWMutex
	index     map[string]entry
	serial    uint32
	observers []func(Change)
}

// entry is the in-memory view of one device for the DNS hot path. Deleted
// entries stay as tombstones so that a slower, older write cannot resurrect them.
type entry struct {
	rev     uint64
	deleted bool
	rec     Record
}

// Record is what the DNS server needs to answer for a device.
type Record struct {
	IPv4, IPv6 netip.Addr
}

// ChangeKind says what happened to a device.
type ChangeKind int

// The kinds of Change.
const (
	Created ChangeKind = iota + 1
	Updated
	Deleted
)

// Change describes one committed change, passed to observers after commit.
type Change struct {
	Kind   ChangeKind
	Device Device // the device after the change (before it, for Deleted)
}

// Open opens (creating if needed) the database in cfg.Dir, migrates it to
// SchemaVersion and loads the in-memory index. Only one process may have the
// file open; a second gets an error after one second.
func Open(cfg Config) (*Store, error) {
	if cfg.Dir == "" {
		return nil, errors.New("store: Config.Dir is required")
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory %s: %w", cfg.Dir, err)
	}
	path := filepath.Join(cfg.Dir, FileName)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("open store %s: the file is locked; is another nasreach running on this data directory? %w", path, err)
		}
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	db.MaxBatchDelay = cfg.MaxBatchDelay
	if db.MaxBatchDelay == 0 {
		db.MaxBatchDelay = 2 * time.Millisecond
	}
	s := &Store{db: db, reserved: cfg.Reserved, now: cfg.Now, log: cfg.Logger, index: map[string]entry{}}
	if s.now == nil {
		s.now = time.Now
	}
	if err := db.Update(s.migrate); err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	if err := s.load(); err != nil {
		db.Close()
		return nil, fmt.Errorf("load store %s: %w", path, err)
	}
	return s, nil
}

func (s *Store) migrate(tx *bolt.Tx) error {
	meta, err := tx.CreateBucketIfNotExists(bucketMeta)
	if err != nil {
		return err
	}
	if _, err := tx.CreateBucketIfNotExists(bucketDevices); err != nil {
		return err
	}
	v := getUint(meta, keySchema)
	if v == 0 { // new file
		putUint(meta, keySerial, 1)
		putUint(meta, keyRev, 1)
		v = SchemaVersion
	}
	if v > SchemaVersion {
		return fmt.Errorf("schema version %d was written by a newer nasreach (this one knows %d)", v, SchemaVersion)
	}
	for ; v < SchemaVersion; v++ {
		if err := migrations[v-1](tx); err != nil {
			return fmt.Errorf("migrate schema %d to %d: %w", v, v+1, err)
		}
	}
	return putUint(meta, keySchema, SchemaVersion)
}

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
			s.index[d.Name] = entry{rev: rev, rec: d.record()}
			return nil
		})
	})
}

// Close closes the database file. Pending writes have already been committed.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close store: %w", err)
	}
	return nil
}

// OnChange registers f to be called after every committed change, in the
// writer's goroutine, once the index shows it. f must not block.
func (s *Store) OnChange(f func(Change)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.observers = append(s.observers, f)
}

// Lookup returns the DNS record of a device whose DDNS switch is on. name must
// be lower case. It reads only memory.
func (s *Store) Lookup(name string) (Record, bool) {
	s.mu.RLock()
	e, ok := s.index[name]
	s.mu.RUnlock()
	if !ok || e.deleted {
		return Record{}, false
	}
	return e.rec, true
}

// Serial returns the zone's SOA serial, bumped by every change to DNS data.
func (s *Store) Serial() uint32 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.serial
}

// Len returns the number of devices that currently resolve.
func (s *Store) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	n := 0
	for _, e := range s.index {
		if !e.deleted {
			n++
		}
	}
	return n
}

// record is the DNS view of d: nothing when DDNS is off.
func (d Device) record() Record {
	return Record{IPv4: d.IPv4, IPv6: d.IPv6}
}

func (d Device) resolves() bool { return d.DDNS }

// CreateOptions are the optional settings of a new device.
type CreateOptions struct {
	// State is the initial state; empty means StateActive.
	State State
}

// Create registers a new device and returns it with its token, which is not
// stored and cannot be shown again.
func (s *Store) Create(ctx context.Context, name string, opts CreateOptions) (Device, string, error) {
	name = NormalizeName(name)
	if err := ValidateName(name, s.reserved); err != nil {
		return Device{}, "", err
	}
	if opts.State == "" {
		opts.State = StateActive
	}
	if err := (Patch{State: &opts.State}).validate(); err != nil {
		return Device{}, "", err
	}
	token, err := NewToken()
	if err != nil {
		return Device{}, "", err
	}
	now := s.now().UTC()
	d := Device{
		Name: name, TokenSHA256: HashToken(token),
		DDNS: true, Link: true, Access: AccessPublic, State: opts.State,
		Created: now, Updated: now,
	}
	err = s.write(ctx, name, Created, func(cur *Device) (*Device, bool, error) {
		if cur != nil {
			return nil, false, fmt.Errorf("%q: %w", name, ErrExists)
		}
		return &d, true, nil
	})
	if err != nil {
		return Device{}, "", err
	}
	return d, token, nil
}

// Get returns a device by name (any case).
func (s *Store) Get(name string) (Device, error) {
	name = NormalizeName(name)
	var d Device
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketDevices).Get([]byte(name))
		if v == nil {
			return fmt.Errorf("%q: %w", name, ErrNotFound)
		}
		return json.Unmarshal(v, &d)
	})
	return d, err
}

// List returns all devices sorted by name.
func (s *Store) List() ([]Device, error) {
	var out []Device
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketDevices).ForEach(func(_, v []byte) error {
			var d Device
			if err := json.Unmarshal(v, &d); err != nil {
				return err
			}
			out = append(out, d)
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, err
}

// dummyHash is compared against when a device does not exist, so that an
// unknown name costs the same as a wrong token.
var dummyHash = HashToken("nasreach-no-such-device")

// Authenticate checks a device token in constant time and returns the device.
// Unknown devices and wrong tokens give the same ErrBadCredentials.
func (s *Store) Authenticate(name, token string) (Device, error) {
	d, err := s.Get(name)
	want := d.TokenSHA256
	if err != nil {
		want = dummyHash
	}
	got := HashToken(token)
	if subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 || err != nil {
		return Device{}, ErrBadCredentials
	}
	return d, nil
}

// SetAddress sets a device's WAN addresses. changed reports whether anything
// differs from before; an unchanged update writes nothing.
func (s *Store) SetAddress(ctx context.Context, name string, u AddressUpdate) (d Device, changed bool, err error) {
	if u.IPv4.IsValid() && !u.IPv4.Unmap().Is4() {
		return Device{}, false, fmt.Errorf("ipv4 %s: %w: not an IPv4 address", u.IPv4, ErrInvalid)
	}
	if u.IPv6.IsValid() && (!u.IPv6.Is6() || u.IPv6.Is4In6()) {
		return Device{}, false, fmt.Errorf("ipv6 %s: %w: not an IPv6 address", u.IPv6, ErrInvalid)
	}
	u.IPv4, u.IPv6 = u.IPv4.Unmap(), u.IPv6.WithZone("")
	err = s.write(ctx, NormalizeName(name), Updated, func(cur *Device) (*Device, bool, error) {
		if cur == nil {
			return nil, false, fmt.Errorf("%q: %w", name, ErrNotFound)
		}
		nd := *cur
		switch {
		case u.IPv4.IsValid():
			nd.IPv4 = u.IPv4
		case u.ClearIPv4:
			nd.IPv4 = netip.Addr{}
		}
		switch {
		case u.IPv6.IsValid():
			nd.IPv6 = u.IPv6
		case u.ClearIPv6:
			nd.IPv6 = netip.Addr{}
		}
		changed = nd.IPv4 != cur.IPv4 || nd.IPv6 != cur.IPv6
		d = nd
		if !changed {
			return nil, false, nil
		}
		nd.Updated = s.now().UTC()
		d = nd
		return &nd, true, nil
	})
	return d, changed, err
}

// Update applies p to a device and returns the result.
func (s *Store) Update(ctx context.Context, name string, p Patch) (Device, error) {
	if err := p.validate(); err != nil {
		return Device{}, err
	}
	var d Device
	err := s.write(ctx, NormalizeName(name), Updated, func(cur *Device) (*Device, bool, error) {
		if cur == nil {
			return nil, false, fmt.Errorf("%q: %w", name, ErrNotFound)
		}
		nd := *cur
		if p.DDNS != nil {
			nd.DDNS = *p.DDNS
		}
		if p.Link != nil {
			nd.Link = *p.Link
		}
		if p.Access != nil {
			nd.Access = *p.Access
		}
		if p.State != nil {
			nd.State = *p.State
		}
		d = nd
		if nd == *cur {
			return nil, false, nil
		}
		nd.Updated = s.now().UTC()
		d = nd
		return &nd, nd.DDNS != cur.DDNS, nil
	})
	return d, err
}

// Delete removes a device and everything stored about it in one transaction.
// The name stops resolving before Delete returns.
func (s *Store) Delete(ctx context.Context, name string) error {
	name = NormalizeName(name)
	return s.write(ctx, name, Deleted, func(cur *Device) (*Device, bool, error) {
		if cur == nil {
			return nil, false, fmt.Errorf("%q: %w", name, ErrNotFound)
		}
		return nil, true, nil
	})
}

// mutation decides the new state of one device. It gets the current record
// (nil if none) and returns the record to store (nil to store nothing; a
// Deleted write deletes the record whatever it returns), and whether DNS data
// changed. It may run several times (a read-only check first, then bbolt may
// retry a batch) and must have no effect other than what it returns.
type mutation func(cur *Device) (next *Device, dnsChanged bool, err error)

// write runs m in a batched, fsynced transaction, then updates the index and
// notifies observers. A mutation that changes nothing (an unchanged address, an
// error) is decided in a read-only transaction and costs no commit.
func (s *Store) write(ctx context.Context, name string, kind ChangeKind, m mutation) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var noop bool
	err := s.db.View(func(tx *bolt.Tx) error {
		cur, err := readDevice(tx.Bucket(bucketDevices), name)
		if err != nil {
			return err
		}
		next, _, err := m(cur)
		noop = next == nil && kind != Deleted
		return err
	})
	if err != nil || noop {
		return err
	}
	var (
		rev     uint64
		serial  uint32
		wrote   bool
		stored  Device
		dnsDiff bool
	)
	err = s.db.Batch(func(tx *bolt.Tx) error {
		wrote, dnsDiff = false, false
		b := tx.Bucket(bucketDevices)
		cur, err := readDevice(b, name)
		if err != nil {
			return err
		}
		next, dnsChanged, err := m(cur)
		if err != nil {
			return err
		}
		if kind == Deleted {
			if err := b.Delete([]byte(name)); err != nil {
				return err
			}
			stored = *cur
		} else if next == nil {
			return nil // nothing to change
		} else {
			buf, err := json.Marshal(next)
			if err != nil {
				return err
			}
			if err := b.Put([]byte(name), buf); err != nil {
				return err
			}
			stored = *next
		}
		meta := tx.Bucket(bucketMeta)
		rev = getUint(meta, keyRev) + 1
		if err := putUint(meta, keyRev, rev); err != nil {
			return err
		}
		serial = uint32(getUint(meta, keySerial))
		if dnsChanged {
			serial++
			if serial == 0 {
				serial = 1
			}
			if err := putUint(meta, keySerial, uint64(serial)); err != nil {
				return err
			}
		}
		wrote, dnsDiff = true, dnsChanged
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
		ne := entry{rev: rev, deleted: kind == Deleted || !stored.resolves(), rec: stored.record()}
		s.index[name] = ne
	}
	if dnsDiff && serialNewer(serial, s.serial) {
		s.serial = serial
	}
	observers := s.observers
	s.mu.Unlock()
	for _, f := range observers {
		f(Change{Kind: kind, Device: stored})
	}
	return nil
}

func readDevice(b *bolt.Bucket, name string) (*Device, error) {
	v := b.Get([]byte(name))
	if v == nil {
		return nil, nil
	}
	d := new(Device)
	if err := json.Unmarshal(v, d); err != nil {
		return nil, fmt.Errorf("device %q is unreadable: %w", name, err)
	}
	return d, nil
}

// serialNewer compares SOA serials with RFC 1982 arithmetic.
func serialNewer(a, b uint32) bool { return a != b && int32(a-b) > 0 }

// NewToken returns a fresh device token: 192 random bits, URL-safe base64.
func NewToken() (string, error) {
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generate token: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// HashToken returns the stored form of a token. A fast hash is enough: tokens
// are random and long, so there is nothing to brute-force from the hash.
func HashToken(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

func getUint(b *bolt.Bucket, k []byte) uint64 {
	v := b.Get(k)
	if len(v) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

func putUint(b *bolt.Bucket, k []byte, v uint64) error {
	var buf [8]byte
	binary.BigEndian.PutUint64(buf[:], v)
	return b.Put(k, buf[:])
}

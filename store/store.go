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
	"bytes"
	"cmp"
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
	"io"
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
	bucketMeta       = []byte("meta")
	bucketDevices    = []byte("devices")
	bucketQuarantine = []byte("quarantine")
	// bucketAccessCodes holds "<device>/<id>" -> AccessCode JSON.
	bucketAccessCodes = []byte("access_codes")

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
	// Quarantine is how long a deleted device's name stays unavailable, so that
	// nobody takes over a name clients still resolve. Zero means
	// DefaultQuarantine; negative disables it.
	Quarantine time.Duration
	// UninitializedTTL is how long an uninitialized device lives unless it is
	// activated. Zero means DefaultUninitializedTTL.
	UninitializedTTL time.Duration
	// SweepEvery is how often expired records are removed in the background;
	// zero means one minute, negative disables the background sweeper (call
	// Sweep yourself).
	SweepEvery time.Duration
}

// Lifecycle defaults.
const (
	DefaultQuarantine       = 24 * time.Hour
	DefaultUninitializedTTL = 24 * time.Hour
)

// Store is the device table. It is safe for concurrent use.
type Store struct {
	db       *bolt.DB
	reserved []string
	now      func() time.Time
	log      zerolog.Logger

	quarantine time.Duration
	uninitTTL  time.Duration
	stop       chan struct{}
	done       chan struct{}

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
	Deleted // unregistered by the owner or the operator
	Expired // an uninitialized device that was never activated
)

// Change describes one committed change, passed to observers after commit.
type Change struct {
	Kind   ChangeKind
	Device Device // the device after the change (before it, for Deleted and Expired)
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
	s := &Store{
		db: db, reserved: cfg.Reserved, now: cfg.Now, log: cfg.Logger, index: map[string]entry{},
		quarantine: cfg.Quarantine, uninitTTL: cfg.UninitializedTTL,
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.quarantine == 0 {
		s.quarantine = DefaultQuarantine
	}
	if s.uninitTTL <= 0 {
		s.uninitTTL = DefaultUninitializedTTL
	}
	if err := db.Update(s.migrate); err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	if err := s.load(); err != nil {
		db.Close()
		return nil, fmt.Errorf("load store %s: %w", path, err)
	}
	if cfg.SweepEvery >= 0 {
		every := cmp.Or(cfg.SweepEvery, time.Minute)
		s.stop, s.done = make(chan struct{}), make(chan struct{})
		go s.sweeper(every)
	}
	return s, nil
}

func (s *Store) migrate(tx *bolt.Tx) error {
	meta, err := tx.CreateBucketIfNotExists(bucketMeta)
	if err != nil {
		return err
	}
	for _, b := range [][]byte{bucketDevices, bucketQuarantine, bucketAccessCodes} {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return err
		}
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
			s.index[d.Name] = entry{rev: rev, deleted: !d.resolves(), rec: d.record()}
			return nil
		})
	})
}

// Close stops the sweeper and closes the database file. Every acknowledged
// write has already been committed.
func (s *Store) Close() error {
	if s.stop != nil {
		close(s.stop)
		<-s.done
		s.stop = nil
	}
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
// stored and cannot be shown again. A name deleted less than the quarantine
// ago is refused with ErrQuarantined.
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
	err = s.write(ctx, name, Created, func(cur *Device) (outcome, error) {
		if cur != nil {
			return outcome{}, fmt.Errorf("%q: %w", name, ErrExists)
		}
		return outcome{put: &d, dns: true}, nil
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
		cur, err := readDevice(tx.Bucket(bucketDevices), name)
		if err == nil && cur == nil {
			err = fmt.Errorf("%q: %w", name, ErrNotFound)
		}
		if err == nil {
			d = *cur
		}
		return err
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
	err = s.write(ctx, NormalizeName(name), Updated, func(cur *Device) (outcome, error) {
		if cur == nil {
			return outcome{}, fmt.Errorf("%q: %w", name, ErrNotFound)
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
			return outcome{}, nil
		}
		nd.Updated = s.now().UTC()
		d = nd
		return outcome{put: &nd, dns: true}, nil
	})
	return d, changed, err
}

// Update applies p to a device and returns the result.
func (s *Store) Update(ctx context.Context, name string, p Patch) (Device, error) {
	if err := p.validate(); err != nil {
		return Device{}, err
	}
	var d Device
	err := s.write(ctx, NormalizeName(name), Updated, func(cur *Device) (outcome, error) {
		if cur == nil {
			return outcome{}, fmt.Errorf("%q: %w", name, ErrNotFound)
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
			return outcome{}, nil
		}
		nd.Updated = s.now().UTC()
		d = nd
		return outcome{put: &nd, dns: nd.DDNS != cur.DDNS}, nil
	})
	return d, err
}

// SetPublicKey records the device's public key (base64 DER, as published by
// the agent). An unchanged key writes nothing.
func (s *Store) SetPublicKey(ctx context.Context, name, key string) (Device, error) {
	if key == "" || len(key) > MaxPublicKeyLen {
		return Device{}, fmt.Errorf("public key: %w: must be 1 to %d characters", ErrInvalid, MaxPublicKeyLen)
	}
	var d Device
	err := s.write(ctx, NormalizeName(name), Updated, func(cur *Device) (outcome, error) {
		if cur == nil {
			return outcome{}, fmt.Errorf("%q: %w", name, ErrNotFound)
		}
		d = *cur
		if cur.PublicKey == key {
			return outcome{}, nil
		}
		nd := *cur
		nd.PublicKey, nd.Updated = key, s.now().UTC()
		d = nd
		return outcome{put: &nd}, nil
	})
	return d, err
}

// AddAccessCode issues a new Link access code for a device and returns its
// id and the code, which is not stored and cannot be shown again.
func (s *Store) AddAccessCode(ctx context.Context, name string) (id, code string, err error) {
	if code, err = NewToken(); err != nil {
		return "", "", err
	}
	idTok, err := NewToken()
	if err != nil {
		return "", "", err
	}
	name = NormalizeName(name)
	ac := AccessCode{ID: idTok[:8], SHA256: HashToken(code), Created: s.now().UTC()}
	buf, err := json.Marshal(ac)
	if err != nil {
		return "", "", err
	}
	err = s.write(ctx, name, Updated, func(cur *Device) (outcome, error) {
		if cur == nil {
			return outcome{}, fmt.Errorf("%q: %w", name, ErrNotFound)
		}
		return outcome{tx: func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketAccessCodes)
			if n := countPrefix(b, name+"/"); n >= MaxAccessCodes {
				return fmt.Errorf("%q: %w: at most %d access codes; revoke one first", name, ErrInvalid, MaxAccessCodes)
			}
			return b.Put([]byte(name+"/"+ac.ID), buf)
		}}, nil
	})
	if err != nil {
		return "", "", err
	}
	return ac.ID, code, nil
}

// AccessCodes lists a device's access codes (hashes only), oldest first.
func (s *Store) AccessCodes(name string) ([]AccessCode, error) {
	name = NormalizeName(name)
	var out []AccessCode
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketAccessCodes).Cursor()
		prefix := []byte(name + "/")
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var ac AccessCode
			if err := json.Unmarshal(v, &ac); err != nil {
				return fmt.Errorf("access code %q is unreadable: %w", k, err)
			}
			out = append(out, ac)
		}
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, err
}

// RevokeAccessCode deletes one access code; it stops working at once.
func (s *Store) RevokeAccessCode(ctx context.Context, name, id string) error {
	name = NormalizeName(name)
	key := []byte(name + "/" + id)
	return s.write(ctx, name, Updated, func(cur *Device) (outcome, error) {
		if cur == nil {
			return outcome{}, fmt.Errorf("%q: %w", name, ErrNotFound)
		}
		return outcome{tx: func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketAccessCodes)
			if b.Get(key) == nil {
				return fmt.Errorf("access code %q of %q: %w", id, name, ErrNotFound)
			}
			return b.Delete(key)
		}}, nil
	})
}

// CheckAccessCode reports whether code is one of the device's access codes,
// comparing in constant time against each.
func (s *Store) CheckAccessCode(name, code string) bool {
	codes, err := s.AccessCodes(name)
	if err != nil {
		return false
	}
	h := []byte(HashToken(code))
	ok := 0
	for _, a := range codes {
		ok |= subtle.ConstantTimeCompare(h, []byte(a.SHA256))
	}
	return ok == 1
}

func countPrefix(b *bolt.Bucket, prefix string) int {
	n := 0
	c := b.Cursor()
	for k, _ := c.Seek([]byte(prefix)); k != nil && bytes.HasPrefix(k, []byte(prefix)); k, _ = c.Next() {
		n++
	}
	return n
}

// deletePrefix deletes every key of b that starts with prefix.
func deletePrefix(b *bolt.Bucket, prefix string) error {
	var keys [][]byte
	c := b.Cursor()
	for k, _ := c.Seek([]byte(prefix)); k != nil && bytes.HasPrefix(k, []byte(prefix)); k, _ = c.Next() {
		keys = append(keys, bytes.Clone(k))
	}
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// Delete removes a device and everything stored about it in one transaction,
// and quarantines its name (only the name and the time are kept, until the
// quarantine ends). The name stops resolving before Delete returns.
func (s *Store) Delete(ctx context.Context, name string) error {
	name = NormalizeName(name)
	return s.write(ctx, name, Deleted, func(cur *Device) (outcome, error) {
		if cur == nil {
			return outcome{}, fmt.Errorf("%q: %w", name, ErrNotFound)
		}
		return outcome{del: true, dns: true}, nil
	})
}

// Sweep removes uninitialized devices older than the uninitialized TTL (with
// all their data, and without quarantine: they never had an owner) and
// quarantine entries that have ended. The background sweeper calls it; tests
// call it with a fake clock.
func (s *Store) Sweep(ctx context.Context) (expired int, err error) {
	now := s.now()
	var names []string
	err = s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketDevices).ForEach(func(k, v []byte) error {
			var d Device
			if err := json.Unmarshal(v, &d); err != nil {
				return fmt.Errorf("device %q is unreadable: %w", k, err)
			}
			if s.expired(d, now) {
				names = append(names, d.Name)
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
			return outcome{del: true, dns: true}, nil
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
	err = s.db.Update(func(tx *bolt.Tx) error {
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
	if err != nil {
		return expired, fmt.Errorf("sweep quarantine: %w", err)
	}
	return expired, nil
}

func (s *Store) expired(d Device, now time.Time) bool {
	return d.State == StateUninitialized && !now.Before(d.Created.Add(s.uninitTTL))
}

// quarantined reports whether a quarantine entry (the deletion time) is
// still in force at now.
func (s *Store) quarantined(v []byte, now time.Time) bool {
	if len(v) != 8 || s.quarantine < 0 {
		return false
	}
	deleted := time.Unix(0, int64(binary.BigEndian.Uint64(v)))
	return now.Before(deleted.Add(s.quarantine))
}

func (s *Store) sweeper(every time.Duration) {
	defer close(s.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			if _, err := s.Sweep(context.Background()); err != nil {
				s.log.Error().Err(err).Msg("store sweep failed")
			}
		}
	}
}

// Size returns the size of the database file in bytes.
func (s *Store) Size() int64 {
	var n int64
	_ = s.db.View(func(tx *bolt.Tx) error { n = tx.Size(); return nil })
	return n
}

// Ping returns an error unless the database is open and readable.
func (s *Store) Ping() error {
	if err := s.db.View(func(*bolt.Tx) error { return nil }); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}

// Backup writes a consistent snapshot of the whole database to w while writes
// go on, and returns its size. The snapshot is a bbolt file that Open accepts.
func (s *Store) Backup(w io.Writer) (int64, error) {
	var n int64
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		n, err = tx.WriteTo(w)
		return err
	})
	if err != nil {
		return n, fmt.Errorf("backup: %w", err)
	}
	return n, nil
}

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

// checkQuarantine refuses a name whose quarantine is still in force.
func (s *Store) checkQuarantine(tx *bolt.Tx, name string) error {
	v := tx.Bucket(bucketQuarantine).Get([]byte(name))
	if v != nil && s.quarantined(v, s.now()) {
		free := time.Unix(0, int64(binary.BigEndian.Uint64(v))).Add(s.quarantine).UTC()
		return fmt.Errorf("%q: %w until %s", name, ErrQuarantined, free.Format(time.RFC3339))
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

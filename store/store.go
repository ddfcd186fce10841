// Package store is the device table: one bbolt file holding device records,
// hashed credentials and the zone serial, plus an in-memory index that the DNS
// hot path reads.
//
// Durability contract: every method that changes data returns only after the
// bbolt transaction holding the change has been committed and fsynced, and after
// the in-memory index shows it. An acknowledged change therefore survives a crash
// and is visible to the very next Lookup. Code outside the package depends on
// Backend, which states the contract for any implementation; *Store is the
// bbolt one.
package store

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	bolt "go.etcd.io/bbolt"
)

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
	// FullCheck runs bbolt's consistency check of every page at Open (see
	// Check), which takes longer on a large store. The quick checks always
	// run.
	FullCheck bool
	// ProbeEvery is how often, after a commit failed, the store tries an
	// empty commit to learn whether it can commit again (see Ping); zero
	// means DefaultProbeEvery.
	ProbeEvery time.Duration
}

// withDefaults returns c with the clock and the lifecycle durations that
// mean "the default" (see Config) set to it: every Backend reads them so.
func (c Config) withDefaults() Config {
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Quarantine == 0 {
		c.Quarantine = DefaultQuarantine
	}
	if c.UninitializedTTL <= 0 {
		c.UninitializedTTL = DefaultUninitializedTTL
	}
	return c
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
	stop       chan struct{}  // closed by Close
	background sync.WaitGroup // the sweeper and the commit prober

	failure atomic.Pointer[commitFailure] // the failed commit Ping reports, until a probe succeeds

	memIndex
}

// Open opens the database in cfg.Dir, migrates it to SchemaVersion and loads
// the in-memory index. A new database is created only where no file exists:
// an existing file is first checked (see Check) and, if it is damaged or
// empty, left as it is and refused with a *DamagedError. Only one process
// may have the file open; a second gets an error after one second.
func Open(cfg Config) (*Store, error) {
	if cfg.Dir == "" {
		return nil, errors.New("store: Config.Dir is required")
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory %s: %w", cfg.Dir, err)
	}
	path := filepath.Join(cfg.Dir, FileName)
	if err := createIfAbsent(path); err != nil {
		return nil, err
	}
	report, err := Check(path, cfg.FullCheck)
	if err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	s := &Store{
		reserved: cfg.Reserved, now: cfg.Now, log: cfg.Logger,
		quarantine: cfg.Quarantine, uninitTTL: cfg.UninitializedTTL, stop: make(chan struct{}),
	}
	s.tab.Store(newDevTable(report.Devices)) // sized for the devices the check counted
	if err := guard(func() error { return s.open(path, cmp.Or(cfg.MaxBatchDelay, 2*time.Millisecond)) }); err != nil {
		if s.db != nil {
			s.db.Close()
		}
		return nil, damaged(path, err)
	}
	if cfg.SweepEvery >= 0 {
		s.background.Go(func() { s.every(cmp.Or(cfg.SweepEvery, time.Minute), s.sweep) })
	}
	s.background.Go(func() { s.every(cmp.Or(cfg.ProbeEvery, DefaultProbeEvery), s.probeIfFailing) })
	return s, nil
}

// open opens the checked file for writing (never creating it), migrates it
// if it needs it and loads the index. A current file is not written to, so
// that the daemon starts, and serves what it has, on a full disk.
func (s *Store) open(path string, maxBatchDelay time.Duration) error {
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout: time.Second,
		OpenFile: func(name string, flag int, perm os.FileMode) (*os.File, error) {
			return os.OpenFile(name, flag&^os.O_CREATE, perm)
		},
	})
	if errors.Is(err, bolt.ErrTimeout) {
		return errLocked()
	}
	if err != nil {
		return err
	}
	s.db = db
	db.MaxBatchDelay = maxBatchDelay
	if !s.current() {
		if err := s.transact(db.Update, s.migrate); err != nil {
			return err
		}
	}
	if err := s.load(); err != nil {
		return damagef("a device record is unreadable: %v", err)
	}
	releaseMapped(db)
	return nil
}

// createIfAbsent makes a new, empty database at path when no file is there.
// It builds it under a temporary name and links it into place, so that path
// never holds a half-made file and an existing file is never replaced: not
// even an empty one, which is a damaged store rather than no store.
func createIfAbsent(path string) error {
	if _, err := os.Lstat(path); err == nil {
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("store %s: %w", path, err)
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+FileName+".new-*")
	if err != nil {
		return fmt.Errorf("create store %s: %w", path, err)
	}
	name := tmp.Name()
	defer os.Remove(name) // once linked, path keeps the file
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("create store %s: %w", path, err)
	}
	db, err := bolt.Open(name, 0o600, &bolt.Options{Timeout: time.Second}) // writes the first pages and fsyncs
	if err != nil {
		return fmt.Errorf("create store %s: %w", path, err)
	}
	if err := db.Close(); err != nil {
		return fmt.Errorf("create store %s: %w", path, err)
	}
	if err := os.Link(name, path); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create store %s: %w", path, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("create store %s: %w", path, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("create store %s: sync directory: %w", path, err)
	}
	return nil
}

// Close stops the sweeper and the prober and closes the database file.
// Every acknowledged write has already been committed.
func (s *Store) Close() error {
	if s.stop != nil {
		close(s.stop)
		s.background.Wait()
		s.stop = nil
	}
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close store: %w", err)
	}
	return nil
}

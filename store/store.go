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
	"os"
	"path/filepath"
	"sync"
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

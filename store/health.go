package store

import (
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// DefaultProbeEvery is how often a store whose last commit failed tries
// again; see Ping.
const DefaultProbeEvery = 5 * time.Second

// probeMinFree is the free space the data directory's file system needs
// before a probe commit is tried. A commit that reuses free pages of the file
// can succeed on a full disk while the next one, which grows the file,
// fails; the probe waits for room to grow.
const probeMinFree = 1 << 20

// commitFailure is a failed commit, which Ping reports until a probe commit
// succeeds.
type commitFailure struct {
	err   error
	since time.Time
}

// Ping returns an error unless the database is open and readable and can
// commit: after a commit fails (a full disk, an I/O error) it says so, with
// the error and since when, until a probe commit succeeds. Probes run every
// Config.ProbeEvery once the file system has room again; a write that
// succeeds meanwhile does not end the failure, so that readiness does not
// flap while some writes fit and others do not.
func (s *Store) Ping() error {
	if err := s.db.View(func(*bolt.Tx) error { return nil }); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if f := s.failure.Load(); f != nil {
		return fmt.Errorf("store cannot commit since %s: %w", f.since.UTC().Format(time.RFC3339), f.err)
	}
	return nil
}

// transact runs fn in a writable transaction through run (the database's
// Update or Batch) and notes a failure of the commit itself, as opposed to
// an error fn returns, for Ping.
func (s *Store) transact(run func(func(*bolt.Tx) error) error, fn func(*bolt.Tx) error) error {
	var fnFailed bool // as decided by fn's last run: bbolt may run it more than once
	err := run(func(tx *bolt.Tx) error {
		err := fn(tx)
		fnFailed = err != nil
		return err
	})
	if err != nil && !fnFailed && !errors.Is(err, bolt.ErrDatabaseNotOpen) {
		f := &commitFailure{err: err, since: s.now()}
		if s.failure.CompareAndSwap(nil, f) {
			s.log.Error().Err(err).Msg("store cannot commit; changes are refused until it can")
		}
	}
	return err
}

// probeIfFailing probes while the last commit failed; the background runs
// it every Config.ProbeEvery.
func (s *Store) probeIfFailing() {
	if f := s.failure.Load(); f != nil {
		s.probe(f)
	}
}

// probe ends the commit failure f if the file system has room and an empty
// commit (which rewrites the free list and a meta page, and fsyncs)
// succeeds.
func (s *Store) probe(f *commitFailure) {
	if free, ok := freeSpace(s.db.Path()); ok && free < probeMinFree {
		return
	}
	if err := s.db.Update(func(*bolt.Tx) error { return nil }); err != nil {
		return
	}
	if s.failure.CompareAndSwap(f, nil) { // not if a write failed meanwhile
		s.log.Info().Msg("store commits again")
	}
}

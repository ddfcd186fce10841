package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime/debug"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// ErrDamaged is wrapped by every error that says a store file is damaged:
// truncated, zeroed, empty or with garbage pages. Such a file is never
// modified or replaced.
var ErrDamaged = errors.New("store file is damaged")

// ErrLocked says another process has the store file open for writing: a
// running nasreach.
var ErrLocked = errors.New("the file is locked")

// errLocked is the error for a file another process holds.
func errLocked() error {
	return fmt.Errorf("%w by another process; is nasreach running on this data directory?", ErrLocked)
}

// DamagedError says what is wrong with a store file, for the operator.
type DamagedError struct {
	Path    string
	Problem string // what is wrong, e.g. "the file is empty (0 bytes)"
}

func (e *DamagedError) Error() string {
	return fmt.Sprintf("store %s is damaged: %s; nasreach will not modify or replace it: "+
		"restore a backup (a snapshot from nasreach backup) or move it away to start with no devices", e.Path, e.Problem)
}

// Is makes errors.Is(err, ErrDamaged) true.
func (e *DamagedError) Is(target error) bool { return target == ErrDamaged }

// Report is what Check found in a sound store file.
type Report struct {
	Path      string
	Bytes     int64  // the file's size
	PageSize  int    // bbolt's page size
	Pages     uint64 // pages in use (the high-water mark), free ones included
	FreePages int
	TxID      uint64 // the last committed transaction
	Schema    uint64 // the layout version; 0 for a file never opened by Open
	Devices   int
	// AccessCodes and Quarantined count those buckets' entries.
	AccessCodes, Quarantined int
	// Full says bbolt's consistency check ran and every device record was
	// decoded.
	Full bool
}

// Check inspects the store file at path without changing it and reports
// what it holds, or why nasreach cannot use it (a *DamagedError, or
// ErrLocked while another process has it open for writing). It always
// checks the file's size, both meta pages, the root and free list pages,
// and reads every page reachable from the root; full adds bbolt's
// consistency check (every page accounted for exactly once) and decodes
// every device record, which takes longer on a large store. Open runs it
// before it opens the file for writing.
func Check(path string, full bool) (Report, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Report{}, fmt.Errorf("store %s does not exist (serve creates it on its first start): %w", path, fs.ErrNotExist)
	}
	if err != nil {
		return Report{}, fmt.Errorf("store %s: %w", path, err)
	}
	defer f.Close() // and with it the lock
	if err := lockShared(f, time.Second); err != nil {
		return Report{}, fmt.Errorf("store %s: %w", path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		return Report{}, fmt.Errorf("store %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return Report{}, fmt.Errorf("store %s is not a regular file (%s)", path, fi.Mode().Type())
	}
	h, err := readHeader(f, fi.Size())
	if err != nil {
		return Report{}, damaged(path, err)
	}
	r := Report{
		Path: path, Bytes: fi.Size(), PageSize: int(h.pageSize), Pages: h.pages, FreePages: h.free, TxID: h.txid,
		Full: full,
	}
	if err := guard(func() error { return readAll(path, full, &r) }); err != nil {
		return Report{}, damaged(path, err)
	}
	return r, nil
}

// damaged turns a damage error into a *DamagedError naming path; other
// errors only gain the path.
func damaged(path string, err error) error {
	var d damage
	if errors.As(err, &d) {
		return &DamagedError{Path: path, Problem: string(d)}
	}
	return fmt.Errorf("store %s: %w", path, err)
}

// readAll opens the file read-only with bbolt and reads every page reachable
// from the root (and with full, runs bbolt's check and decodes every
// device), counting what the report shows.
func readAll(path string, full bool, r *Report) error {
	var file *os.File // bbolt's, to close if bbolt panics before it returns
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		ReadOnly: true, Timeout: time.Second,
		OpenFile: func(name string, flag int, perm os.FileMode) (*os.File, error) {
			f, err := os.OpenFile(name, flag, perm)
			file = f
			return f, err
		},
	})
	defer func() {
		if db != nil {
			db.Close()
		} else if file != nil {
			file.Close()
		}
	}()
	switch {
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrVersionMismatch), errors.Is(err, berrors.ErrChecksum):
		return damagef("bbolt refuses it: %v", err)
	case err != nil:
		return err
	}
	return db.View(func(tx *bolt.Tx) error {
		if err := readBuckets(tx, full, r); err != nil {
			return err
		}
		if !full {
			return nil
		}
		var errs []error
		for err := range tx.Check() {
			errs = append(errs, err)
		}
		if len(errs) > 0 {
			return damagef("bbolt's consistency check found %d problems, the first: %v (damaged pages)", len(errs), errs[0])
		}
		return nil
	})
}

// readBuckets reads every key and value of every bucket, which makes bbolt
// visit every page reachable from the root, and counts nasreach's records.
func readBuckets(tx *bolt.Tx, full bool, r *Report) error {
	var sum byte // the bytes are read, not only their slices taken
	var read func(b *bolt.Bucket, top string) error
	read = func(b *bolt.Bucket, top string) error {
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			sum += touch(k) + touch(v)
			if v == nil {
				if sub := b.Bucket(k); sub != nil {
					if err := read(sub, top); err != nil {
						return err
					}
				}
				continue
			}
			switch top {
			case string(bucketDevices):
				r.Devices++
				if full {
					var d Device
					if err := json.Unmarshal(v, &d); err != nil {
						return damagef("device %q is unreadable: %v", k, err)
					}
				}
			case string(bucketAccessCodes):
				r.AccessCodes++
			case string(bucketQuarantine):
				r.Quarantined++
			}
		}
		return nil
	}
	err := tx.ForEach(func(name []byte, b *bolt.Bucket) error { return read(b, string(name)) })
	if m := tx.Bucket(bucketMeta); m != nil {
		r.Schema = getUint(m, keySchema)
	}
	return err
}

// touch reads one byte of every page b spans (and its last), which makes
// the kernel map each of them in, or fault where the file ends early,
// without the cost of reading all of it (a checksum of a million devices'
// records took a fifth of a second). Not inlined, so that the compiler
// cannot find its result unused and drop the reads.
//
//go:noinline
func touch(b []byte) byte {
	var sum byte
	for i := 0; i < len(b); i += 1024 {
		sum += b[i]
	}
	if len(b) > 0 {
		sum += b[len(b)-1]
	}
	return sum
}

// guard runs f, which reads a store file through bbolt, and turns what bbolt
// does with a damaged file into a damage error: it panics on a page it does
// not expect, and where a page points outside the file its reads fault
// (SIGBUS, SIGSEGV), which this goroutine turns into a panic too.
func guard(f func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		p := recover()
		if _, fault := p.(interface{ Addr() uintptr }); fault {
			err = damage("a page points outside the file, where reading it faults (truncated or garbage pages)")
		} else if p != nil {
			err = damagef("reading its pages failed: %v (garbage pages)", p)
		}
	}()
	return f()
}

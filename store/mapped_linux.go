package store

import (
	"syscall"

	bolt "go.etcd.io/bbolt"
)

// releaseMapped takes the pages of the store's file out of this process's
// resident memory. Loading the index at Open, and each sweep after it, read
// every device through bbolt's mapping of the file, while DNS answers come
// from the index alone: without this the whole file (about 650 bytes a
// device) would stay resident for nothing. The pages stay in the page cache,
// shared and reclaimable, and come back on their own when a write or an API
// read touches them: the mapping is read-only and shared, so MADV_DONTNEED
// loses nothing. It runs inside a read transaction, which keeps bbolt from
// remapping the file meanwhile (a remap waits for every reader), and only
// over the part of the mapping the transaction sees. Best effort: a failure
// changes only memory use.
func releaseMapped(db *bolt.DB) {
	db.View(func(tx *bolt.Tx) error { //nolint:errcheck // best effort
		if n := tx.Size(); n > 0 {
			syscall.Syscall(syscall.SYS_MADVISE, db.Info().Data, uintptr(n), syscall.MADV_DONTNEED) //nolint:errcheck // best effort
		}
		return nil
	})
}

//go:build !unix

package store

import (
	"os"
	"time"
)

// Elsewhere (Windows) the store takes no lock of its own before bbolt's and
// cannot tell free space: the checks and the probe go on without them.

// lockShared does nothing; bbolt's read-only open still locks the file.
func lockShared(*os.File, time.Duration) error { return nil }

// freeSpace cannot tell.
func freeSpace(string) (int64, bool) { return 0, false }

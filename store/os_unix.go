//go:build unix

package store

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// What the store asks of a Unix system: a lock on its file and the free
// space of its file system.

// lockShared takes a shared lock on f, as bbolt does for a read-only open:
// it waits up to timeout while another process (a running nasreach) holds
// the exclusive lock of an open for writing.
func lockShared(f *os.File, timeout time.Duration) error {
	raw, err := f.SyscallConn()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for {
		var lockErr error
		if err := raw.Control(func(fd uintptr) {
			lockErr = syscall.Flock(int(fd), syscall.LOCK_SH|syscall.LOCK_NB)
		}); err != nil {
			return err
		}
		switch {
		case lockErr == nil:
			return nil
		case errors.Is(lockErr, syscall.EINTR):
			continue
		case !errors.Is(lockErr, syscall.EWOULDBLOCK):
			return fmt.Errorf("lock: %w", lockErr)
		case time.Now().After(deadline):
			return errLocked()
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// freeSpace returns the bytes available to this process on the file system
// that holds path; ok is false when the system cannot tell.
func freeSpace(path string) (free int64, ok bool) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return 0, false
	}
	return int64(st.Bavail) * int64(st.Bsize), true
}

//go:build unix

package daemon

import "syscall"

// processFileLimit is the process's file limit (the soft RLIMIT_NOFILE,
// which Go raises to the hard one at start), or DefaultFileLimit.
func processFileLimit() uint64 {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil || r.Cur == 0 {
		return DefaultFileLimit
	}
	return uint64(r.Cur)
}

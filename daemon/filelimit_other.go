//go:build !unix

package daemon

// processFileLimit is DefaultFileLimit where there is no RLIMIT_NOFILE.
func processFileLimit() uint64 { return DefaultFileLimit }

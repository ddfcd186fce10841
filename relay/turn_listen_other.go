//go:build !unix

package relay

import "syscall"

// reusePortSupported says whether several sockets can share a port here.
const reusePortSupported = false

// reusePort does nothing here; NewTURN opens one socket per listener.
func reusePort(_, _ string, _ syscall.RawConn) error { return nil }

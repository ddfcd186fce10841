//go:build !unix

package turnserver

import "syscall"

// reusePortSupported says whether several sockets can share a port here.
const reusePortSupported = false

// reusePort does nothing here; New opens one socket per listener.
func reusePort(_, _ string, _ syscall.RawConn) error { return nil }

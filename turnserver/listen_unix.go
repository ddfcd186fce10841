//go:build unix

package turnserver

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// reusePortSupported says whether several sockets can share a port here.
const reusePortSupported = true

// reusePort sets SO_REUSEPORT so that several sockets of this process share
// one port.
func reusePort(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	})
	if err != nil {
		return err
	}
	return serr
}

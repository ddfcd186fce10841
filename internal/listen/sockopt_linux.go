package listen

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// ReusePortSupported says whether several sockets can share a port here.
const ReusePortSupported = true

func setReusePort(fd uintptr) {
	unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) //nolint:errcheck // Listen reports EADDRINUSE if it did not take
}

// setBuffers asks for size bytes of receive and send buffer. SO_*BUFFORCE
// passes net.core.rmem_max/wmem_max with CAP_NET_ADMIN; otherwise the plain
// options are capped there without an error, so the granted size is read
// back (the kernel reports twice what it granted).
func setBuffers(fd uintptr, size int) error {
	for _, o := range []struct{ force, plain int }{{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}, {unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}} {
		if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o.force, size); err != nil {
			if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o.plain, size); err != nil {
				return fmt.Errorf("ask for %d bytes: %w", size, err)
			}
		}
		if got, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, o.plain); err == nil && got/2 < size {
			return fmt.Errorf("the kernel granted %d of %d bytes (raise net.core.rmem_max and wmem_max)", got/2, size)
		}
	}
	return nil
}

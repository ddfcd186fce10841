//go:build !linux

package listen

// ReusePortSupported says whether several sockets can share a port here.
const ReusePortSupported = false

func setReusePort(uintptr) {}

// setBuffers leaves the kernel's default buffers on systems without the
// options Linux has.
func setBuffers(uintptr, int) error { return nil }

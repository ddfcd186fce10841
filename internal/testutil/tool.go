package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// sbinDirs are searched after PATH: programs such as inadyn live in
// /usr/sbin, which a non-root PATH often lacks.
var sbinDirs = []string{"/usr/sbin", "/sbin", "/usr/local/sbin"}

// NeedTool returns the path of name, a third-party program the test drives
// (ddclient, dig, coturn's utilities…), looked up in PATH and then in the
// sbin directories. When it is missing the test is skipped with a message
// saying which program is missing and how to install it; under CI (the CI
// environment variable set), where `make test-deps` installs every such
// program, a missing one fails the test instead.
func NeedTool(t testing.TB, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range sbinDirs {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return p
		}
	}
	const msg = "%s is not installed; `make test-deps` installs the Debian packages the tests drive (TEST_DEBS in the Makefile and mk/*.mk)"
	if os.Getenv("CI") != "" {
		t.Fatalf(msg, name)
	}
	t.Skipf(msg, name)
	return ""
}

// startOnFreePort runs the program that command makes for a loopback port
// free a moment ago, until it accepts TCP connections on 127.0.0.1:port,
// and returns the port. A program that takes its port from its
// configuration can find it taken by then and exit: startOnFreePort tries
// three ports. The program is killed when the test ends, and its output
// logged if the test failed.
func startOnFreePort(t testing.TB, name string, command func(port int) *exec.Cmd) int {
	t.Helper()
	for range 3 {
		port := freePort(t)
		var out Buffer
		cmd := command(port)
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatalf("start %s: %v", name, err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }() //nolint:errcheck // killed at cleanup
		t.Cleanup(func() {
			cmd.Process.Kill() //nolint:errcheck // may have exited
			<-exited
			if t.Failed() {
				t.Logf("%s's output:\n%s", name, out.String())
			}
		})
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		if waitListening(addr, exited, 20*time.Second) {
			return port
		}
		select {
		case <-exited: // its port was taken: try another
		default:
			t.Fatalf("%s does not accept connections on %s after 20 s:\n%s", name, addr, out.String())
		}
	}
	t.Fatalf("%s exited at start three times (its port taken?)", name)
	return 0
}

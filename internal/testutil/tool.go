package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
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

package testutil

import (
	"os/exec"
	"path/filepath"
	"testing"
)

// BuildNasreach compiles the nasreach binary into a temporary directory and
// returns its path, for the tests that run the real binary (systemd notify,
// the NAT lab). It skips the test when there is no go tool in PATH.
func BuildNasreach(t testing.TB) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go tool in PATH to build the daemon: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "nasreach")
	out, err := exec.Command(goTool, "build", "-o", bin, "github.com/nasreach/nasreach/cmd/nasreach").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

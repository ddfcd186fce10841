package testutil

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// StartUnbound runs Unbound (Debian's unbound) as a recursive resolver on a
// free loopback port that sends every query to the authoritative server at
// authAddr (HOST:PORT), as a CA's validation resolver reaches a zone's
// nameservers: with EDNS, and again over TCP when an answer comes truncated.
// It caches nothing, so every question reaches authAddr. It returns the
// resolver's address and stops it when the test ends. The test is skipped,
// or fails under CI, when unbound is not installed (NeedTool).
func StartUnbound(t testing.TB, authAddr string) string {
	t.Helper()
	bin := NeedTool(t, "unbound")
	host, port, err := net.SplitHostPort(authAddr)
	if _, perr := strconv.Atoi(port); err == nil && perr != nil {
		err = perr
	}
	if err != nil {
		t.Fatalf("unbound upstream %q: %v", authAddr, err)
	}
	dir := t.TempDir()
	own := startOnFreePort(t, "unbound", func(own int) *exec.Cmd {
		// The directives are unbound.conf(5)'s. No chroot, no user change,
		// no DNSSEC validation (the test zone is unsigned), no cache (a
		// challenge value set a moment ago must be seen), queries to
		// loopback allowed (the zone's server is there).
		cfg := fmt.Sprintf(`server:
	interface: 127.0.0.1@%d
	port: %d
	do-ip6: no
	access-control: 127.0.0.0/8 allow
	do-not-query-localhost: no
	username: ""
	chroot: ""
	directory: %q
	pidfile: ""
	use-syslog: no
	logfile: ""
	verbosity: 1
	module-config: "iterator"
	qname-minimisation: no
	cache-max-ttl: 0
	cache-max-negative-ttl: 0
	num-threads: 1
	so-reuseport: no
remote-control:
	control-enable: no
forward-zone:
	name: "."
	forward-addr: %s@%s
`, own, own, dir, host, port)
		cfgFile := filepath.Join(dir, "unbound.conf")
		if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "-d", "-c", cfgFile)
		cmd.Env = ToolEnv()
		return cmd
	})
	return fmt.Sprintf("127.0.0.1:%d", own)
}

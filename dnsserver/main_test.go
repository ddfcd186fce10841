package dnsserver

import (
	"flag"
	"fmt"
	"os"
	"testing"
)

// noFastPath is set while the package's tests run the second time: every
// test runs once with the UDP fast path (as the daemon serves) and once
// without (miekg/dns reads every packet), so that each behaviour it asserts
// holds on both paths.
var noFastPath bool

func TestMain(m *testing.M) {
	code := m.Run()
	if code != 0 || !fastPathSupported || !secondRun() {
		os.Exit(code)
	}
	fmt.Println("dnsserver: the same tests with the UDP fast path off")
	noFastPath = true
	os.Exit(m.Run())
}

// secondRun says whether this run is one to repeat: not a fuzzing worker,
// a listing or a benchmark run.
func secondRun() bool {
	for _, f := range []string{"test.fuzz", "test.fuzzworker", "test.list", "test.bench"} {
		if v := flag.Lookup(f); v != nil && v.Value.String() != "" && v.Value.String() != "false" {
			return false
		}
	}
	return true
}

// newTestServer is New with the fast path on or off as this run says.
func newTestServer(cfg Config) (*Server, error) {
	cfg.NoFastPath = cfg.NoFastPath || noFastPath
	return New(cfg)
}

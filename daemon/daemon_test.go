package daemon_test

import (
	"strings"
	"testing"

	"github.com/nasreach/nasreach/daemon"
	"github.com/nasreach/nasreach/daemon/daemontest"
)

func TestStartFailureIsAnErrorNotACrash(t *testing.T) {
	td := daemontest.Start(t)
	// The second daemon's DNS port is taken by the first.
	_, err := daemon.New(daemon.Config{DataDir: t.TempDir(), Zone: "myqnapcloud.com", DNSAddr: td.DNS, HTTPAddr: "127.0.0.1:0"})
	if err == nil || !strings.Contains(err.Error(), td.DNS) {
		t.Fatalf("starting on a taken port: %v, want an error naming %s", err, td.DNS)
	}
}

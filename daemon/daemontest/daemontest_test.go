package daemontest_test

import (
	"testing"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/daemon/daemontest"
)

func TestHarnessServesAndRestarts(t *testing.T) {
	td := daemontest.Start(t)
	td.AddDevice("nas1")
	if r := td.Query("udp", "nas1.myqnapcloud.com", dns.TypeA); r.Rcode != dns.RcodeSuccess {
		t.Fatalf("nas1 before restart: %s", dns.RcodeToString[r.Rcode])
	}
	td.Restart()
	if r := td.Query("tcp", "nas1.myqnapcloud.com", dns.TypeA); r.Rcode != dns.RcodeSuccess {
		t.Fatalf("nas1 after restart: %s", dns.RcodeToString[r.Rcode])
	}
}

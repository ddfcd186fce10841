package dnsserver

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestValidateReportsEveryProblem checks that a config with several mistakes
// is refused with all of them named, so the operator fixes them in one go,
// and that the mistakes config check used to pass are among them.
func TestValidateReportsEveryProblem(t *testing.T) {
	cfg := Config{
		Zone: "bad..zone",
		TTL:  8 * 24 * time.Hour,
		NameServers: []NameServer{
			{Name: "ns1"}, // in the zone, no address: no glue
			{Name: "ns..2", Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.2")}},
		},
	}
	err := cfg.Validate()
	if err == nil {
		t.Fatal("Validate accepted a zone with an empty label")
	}
	for _, want := range []string{`zone "bad..zone" is not a domain name`, "TTL 192h0m0s out of range", `nameserver "ns..2" is not a domain name`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %q\nwant it to say %q", err, want)
		}
	}

	cfg = Config{Zone: "nas.example.net", NameServers: []NameServer{{Name: "ns1"}}}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "ns1.nas.example.net. is inside the zone and needs its address for glue (ns1=IP)") {
		t.Errorf("in-zone nameserver without an address: Validate() = %v", err)
	}

	cfg = Config{Zone: "nas.example.net", NameServers: []NameServer{
		{Name: "ns1", Addrs: []netip.Addr{netip.MustParseAddr("203.0.113.53")}},
		{Name: "ns.other.example"}, // out of zone: no glue needed
	}}
	if err := cfg.Validate(); err != nil {
		t.Errorf("a good config: Validate() = %v", err)
	}
}

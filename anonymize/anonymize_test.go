package anonymize

import (
	"net/netip"
	"testing"
)

func TestAddrMasksHostPart(t *testing.T) {
	cases := []struct{ in, want string }{
		{"198.51.100.77", "198.51.100.0"},
		{"203.0.113.255", "203.0.113.0"},
		{"::ffff:198.51.100.77", "198.51.100.0"},
		{"2001:db8:1234:5678:9abc::1", "2001:db8:1234::"},
		{"fe80::1%eth0", "fe80::"},
	}
	for _, c := range cases {
		if got := Addr(netip.MustParseAddr(c.in)).String(); got != c.want {
			t.Errorf("Addr(%s) = %s, want %s", c.in, got, c.want)
		}
	}
}

func TestStringMasksAddrPortAndRejectsJunk(t *testing.T) {
	cases := []struct{ in, want string }{
		{"198.51.100.77:4242", "198.51.100.0"},
		{"[2001:db8:1:2::3]:53", "2001:db8:1::"},
		{"2001:db8:1:2::3", "2001:db8:1::"},
		{"not an address 198.51.100.77", "unknown"},
	}
	for _, c := range cases {
		if got := String(c.in); got != c.want {
			t.Errorf("String(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

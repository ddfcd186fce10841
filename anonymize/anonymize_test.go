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

func TestTextMasksEveryAddressAndEmail(t *testing.T) {
	cases := []struct{ in, want string }{
		{"client 198.51.100.77 connected", "client 198.51.100.0 connected"},
		{"from 198.51.100.77:4242 to [2001:db8:1:2::3]:443", "from 198.51.100.0:4242 to [2001:db8:1::]:443"},
		{"mapped ::ffff:203.0.113.9 seen", "mapped 203.0.113.0 seen"},
		{"write to alice.smith+nas@example.org please", "write to [email] please"},
		{"at 10:20:30 nothing to mask", "at 10:20:30 nothing to mask"},
		{"version 1.2.3 and 999.1.1.1", "version 1.2.3 and [addr]"},
		{"odd 1.2.3.4.5.6 run", "odd [addr] run"},
		{"sentence ends at 192.0.2.77.", "sentence ends at 192.0.2.0."},
		{"hex 0xdeadbeef and cafe stay", "hex 0xdeadbeef and cafe stay"},
		{"two 192.0.2.1,192.0.2.2", "two 192.0.2.0,192.0.2.0"},
	}
	for _, c := range cases {
		if got := Text(c.in); got != c.want {
			t.Errorf("Text(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestTextBitsKeepsConfiguredIPv6Prefix(t *testing.T) {
	in := "peer 2001:db8:aaaa:bbbb:cccc::1"
	for _, c := range []struct {
		bits int
		want string
	}{{32, "peer 2001:db8::"}, {48, "peer 2001:db8:aaaa::"}, {64, "peer 2001:db8:aaaa:bbbb::"}, {128, "peer 2001:db8:aaaa:bbbb::"}} {
		if got := TextBits(in, c.bits); got != c.want {
			t.Errorf("TextBits(%d) = %q, want %q", c.bits, got, c.want)
		}
	}
}

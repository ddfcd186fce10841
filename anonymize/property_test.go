package anonymize

import (
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
)

// randomAddr returns a random IPv4 or IPv6 address from r.
func randomAddr(r *rand.Rand) netip.Addr {
	if r.IntN(2) == 0 {
		var b [4]byte
		for i := range b {
			b[i] = byte(r.UintN(256))
		}
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	for i := range b {
		b[i] = byte(r.UintN(256))
	}
	return netip.AddrFrom16(b)
}

func TestMaskingProperties(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		a := randomAddr(r)
		m := Addr(a)
		if Addr(m) != m {
			t.Fatalf("masking is not idempotent: %s -> %s -> %s", a, m, Addr(m))
		}
		if a.Is4() {
			// Every address in the same /24 masks to the same value.
			b := a.As4()
			b[3] = byte(r.UintN(256))
			if Addr(netip.AddrFrom4(b)) != m {
				t.Fatalf("%s and %s are in one /24 but mask differently", a, netip.AddrFrom4(b))
			}
			if m.As4()[3] != 0 {
				t.Fatalf("Addr(%s) = %s keeps the host octet", a, m)
			}
		} else if !a.Is4In6() {
			b := m.As16()
			for _, x := range b[6:] {
				if x != 0 {
					t.Fatalf("Addr(%s) = %s keeps bits beyond /48", a, m)
				}
			}
		}
		// In free text the original never survives when it had a host part.
		text := "seen " + a.String() + " and [" + a.String() + "]:443"
		out := Text(text)
		if m != a.Unmap() && strings.Contains(out, a.String()) {
			t.Fatalf("Text(%q) = %q still contains the address", text, out)
		}
		if Text(out) != out {
			t.Fatalf("Text is not idempotent on %q: %q", out, Text(out))
		}
	}
}

func FuzzText(f *testing.F) {
	for _, s := range []string{
		"client 198.51.100.77 connected", "[2001:db8::1]:53", "::ffff:10.1.2.3", "a@b.example",
		"fe80::1%eth0 x", "1.2.3.4.5.6", "::", "0:0:0:0:0:0:0:0", "999.999.999.999", "12:34:56",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := Text(s)
		if again := Text(out); again != out {
			t.Fatalf("not idempotent: %q -> %q -> %q", s, out, again)
		}
		// Every address the output still contains is already masked.
		for _, m := range runRE.FindAllString(out, -1) {
			if a, err := netip.ParseAddr(strings.TrimRight(m, ".:")); err == nil && Addr(a) != a.WithZone("") {
				t.Fatalf("Text(%q) = %q leaves unmasked %s", s, out, m)
			}
			if dottedRE.MatchString(m) {
				host, _, _ := strings.Cut(strings.TrimRight(m, ".:"), ":")
				if a, err := netip.ParseAddr(host); err != nil || Addr(a) != a {
					t.Fatalf("Text(%q) = %q leaves dotted numbers %s", s, out, m)
				}
			}
		}
		if strings.Contains(out, "@") && emailRE.MatchString(out) {
			t.Fatalf("Text(%q) = %q leaves an e-mail address", s, out)
		}
	})
}

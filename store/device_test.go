package store_test

import (
	"encoding/base64"
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/nasreach/nasreach/store"
)

func TestValidateNameFollowsDNSLabelRules(t *testing.T) {
	cases := []struct {
		name    string
		want    error  // nil, ErrInvalidName or ErrReserved
		because string // a word the operator must see in the message
	}{
		{"a", nil, ""},
		{"0", nil, ""},
		{"nas1", nil, ""},
		{"my-nas", nil, ""},
		{"xn--bcher-kva", nil, ""},
		{strings.Repeat("a", 63), nil, ""},
		{"", store.ErrInvalidName, "1 to 63"},
		{strings.Repeat("a", 64), store.ErrInvalidName, "1 to 63"},
		{"-nas", store.ErrInvalidName, "start or end"},
		{"nas-", store.ErrInvalidName, "start or end"},
		{"-", store.ErrInvalidName, "start or end"},
		{"nas_1", store.ErrInvalidName, "only letters"},
		{"nas.box", store.ErrInvalidName, "only letters"},
		{"nas 1", store.ErrInvalidName, "only letters"},
		{"nås", store.ErrInvalidName, "only letters"},
		{"nas\x00", store.ErrInvalidName, "only letters"},
		// Nothing outside ASCII is folded: the Kelvin sign is not a k.
		{"nas\u212a", store.ErrInvalidName, "punycode form xn--"},
		{"m\u00fcller", store.ErrInvalidName, `here "xn--mller-kva"`},
		{"caf\u00e9-" + strings.Repeat("x", 60), store.ErrInvalidName, "punycode"}, // too long as well: the IDN hint is the useful one
		{"nas\xff", store.ErrInvalidName, "not valid IDNA"},
		// xn-- labels are IDNA A-labels, checked as such.
		{"xn--mller-kva", nil, ""},
		{"xn--55qx5d", nil, ""},
		{"xn--", store.ErrInvalidName, "not valid IDNA (punycode)"},
		{"xn--zz", store.ErrInvalidName, "not valid IDNA (punycode)"},
		{"xn--nas-", store.ErrInvalidName, "not valid IDNA (punycode)"},  // decodes to plain ASCII
		{"xn--a-ecp", store.ErrInvalidName, "not valid IDNA (punycode)"}, // decodes to a disallowed character
		// Names browsers, proxies and mail software give a meaning to.
		{"localhost", store.ErrReserved, "reserved"},
		{"wpad", store.ErrReserved, "reserved"},
		{"isatap", store.ErrReserved, "reserved"},
		{"autodiscover", store.ErrReserved, "reserved"},
		{"autoconfig", store.ErrReserved, "reserved"},
		{"mta-sts", store.ErrReserved, "reserved"},
		{"openpgpkey", store.ErrReserved, "reserved"},
		{"hostmaster", store.ErrReserved, "reserved"},
		{"postmaster", store.ErrReserved, "reserved"},
		{"webmaster", store.ErrReserved, "reserved"},
		{"abuse", store.ErrReserved, "reserved"},
		{"administrator", store.ErrReserved, "reserved"},
		{"ns1", store.ErrReserved, "reserved"},
		{"ns2", store.ErrReserved, "reserved"},
		{"www", store.ErrReserved, "reserved"},
		{"_acme-challenge", store.ErrReserved, "reserved"},
		{"_dmarc", store.ErrReserved, "reserved"},
		{"_", store.ErrReserved, "reserved"},
		{"mail", store.ErrReserved, "reserved"}, // from the configured list below
	}
	for _, c := range cases {
		err := store.ValidateName(c.name, []string{"mail", "admin"})
		if c.want == nil {
			if err != nil {
				t.Errorf("ValidateName(%q) = %v, want nil", c.name, err)
			}
			continue
		}
		if !errors.Is(err, c.want) {
			t.Errorf("ValidateName(%q) = %v, want %v", c.name, err, c.want)
			continue
		}
		// A name outside ASCII is shown escaped, so that a look-alike is
		// visible as what it is.
		if msg := err.Error(); !strings.Contains(msg, c.because) || !strings.Contains(msg, strconv.QuoteToASCII(c.name)) {
			t.Errorf("ValidateName(%q) message %q should name the label and say %q", c.name, msg, c.because)
		}
	}
}

func TestNewTokenIsLongRandomAndURLSafe(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		tok, err := store.NewToken()
		if err != nil {
			t.Fatal(err)
		}
		raw, err := base64.RawURLEncoding.DecodeString(tok)
		if err != nil {
			t.Fatalf("token %q is not unpadded URL-safe base64: %v", tok, err)
		}
		if len(raw)*8 < 128 {
			t.Fatalf("token %q carries %d bits, want at least 128", tok, len(raw)*8)
		}
		if seen[tok] {
			t.Fatalf("token %q generated twice", tok)
		}
		seen[tok] = true
	}
}

func TestHashTokenIsStableHexAndHidesTheToken(t *testing.T) {
	tok, err := store.NewToken()
	if err != nil {
		t.Fatal(err)
	}
	h := store.HashToken(tok)
	if h != store.HashToken(tok) {
		t.Fatal("HashToken is not deterministic")
	}
	if len(h) != 64 || strings.Trim(h, "0123456789abcdef") != "" {
		t.Fatalf("HashToken = %q, want 64 lower-case hex digits", h)
	}
	if strings.Contains(h, tok) || h == store.HashToken(tok+"x") {
		t.Fatalf("HashToken(%q) = %q does not hide or distinguish the token", tok, h)
	}
}

func TestNormalizeNameLowerCasesOnlyASCII(t *testing.T) {
	for in, want := range map[string]string{
		"NAS1": "nas1", "My-Nas": "my-nas", "nas1": "nas1", "XN--MLLER-KVA": "xn--mller-kva",
		"NAS\u212a": "nas\u212a", "M\u00dcller": "m\u00dcller", "\u0130": "\u0130", "": "",
	} {
		if got := store.NormalizeName(in); got != want {
			t.Errorf("NormalizeName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestValidateAddressRefusesWhatReachesNoHost(t *testing.T) {
	cases := []struct {
		ip      string
		because string // "" for a publishable address
	}{
		{"203.0.113.7", ""},
		{"2001:db8::7", ""},
		{"10.0.0.2", ""},   // a LAN-only name
		{"fd00::2", ""},    // ULA, the same
		{"127.0.0.1", ""},  // a set-up on one machine
		{"::1", ""},        // the same
		{"100.64.0.1", ""}, // CGNAT: reachable from the carrier's network
		{"0.0.0.0", "unspecified"},
		{"0.1.2.3", "unspecified"},
		{"::", "unspecified"},
		{"255.255.255.255", "broadcast"},
		{"224.0.0.1", "multicast"},
		{"239.1.2.3", "multicast"},
		{"ff02::1", "multicast"},
		{"169.254.1.1", "link-local"},
		{"fe80::1", "link-local"},
		{"240.0.0.1", "reserved"},
		{"2001:db8::1%eth0", "zone"},
		{"fe80::1%eth0", "zone"},
	}
	for _, c := range cases {
		err := store.ValidateAddress(netip.MustParseAddr(c.ip))
		switch {
		case c.because == "" && err != nil:
			t.Errorf("ValidateAddress(%s) = %v, want nil", c.ip, err)
		case c.because == "":
		case !errors.Is(err, store.ErrInvalid) || !strings.Contains(err.Error(), c.because):
			t.Errorf("ValidateAddress(%s) = %v, want ErrInvalid saying %q", c.ip, err, c.because)
		case strings.Contains(err.Error(), "eth0"):
			t.Errorf("ValidateAddress(%s) = %v: the zone is the sender's free text and stays out of the message", c.ip, err)
		}
	}
	if err := store.ValidateAddress(netip.Addr{}); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("ValidateAddress(zero) = %v, want ErrInvalid", err)
	}
}

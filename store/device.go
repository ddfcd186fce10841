package store

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"

	"github.com/nasreach/nasreach/record"
)

// The record types are defined once in package record, shared with the API
// client; the store uses them under these names.
type (
	// Device is everything the service stores about one device.
	Device = record.Device
	// Access says who may open a Link session to a device.
	Access = record.Access
	// State is the lifecycle state of a device record.
	State = record.State
	// AccessCode is one Link access code a device issued; only its hash is kept.
	AccessCode = record.AccessCode
	// ACMEChallenge is one ACME DNS-01 challenge value a device publishes.
	ACMEChallenge = record.ACMEChallenge
)

// The access modes and states, as in package record.
const (
	AccessPublic       = record.AccessPublic
	AccessToken        = record.AccessToken
	StateActive        = record.StateActive
	StateUninitialized = record.StateUninitialized
)

// MaxAccessCodes bounds the access codes one device may hold.
const MaxAccessCodes = 32

// MaxPublicKeyLen bounds a published public key (base64 of a DER key).
const MaxPublicKeyLen = 2048

// Errors callers branch on. Each is wrapped with context when returned.
var (
	// ErrNotFound means no device has that name.
	ErrNotFound = errors.New("no such device")
	// ErrExists means the name is already registered.
	ErrExists = errors.New("name is already taken")
	// ErrInvalidName means the name is not a valid DNS label.
	ErrInvalidName = errors.New("invalid device name")
	// ErrReserved means the name is valid but kept back by the service.
	ErrReserved = errors.New("name is reserved")
	// ErrBadCredentials means the device/token pair did not match. It is also
	// returned for unknown devices so that callers cannot tell the two apart.
	ErrBadCredentials = errors.New("bad credentials")
	// ErrQuarantined means the name was deleted recently and is not free yet.
	ErrQuarantined = errors.New("name was deleted recently and is quarantined")
	// ErrInvalid means a field value was refused; the wrapping error names it.
	ErrInvalid = errors.New("invalid value")
	// ErrUnavailable means the store could not read or commit now (etcd has
	// no quorum or cannot be reached); nothing was changed unless the error
	// says the change is committed. The API answers it with 503.
	ErrUnavailable = errors.New("the device table is unavailable")
)

// DefaultReserved are the labels no device may take whatever the
// configuration says: names that the zone itself, browsers, proxies and mail
// software give a meaning to, so that whoever held one could speak for the
// zone's operator or catch traffic meant for somebody else. Labels starting
// with '_' (SRV, DKIM, DMARC, ACME …) are refused by a rule of their own.
var DefaultReserved = []string{
	// The zone's own nameserver and web names (the daemon adds the in-zone
	// nameserver labels it is configured with).
	"ns1", "ns2", "www",
	// The label of ACME DNS-01 challenges for the zone.
	"_acme-challenge",
	// RFC 6761 §6.3: software treats localhost as the machine itself, and
	// browsers resolve *.localhost to loopback; a localhost.<zone> that any
	// device controls breaks that assumption.
	"localhost",
	// Proxy and router auto-discovery: browsers and Windows look up
	// wpad.<search domain> for a proxy configuration and isatap.<search
	// domain> for an IPv6 router (both on Microsoft's global query block
	// list); the holder would see the traffic of every machine that has the
	// zone as its search domain.
	"wpad", "isatap",
	// Mail client and server auto-configuration for addresses @<zone>:
	// Outlook's autodiscover, Thunderbird's autoconfig, the MTA-STS policy
	// host (RFC 8461) and the OpenPGP Web Key Directory host.
	"autodiscover", "autoconfig", "mta-sts", "openpgpkey",
	// Role names read as the operator: hostmaster is the mailbox of the
	// zone's SOA (hostmaster.<zone>), postmaster, webmaster and abuse are the
	// role mailboxes of RFC 2142, and admin, administrator, webmaster,
	// hostmaster and postmaster are the addresses certificate authorities
	// write to for domain validation (CA/Browser Forum BR 3.2.2.4.4).
	"hostmaster", "postmaster", "webmaster", "abuse", "admin", "administrator",
}

// ValidateName returns nil if name (already normalized, see NormalizeName) is
// a DNS label a device may register: 1–63 of a–z, 0–9 and '-', not starting or
// ending with '-', not starting with '_' and not in DefaultReserved or
// reserved. A label starting with "xn--" is an internationalized name in
// punycode and must be valid IDNA (its Unicode form valid for registration
// and encoding back to the same label). Anything else outside ASCII is
// refused rather than folded: the stored name is always the label that
// resolves, and a client that means an internationalized name sends its
// punycode form.
func ValidateName(name string, reserved []string) error {
	isName := func(r string) bool { return NormalizeName(r) == name }
	if strings.HasPrefix(name, "_") || slices.Contains(DefaultReserved, name) || slices.ContainsFunc(reserved, isName) {
		return fmt.Errorf("%q: %w for the service", name, ErrReserved)
	}
	if strings.ContainsFunc(name, func(r rune) bool { return r >= utf8.RuneSelf }) {
		return fmt.Errorf("%+q: %w: only letters a-z, digits and '-' are allowed; %s", name, ErrInvalidName, punycodeHint(name))
	}
	if len(name) == 0 || len(name) > 63 {
		return fmt.Errorf("%q: %w: must be 1 to 63 characters", name, ErrInvalidName)
	}
	for _, c := range []byte(name) {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return fmt.Errorf("%q: %w: only letters a-z, digits and '-' are allowed", name, ErrInvalidName)
		}
	}
	if strings.HasPrefix(name, "xn--") {
		// RFC 5891 §5.4: an A-label must decode to a valid U-label that
		// encodes back to exactly the same A-label.
		u, err := idna.Registration.ToUnicode(name)
		if a, err2 := idna.Registration.ToASCII(u); err != nil || err2 != nil || a != name {
			return fmt.Errorf("%q: %w: not valid IDNA (punycode); an xn-- label must be the punycode form of an internationalized name", name, ErrInvalidName)
		}
		return nil
	}
	if name[0] == '-' || name[len(name)-1] == '-' {
		return fmt.Errorf("%q: %w: must not start or end with '-'", name, ErrInvalidName)
	}
	return nil
}

// punycodeHint tells the sender of a non-ASCII name what to send instead: its
// punycode form when it is a valid internationalized label.
func punycodeHint(name string) string {
	const hint = "an internationalized (IDN) name must be sent in its punycode form xn--…"
	if a, err := idna.Registration.ToASCII(name); err == nil && strings.HasPrefix(a, "xn--") {
		return fmt.Sprintf("%s, here %q", hint, a)
	}
	return hint + "; this one is not valid IDNA"
}

// NormalizeName lower-cases the ASCII letters of a name for lookup; names
// compare case-insensitively. Nothing outside ASCII is folded: strings.ToLower
// would turn the Kelvin sign into k and register "nask" for a name nobody
// typed.
func NormalizeName(name string) string {
	b := []byte(name)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// ValidateAddress returns nil if ip may be published as a device's address,
// else an error wrapping ErrInvalid that says why. Refused are the addresses
// that reach no host or not the device from elsewhere: the unspecified
// address and 0.0.0.0/8, broadcast, multicast, link-local (only meaningful on
// the device's own link), 240.0.0.0/4 (reserved, not routed) and any address
// with a zone. Private and loopback addresses are published: a LAN-only name
// and a test set-up on one machine are legitimate uses, and what /v1/ip tells
// a client on loopback. The REST API and dyndns2 both end up here.
func ValidateAddress(ip netip.Addr) error {
	why := ""
	switch {
	case !ip.IsValid():
		why = "not an address"
	case ip.Zone() != "":
		why = "an address with a zone (after %) only has a meaning on one host"
	case ip.IsUnspecified() || thisNetwork.Contains(ip):
		why = "the unspecified (this-network) address names no host"
	case ip == broadcast:
		why = "the broadcast address names no host"
	case ip.IsMulticast():
		why = "a multicast address names a group, not a host"
	case ip.IsLinkLocalUnicast():
		why = "a link-local address only reaches the device from its own link"
	case classE.Contains(ip):
		why = "240.0.0.0/4 is reserved and not routed"
	default:
		return nil
	}
	// The zone is left out of the message: it is the sender's free text.
	return fmt.Errorf("%s: %w: %s", ip.WithZone(""), ErrInvalid, why)
}

var (
	thisNetwork = netip.MustParsePrefix("0.0.0.0/8")
	classE      = netip.MustParsePrefix("240.0.0.0/4")
	broadcast   = netip.MustParseAddr("255.255.255.255")
)

// AddressUpdate sets the WAN addresses of a device. A zero address leaves that
// family as it is unless the matching Clear flag is set.
type AddressUpdate struct {
	IPv4, IPv6           netip.Addr
	ClearIPv4, ClearIPv6 bool
}

// Patch changes a device's switches; nil fields are left as they are.
type Patch struct {
	DDNS   *bool
	Link   *bool
	Access *Access
	State  *State
}

func (p Patch) validate() error {
	if p.Access != nil && *p.Access != AccessPublic && *p.Access != AccessToken {
		return fmt.Errorf("access %q: %w: want %q or %q", *p.Access, ErrInvalid, AccessPublic, AccessToken)
	}
	if p.State != nil && *p.State != StateActive && *p.State != StateUninitialized {
		return fmt.Errorf("state %q: %w: want %q or %q", *p.State, ErrInvalid, StateActive, StateUninitialized)
	}
	return nil
}

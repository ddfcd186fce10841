package store

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

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
)

// DefaultReserved are the labels no device may take whatever the configuration
// says: the nameserver and web names and the ACME challenge label.
var DefaultReserved = []string{"ns1", "ns2", "www", "_acme-challenge"}

// ValidateName returns nil if name (already lower-cased) is a DNS label a device
// may register: 1–63 of a–z, 0–9 and '-', not starting or ending with '-', not
// starting with '_' and not in reserved.
func ValidateName(name string, reserved []string) error {
	isName := func(r string) bool { return strings.EqualFold(r, name) }
	if strings.HasPrefix(name, "_") || slices.Contains(DefaultReserved, name) || slices.ContainsFunc(reserved, isName) {
		return fmt.Errorf("%q: %w for the service", name, ErrReserved)
	}
	if len(name) == 0 || len(name) > 63 {
		return fmt.Errorf("%q: %w: must be 1 to 63 characters", name, ErrInvalidName)
	}
	if name[0] == '-' || name[len(name)-1] == '-' {
		return fmt.Errorf("%q: %w: must not start or end with '-'", name, ErrInvalidName)
	}
	for _, c := range []byte(name) {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return fmt.Errorf("%q: %w: only letters a-z, digits and '-' are allowed", name, ErrInvalidName)
		}
	}
	return nil
}

// NormalizeName lower-cases a name for lookup; names compare case-insensitively.
func NormalizeName(name string) string { return strings.ToLower(name) }

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

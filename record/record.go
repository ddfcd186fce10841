// Package record defines the device record: everything the service stores
// about one device. Its JSON form is at once the store's on-disk encoding and
// the export the owner gets from the API, so the store and the API client
// share these types instead of keeping two copies in step. Standard library
// only: the Link agent's side of the binary imports it through api/client
// without pulling in the store.
package record

import (
	"net/netip"
	"time"
)

// Access says who may open a Link session to a device.
type Access string

// The access modes a device can choose.
const (
	// AccessPublic lets anyone who knows the device name connect through Link
	// (the end-to-end TLS between client and NAS still applies).
	AccessPublic Access = "public"
	// AccessToken additionally requires a valid access code issued by the device.
	AccessToken Access = "token"
)

// State is the lifecycle state of a device record.
type State string

// The states a device record can be in.
const (
	// StateActive is a device that has been set up by its owner.
	StateActive State = "active"
	// StateUninitialized is a device created by a "cloud install" before it has
	// an owner; such a record expires unless it is activated.
	StateUninitialized State = "uninitialized"
)

// Device is everything the service stores about one device. Nothing else about
// a device is kept anywhere. Field order is the order of the keys in the JSON.
type Device struct {
	// Name is the DNS label, lower case.
	Name string `json:"name"`
	// TokenSHA256 is the hex SHA-256 of the device token. The token itself is
	// shown once at creation and never stored.
	TokenSHA256 string `json:"token_sha256"`
	// IPv4 and IPv6 are the current WAN addresses; the zero value means none.
	IPv4 netip.Addr `json:"ipv4,omitzero"`
	IPv6 netip.Addr `json:"ipv6,omitzero"`
	// DDNS says whether the name resolves; Link whether relay sessions are allowed.
	DDNS bool `json:"ddns"`
	Link bool `json:"link"`
	// Access says who may connect through Link.
	Access Access `json:"access"`
	// State is the record's lifecycle state.
	State State `json:"state"`
	// Created and Updated are UTC times of creation and of the last change.
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
	// PublicKey is the device's public key as the agent published it
	// (base64 of the DER SubjectPublicKeyInfo); Link clients pin it.
	PublicKey string `json:"public_key,omitempty"`
	// ACMEChallenges are the values the device publishes as TXT at
	// _acme-challenge.<name>.<zone> for ACME DNS-01 validations, oldest
	// first, each until it expires. Setting or expiring them leaves
	// Updated alone: they are transient, not a change of the device.
	ACMEChallenges []ACMEChallenge `json:"acme_challenges,omitempty"`
	// TSIGKey is the key the device signs its DNS dynamic updates (RFC
	// 2136) with, or nil; one at a time, a new one replaces it.
	TSIGKey *TSIGKey `json:"tsig_key,omitempty"`
}

// ACMEChallenge is one ACME DNS-01 challenge value a device published (the
// unpadded base64url SHA-256 digest of a key authorization, RFC 8555 section
// 8.4), public in DNS until Expires.
type ACMEChallenge struct {
	Value   string    `json:"value"`
	Expires time.Time `json:"expires"`
}

// TSIGKey is a device's TSIG key (RFC 8945). Its name is not stored: it is
// the device's name in the zone, <name>.<zone>, so that the key names the
// only names it may update (as BIND's "grant … self" does).
type TSIGKey struct {
	// Algorithm is the HMAC, in the name nsupdate's -y takes: "hmac-sha256".
	Algorithm string `json:"algorithm"`
	// Secret is the shared secret. The server needs it to check signatures,
	// so it is stored as it is (not hashed, unlike the token); the API
	// shows it once, when it is issued, and leaves it out of every other
	// answer.
	Secret []byte `json:"secret,omitempty"`
	// Created is when it was issued (UTC).
	Created time.Time `json:"created"`
}

// AccessCode is one Link access code a device issued (for Access ==
// AccessToken); only its hash is stored, the code is shown once.
type AccessCode struct {
	ID      string    `json:"id"`
	SHA256  string    `json:"sha256"`
	Created time.Time `json:"created"`
}

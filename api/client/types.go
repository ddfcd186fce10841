package client

import (
	"net/netip"

	"github.com/nasreach/nasreach/record"
)

// The JSON the REST API accepts and sends. Package api encodes and decodes
// these same types, so a field added here is added on both sides of the wire.
// Field order is the order of the keys on the wire.

// The device record is defined once, in package record, and shared with the
// store: its JSON is the store's encoding and the API's export alike.
type (
	// Access says who may open a Link session to a device: AccessPublic or
	// AccessToken.
	Access = record.Access
	// State is the lifecycle state of a device record: StateActive or
	// StateUninitialized; an uninitialized record expires unless activated.
	State = record.State
	// AccessCode is one Link access code a device issued, as listed in its
	// export: only the hash is kept, the code was shown once in
	// IssuedAccessCode.
	AccessCode = record.AccessCode
	// ACMEChallenge is one ACME DNS-01 challenge value a device publishes,
	// with the time it expires.
	ACMEChallenge = record.ACMEChallenge
	// TSIGKey is a device's TSIG key as its export shows it: the algorithm
	// and when it was issued; the secret was shown once in IssuedTSIGKey.
	TSIGKey = record.TSIGKey
)

// The access modes and states, as in package record.
const (
	AccessPublic       = record.AccessPublic
	AccessToken        = record.AccessToken
	StateActive        = record.StateActive
	StateUninitialized = record.StateUninitialized
)

// Device is a device as the API shows it: everything the daemon stores about
// it (the embedded record, whose fields come first on the wire), plus its
// FQDN. GET /v1/devices/{name} also lists its access codes.
type Device struct {
	record.Device
	// FQDN is Name in the daemon's zone.
	FQDN string `json:"fqdn"`
	// AccessCodes are listed in the owner's export only (hashes, never codes).
	AccessCodes []AccessCode `json:"access_codes,omitempty"`
}

// DeviceList is the answer to GET /v1/devices.
type DeviceList struct {
	Devices []Device `json:"devices"`
}

// CreateRequest is the body of POST /v1/devices.
type CreateRequest struct {
	// Name is the device's DNS label. Required.
	Name string `json:"name"`
	// State is the new record's state; empty means StateActive.
	State State `json:"state,omitempty"`
}

// CreatedDevice is the answer to POST /v1/devices. It is the only answer that
// carries the device token.
type CreatedDevice struct {
	Name  string `json:"name"`
	FQDN  string `json:"fqdn"`
	Token string `json:"token"`
}

// Patch is the body of PATCH /v1/devices/{name}; a nil field keeps its value.
type Patch struct {
	DDNS   *bool   `json:"ddns,omitempty"`
	Link   *bool   `json:"link,omitempty"`
	Access *Access `json:"access,omitempty"`
	State  *State  `json:"state,omitempty"`
}

// AddressUpdate is the body of PUT /v1/devices/{name}/address. A nil field
// keeps its address, a pointer to "" clears it. The addresses travel as
// strings so that the server, not the JSON decoder, words the refusal of a
// malformed one.
type AddressUpdate struct {
	IPv4 *string `json:"ipv4,omitempty"`
	IPv6 *string `json:"ipv6,omitempty"`
}

// PublicKeyUpdate is the body of PUT /v1/devices/{name}/key.
type PublicKeyUpdate struct {
	// PublicKey is base64 (standard, padded) of a DER SubjectPublicKeyInfo.
	PublicKey string `json:"public_key"`
}

// IssuedAccessCode is the answer to POST /v1/devices/{name}/access-codes; the
// code is in this answer only.
type IssuedAccessCode struct {
	ID   string `json:"id"`
	Code string `json:"code"`
}

// ACMEChallengeValues is the body of PUT /v1/devices/{name}/acme-challenge
// (the values to publish) and of DELETE on it (the values to withdraw; no
// body withdraws every one).
type ACMEChallengeValues struct {
	Values []string `json:"values"`
}

// ACMEChallenges is the answer to PUT and GET
// /v1/devices/{name}/acme-challenge: the TXT name and every value the device
// publishes there now, oldest first, each with its expiry.
type ACMEChallenges struct {
	FQDN       string          `json:"fqdn"`
	Challenges []ACMEChallenge `json:"challenges"`
}

// IssuedTSIGKey is the answer to POST /v1/devices/{name}/tsig: the device's
// new TSIG key for DNS dynamic updates (RFC 2136), as nsupdate -y
// ALGORITHM:NAME:SECRET takes it. The secret is in this answer only.
type IssuedTSIGKey struct {
	// Name is the key's name, the device's FQDN.
	Name string `json:"name"`
	// Algorithm is "hmac-sha256".
	Algorithm string `json:"algorithm"`
	// Secret is the shared secret, base64.
	Secret string `json:"secret"`
}

// CallerIP is the JSON answer to GET /v1/ip: the caller's address as the
// daemon sees it.
type CallerIP struct {
	IP netip.Addr `json:"ip"`
}

// ErrorBody is the body of every refusal: one line saying why, worded for the
// operator.
type ErrorBody struct {
	Error string `json:"error"`
}

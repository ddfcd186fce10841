package client

import (
	"net/netip"
	"time"
)

// The JSON the REST API accepts and sends. Package api encodes and decodes
// these same types, so a field added here is added on both sides of the wire.
// Field order is the order of the keys on the wire.

// Access says who may open a Link session to a device: AccessPublic or
// AccessToken.
type Access string

// The access modes a device can choose; the store defines what each means.
const (
	AccessPublic Access = "public"
	AccessToken  Access = "token"
)

// State is the lifecycle state of a device record: StateActive or
// StateUninitialized.
type State string

// The states a device record can be in; an uninitialized record expires unless
// it is activated.
const (
	StateActive        State = "active"
	StateUninitialized State = "uninitialized"
)

// Device is a device as the API shows it: everything the daemon stores about
// it, plus its FQDN. GET /v1/devices/{name} also lists its access codes.
type Device struct {
	// Name is the DNS label, lower case.
	Name string `json:"name"`
	// TokenSHA256 is the hex SHA-256 of the device token; the token itself is
	// shown once, in CreatedDevice.
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
	// Created and Updated are the UTC times of creation and of the last change.
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
	// PublicKey is the key the device's agent published (base64 of the DER
	// SubjectPublicKeyInfo); Link clients pin it.
	PublicKey string `json:"public_key,omitempty"`
	// FQDN is Name in the daemon's zone.
	FQDN string `json:"fqdn"`
	// AccessCodes are listed in the owner's export only (hashes, never codes).
	AccessCodes []AccessCode `json:"access_codes,omitempty"`
}

// AccessCode is one Link access code a device issued, as listed in its
// export: only the hash is kept, the code was shown once in IssuedAccessCode.
type AccessCode struct {
	ID      string    `json:"id"`
	SHA256  string    `json:"sha256"`
	Created time.Time `json:"created"`
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

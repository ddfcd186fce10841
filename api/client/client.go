// Package client calls the nasreach daemon's REST API: it is what the
// `nasreach device` and `nasreach backup` commands and the Link agent use, and
// its types are the JSON the API's server side (package api) encodes and
// decodes. It needs the standard library only, so that the agent side does
// not pull in the store. Its tests are in package api, against the real
// server.
package client

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"
)

// DefaultTimeout bounds one call when Config.HTTPClient is nil.
const DefaultTimeout = 30 * time.Second

// Bounds on what the client reads from the daemon. A device list grows with
// the number of devices; every other JSON answer is one small object.
const (
	maxAnswer     = 64 << 10
	maxListAnswer = 64 << 20
	maxErrorBody  = 64 << 10
)

// Config configures New.
type Config struct {
	// Server is the daemon's base URL, e.g. https://ddns.example.net or
	// http://127.0.0.1:10080; a path in it prefixes every call. Required.
	Server string
	// Token is sent as a bearer token: the admin token, or the token of the
	// device the calls are about. Empty sends none (enough for CallerAddress).
	Token string
	// HTTPClient makes the calls; nil means a client with DefaultTimeout.
	HTTPClient *http.Client
	// Socket, when set, is the daemon's local socket (<data>/nasreach.sock):
	// calls go there instead of to Server, and need no Token, since only
	// the daemon's user and root can open it. HTTPClient is ignored.
	Socket string
}

// Client calls one daemon with one token. It is safe for concurrent use.
type Client struct {
	base  string // Config.Server without a trailing slash, or socketBase
	where string // the daemon, for messages: base or unix:<socket>
	token string
	http  *http.Client
}

// socketBase is the URL the calls over a local socket carry; the host is
// never resolved.
const socketBase = "http://nasreach.sock"

// New checks that cfg.Server is an http or https URL and returns a client of
// that daemon. It makes no call.
func New(cfg Config) (*Client, error) {
	if cfg.Socket != "" {
		var d net.Dialer
		tr := &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return d.DialContext(ctx, "unix", cfg.Socket)
			},
		}
		return &Client{
			base: socketBase, where: "unix:" + cfg.Socket, token: cfg.Token,
			http: &http.Client{Timeout: DefaultTimeout, Transport: tr},
		}, nil
	}
	u, err := url.Parse(cfg.Server)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("client: Config.Server %q is not an http or https URL such as https://ddns.example.net", cfg.Server)
	}
	c := &Client{base: strings.TrimSuffix(cfg.Server, "/"), token: cfg.Token, http: cfg.HTTPClient}
	c.where = c.base
	if c.http == nil {
		c.http = &http.Client{Timeout: DefaultTimeout}
	}
	return c, nil
}

// Error is the daemon's refusal of a call: any answer other than 2xx. Branch
// on Status (http.StatusNotFound is an unknown device, http.StatusUnauthorized
// a wrong token) with errors.As.
type Error struct {
	// Status is the HTTP status code.
	Status int
	// Message is the server's reason (ErrorBody.Error); empty when the answer
	// was not the API's JSON, e.g. from a proxy in front of the daemon.
	Message string
	// Server is the daemon that answered: its base URL as in Config.Server,
	// or unix:<socket>.
	Server string
}

// Error returns the server's reason and the status, or, without a reason,
// the status and which daemon answered.
func (e *Error) Error() string {
	if e.Message != "" {
		return fmt.Sprintf("%s (HTTP %d)", e.Message, e.Status)
	}
	return fmt.Sprintf("HTTP %d from %s", e.Status, e.Server)
}

// Create registers a device (POST /v1/devices) and returns its token, which
// no later answer shows again. It needs the admin token unless the daemon has
// open registration.
func (c *Client) Create(ctx context.Context, req CreateRequest) (CreatedDevice, error) {
	var out CreatedDevice
	err := c.do(ctx, http.MethodPost, "/v1/devices", req, &out, maxAnswer)
	return out, err
}

// Devices lists every device, sorted by name (GET /v1/devices). It needs the
// admin token.
func (c *Client) Devices(ctx context.Context) ([]Device, error) {
	var out DeviceList
	err := c.do(ctx, http.MethodGet, "/v1/devices", nil, &out, maxListAnswer)
	return out.Devices, err
}

// Device returns everything stored about device name, access codes included
// (GET /v1/devices/{name}).
func (c *Client) Device(ctx context.Context, name string) (Device, error) {
	var out Device
	err := c.do(ctx, http.MethodGet, devicePath(name, ""), nil, &out, maxAnswer)
	return out, err
}

// Update changes the switches p sets (PATCH /v1/devices/{name}) and returns
// the device as changed.
func (c *Client) Update(ctx context.Context, name string, p Patch) (Device, error) {
	var out Device
	err := c.do(ctx, http.MethodPatch, devicePath(name, ""), p, &out, maxAnswer)
	return out, err
}

// Delete deletes device name and all its data (DELETE /v1/devices/{name}).
func (c *Client) Delete(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, devicePath(name, ""), nil, nil, maxAnswer)
}

// SetAddress sets or clears the device's addresses (PUT
// /v1/devices/{name}/address); the name resolves to them when this returns.
func (c *Client) SetAddress(ctx context.Context, name string, u AddressUpdate) (Device, error) {
	var out Device
	err := c.do(ctx, http.MethodPut, devicePath(name, "/address"), u, &out, maxAnswer)
	return out, err
}

// SetPublicKey publishes the device's public key, a DER SubjectPublicKeyInfo,
// for Link clients to pin (PUT /v1/devices/{name}/key).
func (c *Client) SetPublicKey(ctx context.Context, name string, spki []byte) (Device, error) {
	var out Device
	in := PublicKeyUpdate{PublicKey: base64.StdEncoding.EncodeToString(spki)}
	err := c.do(ctx, http.MethodPut, devicePath(name, "/key"), in, &out, maxAnswer)
	return out, err
}

// AddAccessCode issues a Link access code for device name (POST
// /v1/devices/{name}/access-codes); the code is in this answer only.
func (c *Client) AddAccessCode(ctx context.Context, name string) (IssuedAccessCode, error) {
	var out IssuedAccessCode
	err := c.do(ctx, http.MethodPost, devicePath(name, "/access-codes"), nil, &out, maxAnswer)
	return out, err
}

// RevokeAccessCode deletes access code id of device name (DELETE
// /v1/devices/{name}/access-codes/{id}); it stops working at once.
func (c *Client) RevokeAccessCode(ctx context.Context, name, id string) error {
	return c.do(ctx, http.MethodDelete, devicePath(name, "/access-codes/"+url.PathEscape(id)), nil, nil, maxAnswer)
}

// SetACMEChallenges publishes ACME DNS-01 challenge values at
// _acme-challenge.<name>.<zone> (PUT /v1/devices/{name}/acme-challenge),
// each for an hour; a value already published is renewed. They are in the
// next DNS answer when this returns.
func (c *Client) SetACMEChallenges(ctx context.Context, name string, values ...string) (ACMEChallenges, error) {
	var out ACMEChallenges
	err := c.do(ctx, http.MethodPut, devicePath(name, "/acme-challenge"), ACMEChallengeValues{Values: values}, &out, maxAnswer)
	return out, err
}

// DeleteACMEChallenges withdraws the given challenge values, or every one
// when none is given (DELETE /v1/devices/{name}/acme-challenge).
func (c *Client) DeleteACMEChallenges(ctx context.Context, name string, values ...string) error {
	var in any
	if len(values) > 0 {
		in = ACMEChallengeValues{Values: values}
	}
	return c.do(ctx, http.MethodDelete, devicePath(name, "/acme-challenge"), in, nil, maxAnswer)
}

// IssueTSIGKey issues a new TSIG key for device name's DNS dynamic updates
// (POST /v1/devices/{name}/tsig), which replaces its old one; the secret is
// in this answer only.
func (c *Client) IssueTSIGKey(ctx context.Context, name string) (IssuedTSIGKey, error) {
	var out IssuedTSIGKey
	err := c.do(ctx, http.MethodPost, devicePath(name, "/tsig"), nil, &out, maxAnswer)
	return out, err
}

// RevokeTSIGKey deletes device name's TSIG key (DELETE
// /v1/devices/{name}/tsig); updates signed with it are refused at once.
func (c *Client) RevokeTSIGKey(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, devicePath(name, "/tsig"), nil, nil, maxAnswer)
}

// CallerAddress returns the caller's address as the daemon sees it (GET
// /v1/ip): behind NAT, the WAN address. It needs no token.
func (c *Client) CallerAddress(ctx context.Context) (netip.Addr, error) {
	var out CallerIP
	if err := c.do(ctx, http.MethodGet, "/v1/ip", nil, &out, maxAnswer); err != nil {
		return netip.Addr{}, err
	}
	// "" decodes as the zero Addr without error; a caller must not store it.
	if !out.IP.IsValid() {
		return netip.Addr{}, fmt.Errorf("the daemon at %s answered GET /v1/ip without an address", c.where)
	}
	return out.IP, nil
}

// Backup streams a consistent snapshot of the daemon's store, a bbolt file
// (GET /v1/admin/backup). It needs the admin token. The caller closes the
// reader; a read error means the snapshot is incomplete. The HTTP client's
// timeout covers the whole download.
func (c *Client) Backup(ctx context.Context) (io.ReadCloser, error) {
	return c.backup(ctx, "/v1/admin/backup")
}

// BackupIfHousekeeping is Backup on a node that does its cluster's
// housekeeping (always, on a store of one node); another node of the
// cluster answers an *Error with status 409 Conflict and sends nothing.
func (c *Client) BackupIfHousekeeping(ctx context.Context) (io.ReadCloser, error) {
	return c.backup(ctx, "/v1/admin/backup?housekeeping=1")
}

func (c *Client) backup(ctx context.Context, path string) (io.ReadCloser, error) {
	resp, err := c.send(ctx, http.MethodGet, path, nil)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// devicePath is the path of device name's resource plus rest; the name is
// escaped so that it stays one path segment whatever it holds.
func devicePath(name, rest string) string {
	return "/v1/devices/" + url.PathEscape(name) + rest
}

// do sends one call and decodes its 2xx JSON answer, at most limit bytes,
// into out unless out is nil.
func (c *Client) do(ctx context.Context, method, path string, in, out any, limit int64) error {
	resp, err := c.send(ctx, method, path, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return fmt.Errorf("read the answer to %s %s from the daemon at %s: %w", method, path, c.where, err)
	}
	if int64(len(data)) > limit {
		return fmt.Errorf("the daemon at %s answered %s %s with more than %d bytes", c.where, method, path, limit)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("the daemon at %s answered %s %s with unexpected JSON (is it a nasreach daemon of the same version?): %w", c.where, method, path, err)
	}
	return nil
}

// send sends one call with in as its JSON body (none if nil) and returns a
// 2xx response for the caller to read and close; any other status becomes an
// *Error.
func (c *Client) send(ctx context.Context, method, path string, in any) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, fmt.Errorf("encode the body of %s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, fmt.Errorf("build %s %s for the daemon at %s: %w", method, path, c.where, err)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	// GET /v1/ip answers text to a client that prefers it; this one wants JSON.
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the daemon at %s (is nasreach serve running?): %w", c.where, err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	e := &Error{Status: resp.StatusCode, Server: c.where}
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	var eb ErrorBody
	if json.Unmarshal(data, &eb) == nil {
		e.Message = eb.Error
	}
	return nil, e
}

package store

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
)

// CreateOptions are the optional settings of a new device.
type CreateOptions struct {
	// State is the initial state; empty means StateActive.
	State State
}

// Create registers a new device and returns it with its token, which is not
// stored and cannot be shown again. A name deleted less than the quarantine
// ago is refused with ErrQuarantined.
func (s *Store) Create(ctx context.Context, name string, opts CreateOptions) (Device, string, error) {
	return s.rules().create(ctx, name, opts)
}

func (w writeRules) create(ctx context.Context, name string, opts CreateOptions) (Device, string, error) {
	name = NormalizeName(name)
	if err := ValidateName(name, w.reserved); err != nil {
		return Device{}, "", err
	}
	if opts.State == "" {
		opts.State = StateActive
	}
	if err := (Patch{State: &opts.State}).validate(); err != nil {
		return Device{}, "", err
	}
	token, err := NewToken()
	if err != nil {
		return Device{}, "", err
	}
	now := w.now().UTC()
	d := Device{
		Name: name, TokenSHA256: HashToken(token),
		DDNS: true, Link: true, Access: AccessPublic, State: opts.State,
		Created: now, Updated: now,
	}
	err = w.write(ctx, name, Created, func(cur *Device) (outcome, error) {
		if cur != nil {
			return outcome{}, fmt.Errorf("%q: %w", name, ErrExists)
		}
		return outcome{put: &d}, nil
	})
	if err != nil {
		return Device{}, "", err
	}
	return d, token, nil
}

// Get returns a device by name (any case).
func (s *Store) Get(name string) (Device, error) {
	name = NormalizeName(name)
	var d Device
	err := s.db.View(func(tx *bolt.Tx) error {
		cur, err := readDevice(tx.Bucket(bucketDevices), name)
		if err == nil && cur == nil {
			err = fmt.Errorf("%q: %w", name, ErrNotFound)
		}
		if err == nil {
			d = *cur
		}
		return err
	})
	return d, err
}

// List returns all devices sorted by name.
func (s *Store) List() ([]Device, error) {
	var out []Device
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketDevices).ForEach(func(_, v []byte) error {
			var d Device
			if err := json.Unmarshal(v, &d); err != nil {
				return err
			}
			out = append(out, d)
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, err
}

// dummyHash is compared against when a device does not exist, so that an
// unknown name costs the same as a wrong token.
var dummyHash = HashToken("nasreach-no-such-device")

// Authenticate checks a device token in constant time and returns the device.
// Unknown devices and wrong tokens give the same ErrBadCredentials.
func (s *Store) Authenticate(name, token string) (Device, error) {
	return authenticate(s.Get, name, token)
}

func authenticate(get func(string) (Device, error), name, token string) (Device, error) {
	d, err := get(name)
	if errors.Is(err, ErrUnavailable) {
		return Device{}, err // not the client's fault: no badauth for it
	}
	want := d.TokenSHA256
	if err != nil {
		want = dummyHash
	}
	got := HashToken(token)
	if subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 || err != nil {
		return Device{}, ErrBadCredentials
	}
	return d, nil
}

// SetAddress sets a device's WAN addresses. changed reports whether anything
// differs from before; an unchanged update writes nothing. An address of the
// wrong family or one ValidateAddress refuses is an ErrInvalid error, and
// then nothing is written.
func (s *Store) SetAddress(ctx context.Context, name string, u AddressUpdate) (d Device, changed bool, err error) {
	return s.rules().setAddress(ctx, name, u)
}

func (w writeRules) setAddress(ctx context.Context, name string, u AddressUpdate) (d Device, changed bool, err error) {
	if u, err = u.checked(); err != nil {
		return Device{}, false, err
	}
	err = w.write(ctx, NormalizeName(name), Updated, func(cur *Device) (outcome, error) {
		if cur == nil {
			return outcome{}, fmt.Errorf("%q: %w", name, ErrNotFound)
		}
		var o outcome
		d, o = w.applyAddress(*cur, u)
		changed = o.put != nil
		return o, nil
	})
	return d, changed, err
}

// checked returns u with its IPv4 address unmapped, or an ErrInvalid error
// for an address of the wrong family or one ValidateAddress refuses.
func (u AddressUpdate) checked() (AddressUpdate, error) {
	if u.IPv4.IsValid() && !u.IPv4.Unmap().Is4() {
		return u, fmt.Errorf("ipv4 %s: %w: not an IPv4 address", u.IPv4, ErrInvalid)
	}
	if u.IPv6.IsValid() && (!u.IPv6.Is6() || u.IPv6.Is4In6()) {
		return u, fmt.Errorf("ipv6 %s: %w: not an IPv6 address", u.IPv6, ErrInvalid)
	}
	u.IPv4 = u.IPv4.Unmap()
	for i, ip := range []netip.Addr{u.IPv4, u.IPv6} {
		if ip.IsValid() {
			if err := ValidateAddress(ip); err != nil {
				return u, fmt.Errorf("%s %w", [...]string{"ipv4", "ipv6"}[i], err)
			}
		}
	}
	return u, nil
}

// applyAddress returns cur with the checked update u applied, and the
// outcome that stores it: none when the addresses stay as they were.
func (w writeRules) applyAddress(cur Device, u AddressUpdate) (Device, outcome) {
	nd := cur
	switch {
	case u.IPv4.IsValid():
		nd.IPv4 = u.IPv4
	case u.ClearIPv4:
		nd.IPv4 = netip.Addr{}
	}
	switch {
	case u.IPv6.IsValid():
		nd.IPv6 = u.IPv6
	case u.ClearIPv6:
		nd.IPv6 = netip.Addr{}
	}
	if nd.IPv4 == cur.IPv4 && nd.IPv6 == cur.IPv6 {
		return cur, outcome{}
	}
	nd.Updated = w.now().UTC()
	return nd, outcome{put: &nd}
}

// Update applies p to a device and returns the result.
func (s *Store) Update(ctx context.Context, name string, p Patch) (Device, error) {
	return s.rules().update(ctx, name, p)
}

func (w writeRules) update(ctx context.Context, name string, p Patch) (Device, error) {
	if err := p.validate(); err != nil {
		return Device{}, err
	}
	var d Device
	err := w.write(ctx, NormalizeName(name), Updated, func(cur *Device) (outcome, error) {
		if cur == nil {
			return outcome{}, fmt.Errorf("%q: %w", name, ErrNotFound)
		}
		nd := *cur
		if p.DDNS != nil {
			nd.DDNS = *p.DDNS
		}
		if p.Link != nil {
			nd.Link = *p.Link
		}
		if p.Access != nil {
			nd.Access = *p.Access
		}
		if p.State != nil {
			nd.State = *p.State
		}
		d = nd
		if nd.DDNS == cur.DDNS && nd.Link == cur.Link && nd.Access == cur.Access && nd.State == cur.State {
			return outcome{}, nil
		}
		nd.Updated = w.now().UTC()
		d = nd
		return outcome{put: &nd}, nil
	})
	return d, err
}

// SetPublicKey records the device's public key (base64 DER, as published by
// the agent). An unchanged key writes nothing.
func (s *Store) SetPublicKey(ctx context.Context, name, key string) (Device, error) {
	return s.rules().setPublicKey(ctx, name, key)
}

func (w writeRules) setPublicKey(ctx context.Context, name, key string) (Device, error) {
	if key == "" || len(key) > MaxPublicKeyLen {
		return Device{}, fmt.Errorf("public key: %w: must be 1 to %d characters", ErrInvalid, MaxPublicKeyLen)
	}
	var d Device
	err := w.write(ctx, NormalizeName(name), Updated, func(cur *Device) (outcome, error) {
		if cur == nil {
			return outcome{}, fmt.Errorf("%q: %w", name, ErrNotFound)
		}
		d = *cur
		if cur.PublicKey == key {
			return outcome{}, nil
		}
		nd := *cur
		nd.PublicKey, nd.Updated = key, w.now().UTC()
		d = nd
		return outcome{put: &nd}, nil
	})
	return d, err
}

// Delete removes a device and everything stored about it in one transaction,
// and quarantines its name (only the name and the time are kept, until the
// quarantine ends). The name stops resolving before Delete returns.
func (s *Store) Delete(ctx context.Context, name string) error {
	return s.rules().delete(ctx, name)
}

func (w writeRules) delete(ctx context.Context, name string) error {
	name = NormalizeName(name)
	return w.write(ctx, name, Deleted, func(cur *Device) (outcome, error) {
		if cur == nil {
			return outcome{}, fmt.Errorf("%q: %w", name, ErrNotFound)
		}
		return outcome{del: true}, nil
	})
}

// writeRules are the device changes as mutations, shared by every Backend:
// validation, what each change does to a record and when it changes
// nothing. Each implementation supplies its one write path.
type writeRules struct {
	reserved []string
	now      func() time.Time
	write    func(ctx context.Context, name string, kind ChangeKind, m mutation) error
}

func (s *Store) rules() writeRules { return writeRules{s.reserved, s.now, s.write} }

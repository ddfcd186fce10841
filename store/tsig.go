package store

import (
	"context"
	"crypto/rand"
	"fmt"

	"github.com/nasreach/nasreach/record"
)

// TSIG keys for dynamic DNS updates (RFC 2136): each device may hold one
// key, kept in its record, so that it is committed, backed up and erased
// with the device like everything else about it. The DNS server finds it in
// the index, from memory, for every signed message.

// TSIGKey is a device's TSIG key, as in package record.
type TSIGKey = record.TSIGKey

// TSIGAlgorithm is the HMAC of every key IssueTSIGKey makes: the one RFC
// 8945 requires of every implementation.
const TSIGAlgorithm = "hmac-sha256"

// TSIGSecretLen is the length of a new secret in bytes: SHA-256's output, as
// BIND's tsig-keygen and Knot's keymgr make one for hmac-sha256.
const TSIGSecretLen = 32

// IssueTSIGKey makes a new random key for device name and stores it in place
// of the one it had, which stops working when IssueTSIGKey returns. The
// secret is in the result; it is stored as it is, since checking a
// signature needs it.
func (s *Store) IssueTSIGKey(ctx context.Context, name string) (TSIGKey, error) {
	return s.rules().issueTSIGKey(ctx, name)
}

func (w writeRules) issueTSIGKey(ctx context.Context, name string) (TSIGKey, error) {
	secret := make([]byte, TSIGSecretLen)
	if _, err := rand.Read(secret); err != nil {
		return TSIGKey{}, fmt.Errorf("generate TSIG key: %w", err)
	}
	key := TSIGKey{Algorithm: TSIGAlgorithm, Secret: secret, Created: w.now().UTC()}
	name = NormalizeName(name)
	err := w.write(ctx, name, Updated, func(cur *Device) (outcome, error) {
		if cur == nil {
			return outcome{}, fmt.Errorf("%q: %w", name, ErrNotFound)
		}
		nd := *cur
		nd.TSIGKey, nd.Updated = &key, key.Created
		return outcome{put: &nd}, nil
	})
	if err != nil {
		return TSIGKey{}, err
	}
	return key, nil
}

// RevokeTSIGKey deletes device name's TSIG key, if it has one; updates
// signed with it are refused from when RevokeTSIGKey returns.
func (s *Store) RevokeTSIGKey(ctx context.Context, name string) error {
	return s.rules().revokeTSIGKey(ctx, name)
}

func (w writeRules) revokeTSIGKey(ctx context.Context, name string) error {
	name = NormalizeName(name)
	return w.write(ctx, name, Updated, func(cur *Device) (outcome, error) {
		if cur == nil {
			return outcome{}, fmt.Errorf("%q: %w", name, ErrNotFound)
		}
		if cur.TSIGKey == nil {
			return outcome{}, nil
		}
		nd := *cur
		nd.TSIGKey, nd.Updated = nil, w.now().UTC()
		return outcome{put: &nd}, nil
	})
}

// TSIGKey returns the TSIG key of device name (lower case) from memory, for
// the DNS server, which looks it up for every signed message: a device with
// DDNS off has its key too, a deleted one none. The secret is shared and
// must not be modified.
func (s *memIndex) TSIGKey(name string) (TSIGKey, bool) {
	e, ok := s.tab.Load().get(name)
	if !ok || e.key == nil {
		return TSIGKey{}, false
	}
	return *e.key, true
}

// IssueTSIGKey makes a new TSIG key for a device; see Store.IssueTSIGKey.
func (s *Etcd) IssueTSIGKey(ctx context.Context, name string) (TSIGKey, error) {
	return s.rules().issueTSIGKey(ctx, name)
}

// RevokeTSIGKey deletes a device's TSIG key; see Store.RevokeTSIGKey.
func (s *Etcd) RevokeTSIGKey(ctx context.Context, name string) error {
	return s.rules().revokeTSIGKey(ctx, name)
}

package store

import (
	"context"
	"fmt"
	"slices"
	"time"
)

// ACME DNS-01 challenge values: a device proves to a certificate authority
// that it controls <device>.<zone> (and *.<device>.<zone>) by publishing the
// value the CA asks for as TXT at _acme-challenge.<device>.<zone>. The values
// live in the device record, so they are committed, indexed, exported and
// erased with it like its addresses; each expires on its own.

// Limits on a device's challenge values.
const (
	// MaxChallenges bounds the values one device publishes at once. A
	// certificate for a name and its wildcard needs two; a client that
	// failed before cleaning up leaves its values until they expire.
	MaxChallenges = 8
	// ChallengeLifetime is how long a value is published after it was last
	// set. A CA checks within seconds or minutes of being asked to.
	ChallengeLifetime = time.Hour
	// ChallengeValueLen is the length of a DNS-01 value: the unpadded
	// base64url of a SHA-256 digest (RFC 8555 section 8.4).
	ChallengeValueLen = 43
)

// ValidateChallenge returns nil if v is a DNS-01 challenge value: exactly
// ChallengeValueLen characters of the base64url alphabet (A-Z a-z 0-9 - _),
// what every ACME client computes. Anything else is refused, so that the
// TXT record cannot carry other text. The error never repeats v.
func ValidateChallenge(v string) error {
	if len(v) != ChallengeValueLen {
		return fmt.Errorf("challenge value: %w: must be %d characters (the base64url SHA-256 digest an ACME client computes), not %d", ErrInvalid, ChallengeValueLen, len(v))
	}
	for _, c := range []byte(v) {
		if (c < 'A' || c > 'Z') && (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' && c != '_' {
			return fmt.Errorf("challenge value: %w: only the base64url characters A-Z a-z 0-9 - _ are allowed", ErrInvalid)
		}
	}
	return nil
}

// ChallengeUpdate changes the challenge values a device publishes. It is
// applied in field order: RemoveAll, Remove, Add, Keep. The REST API, the
// acme-dns endpoint and RFC 2136 UPDATE (through EditRecords) all come down
// to one.
type ChallengeUpdate struct {
	// RemoveAll withdraws every value (DELETE without a body; RFC 2136's
	// "delete an RRset").
	RemoveAll bool
	// Remove withdraws these values; one that is not published is ignored.
	Remove []string
	// Add publishes these values, each for ChallengeLifetime from now. One
	// already published is renewed and counts as the most recent.
	Add []string
	// Keep, when positive, then keeps only the Keep most recently added
	// values (the acme-dns API keeps two).
	Keep int
}

// SetChallenges applies u to device name's challenge values and returns the
// device as it is then. Values past their expiry are dropped at the same
// time. A value ValidateChallenge refuses, or more than MaxChallenges values
// in the end, is an ErrInvalid error, and nothing changes. The values are in
// the next DNS answer when it returns; a change to nothing writes nothing.
// Setting values does not move the device's Updated time.
func (s *Store) SetChallenges(ctx context.Context, name string, u ChallengeUpdate) (Device, error) {
	return s.rules().setChallenges(ctx, name, u)
}

func (w writeRules) setChallenges(ctx context.Context, name string, u ChallengeUpdate) (Device, error) {
	if err := u.check(); err != nil {
		return Device{}, err
	}
	name = NormalizeName(name)
	var d Device
	err := w.write(ctx, name, Updated, func(cur *Device) (outcome, error) {
		if cur == nil {
			return outcome{}, fmt.Errorf("%q: %w", name, ErrNotFound)
		}
		var o outcome
		var err error
		d, o, err = w.applyChallenges(*cur, u)
		return o, err
	})
	return d, err
}

// check refuses an update with a value ValidateChallenge refuses or with
// more than MaxChallenges values to add.
func (u ChallengeUpdate) check() error {
	for _, v := range slices.Concat(u.Add, u.Remove) {
		if err := ValidateChallenge(v); err != nil {
			return err
		}
	}
	if len(u.Add) > MaxChallenges {
		return fmt.Errorf("challenge values: %w: at most %d at once", ErrInvalid, MaxChallenges)
	}
	return nil
}

// empty reports whether u changes nothing by itself (expired values aside).
func (u ChallengeUpdate) empty() bool { return !u.RemoveAll && len(u.Remove) == 0 && len(u.Add) == 0 }

// applyChallenges returns cur with the checked update u applied to its
// challenge values (expired ones dropped), and the outcome that stores it:
// none when they stay as they were. More than MaxChallenges values in the
// end is an ErrInvalid error.
func (w writeRules) applyChallenges(cur Device, u ChallengeUpdate) (Device, outcome, error) {
	now := w.now().UTC()
	next := u.apply(liveChallenges(cur.ACMEChallenges, now), now)
	if len(next) > MaxChallenges {
		return cur, outcome{}, fmt.Errorf("challenge values of %q: %w: at most %d are published at once; withdraw some (DELETE) or wait for them to expire", cur.Name, ErrInvalid, MaxChallenges)
	}
	if slices.Equal(next, cur.ACMEChallenges) {
		return cur, outcome{}, nil
	}
	nd := cur
	nd.ACMEChallenges = next
	return nd, outcome{put: &nd}, nil
}

// apply returns cur changed by u, as of now; cur is not modified.
func (u ChallengeUpdate) apply(cur []ACMEChallenge, now time.Time) []ACMEChallenge {
	var next []ACMEChallenge
	if !u.RemoveAll {
		next = slices.DeleteFunc(slices.Clone(cur), func(c ACMEChallenge) bool { return slices.Contains(u.Remove, c.Value) })
	}
	for _, v := range u.Add {
		next = slices.DeleteFunc(next, func(c ACMEChallenge) bool { return c.Value == v })
		next = append(next, ACMEChallenge{Value: v, Expires: now.Add(ChallengeLifetime)})
	}
	if u.Keep > 0 && len(next) > u.Keep {
		next = next[len(next)-u.Keep:]
	}
	if len(next) == 0 {
		return nil // the record's JSON leaves out an empty list
	}
	return next
}

// liveChallenges returns those of cs that have not expired at now, nil if
// none; cs is not modified.
func liveChallenges(cs []ACMEChallenge, now time.Time) []ACMEChallenge {
	live := slices.DeleteFunc(slices.Clone(cs), func(c ACMEChallenge) bool { return !now.Before(c.Expires) })
	if len(live) == 0 {
		return nil
	}
	return live
}

// hasExpiredChallenge reports whether d publishes a value past its expiry,
// for Sweep.
func hasExpiredChallenge(d Device, now time.Time) bool {
	return slices.ContainsFunc(d.ACMEChallenges, func(c ACMEChallenge) bool { return !now.Before(c.Expires) })
}

// expireChallenges withdraws the named devices' values that have expired
// when the change commits; each backend's Sweep calls it.
func (w writeRules) expireChallenges(ctx context.Context, names []string) error {
	for _, name := range names {
		err := w.write(ctx, name, Updated, func(cur *Device) (outcome, error) {
			if cur == nil {
				return outcome{}, nil // deleted meanwhile
			}
			live := liveChallenges(cur.ACMEChallenges, w.now().UTC())
			if len(live) == len(cur.ACMEChallenges) {
				return outcome{}, nil
			}
			nd := *cur
			nd.ACMEChallenges = live
			return outcome{put: &nd}, nil
		})
		if err != nil {
			return fmt.Errorf("sweep: expire the acme challenges of %q: %w", name, err)
		}
	}
	return nil
}

// challengeValues are the values of cs, in order, for the index.
func challengeValues(cs []ACMEChallenge) []string {
	if len(cs) == 0 {
		return nil
	}
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.Value
	}
	return out
}

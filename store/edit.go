package store

import (
	"context"
	"fmt"
)

// RecordEdit is what one DNS dynamic update (RFC 2136) does to the records
// a device publishes, decided from the device as it is stored.
type RecordEdit struct {
	// Address sets or clears the device's addresses, as SetAddress does.
	Address AddressUpdate
	// Challenges changes the device's ACME challenge values, as
	// SetChallenges does.
	Challenges ChallengeUpdate
}

// EditRecords changes what device name publishes in one transaction, as
// decide says: decide gets the device as stored at that moment and returns
// the edit, so that whatever it checks first (an update's prerequisites)
// still holds when the edit commits. An error from decide is returned as it
// is, and nothing changes; so does an edit SetAddress or SetChallenges
// would refuse (ErrInvalid). decide may be called more than once (a check before the
// commit, and the commit again when writes are batched) and must have no
// effect besides its result. changed reports whether anything differs from
// before; an edit that changes nothing writes nothing. The durability
// contract is SetAddress's: the change is committed, and in the next
// Lookup, when EditRecords returns.
func (s *Store) EditRecords(ctx context.Context, name string, decide func(cur Device) (RecordEdit, error)) (d Device, changed bool, err error) {
	return s.rules().editRecords(ctx, name, decide)
}

// EditRecords changes what a device publishes; see Store.EditRecords.
func (s *Etcd) EditRecords(ctx context.Context, name string, decide func(cur Device) (RecordEdit, error)) (Device, bool, error) {
	return s.rules().editRecords(ctx, name, decide)
}

func (w writeRules) editRecords(ctx context.Context, name string, decide func(cur Device) (RecordEdit, error)) (d Device, changed bool, err error) {
	name = NormalizeName(name)
	err = w.write(ctx, name, Updated, func(cur *Device) (outcome, error) {
		if cur == nil {
			return outcome{}, fmt.Errorf("%q: %w", name, ErrNotFound)
		}
		e, err := decide(*cur)
		if err != nil {
			return outcome{}, err
		}
		u, err := e.Address.checked()
		if err != nil {
			return outcome{}, err
		}
		if err := e.Challenges.check(); err != nil {
			return outcome{}, err
		}
		var o outcome
		d, o = w.applyAddress(*cur, u)
		if !e.Challenges.empty() {
			var oc outcome
			if d, oc, err = w.applyChallenges(d, e.Challenges); err != nil {
				return outcome{}, err
			}
			if oc.put != nil {
				o = oc
			}
		}
		changed = o.put != nil
		return o, nil
	})
	return d, changed, err
}

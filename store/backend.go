package store

import (
	"context"
	"io"
	"iter"
)

// Backend is the device table as the rest of nasreach uses it. *Store keeps
// it in a bbolt file; another implementation (an etcd-backed one, say) must
// keep the same contract and pass the same tests (store_test.go lists the
// implementations its behaviour tests run against). The methods of *Store
// document each one in full.
//
// Every implementation keeps this contract:
//   - Durability: a method that changes data returns nil only once the change
//     is durably committed (for *Store: the bbolt transaction is fsynced), so
//     an acknowledged change survives a crash and a restart.
//   - Visibility: by then the in-memory view shows it too: the very next
//     Lookup, Serial and Len reflect it, and the OnChange observers have been
//     called. A change that leaves a device as it was (the same address, key
//     or switches) writes nothing, leaves Serial alone and notifies nobody.
//   - Errors: callers branch with errors.Is on the sentinel errors of this
//     package (ErrNotFound, ErrExists, ErrInvalidName, ErrReserved,
//     ErrQuarantined, ErrInvalid), each wrapped with the name or field at
//     fault. Authenticate returns ErrBadCredentials itself, unwrapped, for an
//     unknown device and for a wrong token alike. A change to a device whose
//     context is already done changes nothing.
//   - Names compare case-insensitively (see NormalizeName), except in Lookup,
//     which takes the lower-case label the DNS server has.
//   - All methods are safe for concurrent use.
type Backend interface {
	// Create registers a device and returns it with its token, which is not
	// stored: only its HashToken is.
	Create(ctx context.Context, name string, opts CreateOptions) (Device, string, error)
	// Get returns a device by name.
	Get(name string) (Device, error)
	// List returns all devices sorted by name.
	List() ([]Device, error)
	// Authenticate checks a device token in constant time.
	Authenticate(name, token string) (Device, error)
	// SetAddress sets a device's WAN addresses and reports whether they changed.
	SetAddress(ctx context.Context, name string, u AddressUpdate) (d Device, changed bool, err error)
	// EditRecords changes what a device publishes as decide, given the
	// device as stored, says, in one transaction (a DNS dynamic update:
	// its prerequisites and its changes).
	EditRecords(ctx context.Context, name string, decide func(cur Device) (RecordEdit, error)) (d Device, changed bool, err error)
	// Update applies p to a device's switches.
	Update(ctx context.Context, name string, p Patch) (Device, error)
	// SetPublicKey records the public key the device's agent published.
	SetPublicKey(ctx context.Context, name, key string) (Device, error)
	// Delete removes a device with everything stored about it and
	// quarantines its name.
	Delete(ctx context.Context, name string) error

	// AddAccessCode issues a Link access code, returned once and stored hashed.
	AddAccessCode(ctx context.Context, name string) (id, code string, err error)
	// AccessCodes lists a device's access codes (hashes only), oldest first.
	AccessCodes(name string) ([]AccessCode, error)
	// RevokeAccessCode deletes one access code; it stops working at once.
	RevokeAccessCode(ctx context.Context, name, id string) error
	// CheckAccessCode reports whether code is one of the device's access codes.
	CheckAccessCode(name, code string) bool

	// IssueTSIGKey makes and stores a new TSIG key for the device's
	// dynamic updates, replacing the one it had.
	IssueTSIGKey(ctx context.Context, name string) (TSIGKey, error)
	// RevokeTSIGKey deletes the device's TSIG key, if it has one.
	RevokeTSIGKey(ctx context.Context, name string) error
	// TSIGKey returns a device's TSIG key from memory: the DNS server calls
	// it for every signed message.
	TSIGKey(name string) (TSIGKey, bool)

	// SetChallenges changes the ACME DNS-01 challenge values the device
	// publishes at _acme-challenge.<name>; each expires ChallengeLifetime
	// after it was set (Sweep withdraws it).
	SetChallenges(ctx context.Context, name string, u ChallengeUpdate) (Device, error)

	// Lookup returns the DNS record of a device that resolves (its
	// addresses and ACME challenge values), from memory: the DNS server
	// calls it for every query.
	Lookup(name string) (Record, bool)
	// Serial returns the zone's SOA serial, bumped by every change to DNS data.
	Serial() uint32
	// Len returns the number of devices that resolve.
	Len() int
	// OnChange registers f to be called after every committed change, in the
	// writer's goroutine, once Lookup shows it. f must not block.
	OnChange(f func(Change))
	// ZoneSnapshot calls f with the zone serial and an iterator over the
	// devices that resolve, both of one committed state, without copying
	// them first (a zone transfer; for etcd: a range read at one revision).
	ZoneSnapshot(f func(serial uint32, devices iter.Seq2[string, Record]) error) error

	// Sweep expires uninitialized devices past their TTL, withdraws ACME
	// challenge values past theirs and ends quarantines, and returns how
	// many devices it expired.
	Sweep(ctx context.Context) (expired int, err error)
	// Size returns the bytes the stored data takes.
	Size() int64
	// Ping returns an error unless the storage is reachable and readable
	// and can commit: after a failed commit it says why until the storage
	// commits again.
	Ping() error
	// Backup writes a consistent snapshot of all data to w while writes go
	// on, and returns its size.
	Backup(w io.Writer) (int64, error)
	// Close releases the storage and stops any background work. Every
	// acknowledged change has already been committed.
	Close() error
}

var _ Backend = (*Store)(nil)

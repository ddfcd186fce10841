package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base32"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// AddAccessCode issues a new Link access code for a device and returns its
// id and the code, which is not stored and cannot be shown again.
func (s *Store) AddAccessCode(ctx context.Context, name string) (id, code string, err error) {
	ac, buf, code, err := newAccessCode(s.now())
	if err != nil {
		return "", "", err
	}
	name = NormalizeName(name)
	err = s.write(ctx, name, Updated, func(cur *Device) (outcome, error) {
		if cur == nil {
			return outcome{}, fmt.Errorf("%q: %w", name, ErrNotFound)
		}
		return outcome{tx: func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketAccessCodes)
			if n := countPrefix(b, name+"/"); n >= MaxAccessCodes {
				return fmt.Errorf("%q: %w: at most %d access codes; revoke one first", name, ErrInvalid, MaxAccessCodes)
			}
			return b.Put([]byte(name+"/"+ac.ID), buf)
		}}, nil
	})
	if err != nil {
		return "", "", err
	}
	return ac.ID, code, nil
}

// newAccessCode makes a new access code created at now, and returns it with
// its stored form and the code itself, which is not stored.
func newAccessCode(now time.Time) (ac AccessCode, stored []byte, code string, err error) {
	if code, err = NewToken(); err != nil {
		return ac, nil, "", err
	}
	// The id is lower-case base32 (a–z, 2–7): it never starts with '-',
	// which a command line would take for a flag (nasreach device code rm).
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return ac, nil, "", fmt.Errorf("make access code id: %w", err)
	}
	id := strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))[:10]
	ac = AccessCode{ID: id, SHA256: HashToken(code), Created: now.UTC()}
	stored, err = json.Marshal(ac)
	return ac, stored, code, err
}

// AccessCodes lists a device's access codes (hashes only), oldest first.
func (s *Store) AccessCodes(name string) ([]AccessCode, error) {
	name = NormalizeName(name)
	var out []AccessCode
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketAccessCodes).Cursor()
		prefix := []byte(name + "/")
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var ac AccessCode
			if err := json.Unmarshal(v, &ac); err != nil {
				return fmt.Errorf("access code %q is unreadable: %w", k, err)
			}
			out = append(out, ac)
		}
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, err
}

// RevokeAccessCode deletes one access code; it stops working at once.
func (s *Store) RevokeAccessCode(ctx context.Context, name, id string) error {
	name = NormalizeName(name)
	key := []byte(name + "/" + id)
	return s.write(ctx, name, Updated, func(cur *Device) (outcome, error) {
		if cur == nil {
			return outcome{}, fmt.Errorf("%q: %w", name, ErrNotFound)
		}
		return outcome{tx: func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketAccessCodes)
			if b.Get(key) == nil {
				return fmt.Errorf("access code %q of %q: %w", id, name, ErrNotFound)
			}
			return b.Delete(key)
		}}, nil
	})
}

// CheckAccessCode reports whether code is one of the device's access codes,
// comparing in constant time against each.
func (s *Store) CheckAccessCode(name, code string) bool {
	return checkAccessCode(s.AccessCodes, name, code)
}

func checkAccessCode(list func(string) ([]AccessCode, error), name, code string) bool {
	codes, err := list(name)
	if err != nil {
		return false
	}
	h := []byte(HashToken(code))
	ok := 0
	for _, a := range codes {
		ok |= subtle.ConstantTimeCompare(h, []byte(a.SHA256))
	}
	return ok == 1
}

func countPrefix(b *bolt.Bucket, prefix string) int {
	n := 0
	c := b.Cursor()
	for k, _ := c.Seek([]byte(prefix)); k != nil && bytes.HasPrefix(k, []byte(prefix)); k, _ = c.Next() {
		n++
	}
	return n
}

// deletePrefix deletes every key of b that starts with prefix.
func deletePrefix(b *bolt.Bucket, prefix string) error {
	var keys [][]byte
	c := b.Cursor()
	for k, _ := c.Seek([]byte(prefix)); k != nil && bytes.HasPrefix(k, []byte(prefix)); k, _ = c.Next() {
		keys = append(keys, bytes.Clone(k))
	}
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

package store

import (
	"encoding/binary"
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// SchemaVersion is the version of the on-disk layout this code writes.
const SchemaVersion = 1

// FileName is the name of the database file inside the data directory.
const FileName = "nasreach.db"

var (
	bucketMeta       = []byte("meta")
	bucketDevices    = []byte("devices")
	bucketQuarantine = []byte("quarantine")
	// bucketAccessCodes holds "<device>/<id>" -> AccessCode JSON.
	bucketAccessCodes = []byte("access_codes")

	// dataBuckets are the buckets besides meta that migrate creates.
	dataBuckets = [][]byte{bucketDevices, bucketQuarantine, bucketAccessCodes}

	keySchema = []byte("schema")
	keySerial = []byte("serial")
	keyRev    = []byte("rev")
)

// migrations[i] upgrades a database from schema version i+1 to i+2. A new
// layout appends a function here and bumps SchemaVersion.
var migrations = []func(tx *bolt.Tx) error{}

// current reports whether the file has every bucket and the current schema
// version, so that migrate has nothing to do.
func (s *Store) current() bool {
	ok := false
	_ = s.db.View(func(tx *bolt.Tx) error {
		ok = tx.Bucket(bucketMeta) != nil && getUint(tx.Bucket(bucketMeta), keySchema) == SchemaVersion
		for _, b := range dataBuckets {
			ok = ok && tx.Bucket(b) != nil
		}
		return nil
	})
	return ok
}

func (s *Store) migrate(tx *bolt.Tx) error {
	meta, err := tx.CreateBucketIfNotExists(bucketMeta)
	if err != nil {
		return err
	}
	for _, b := range dataBuckets {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return err
		}
	}
	v := getUint(meta, keySchema)
	if v == 0 { // new file
		putUint(meta, keySerial, 1)
		putUint(meta, keyRev, 1)
		v = SchemaVersion
	}
	if v > SchemaVersion {
		return fmt.Errorf("schema version %d was written by a newer nasreach (this one knows %d)", v, SchemaVersion)
	}
	for ; v < SchemaVersion; v++ {
		if err := migrations[v-1](tx); err != nil {
			return fmt.Errorf("migrate schema %d to %d: %w", v, v+1, err)
		}
	}
	return putUint(meta, keySchema, SchemaVersion)
}

func readDevice(b *bolt.Bucket, name string) (*Device, error) {
	v := b.Get([]byte(name))
	if v == nil {
		return nil, nil
	}
	d := new(Device)
	if err := json.Unmarshal(v, d); err != nil {
		return nil, fmt.Errorf("device %q is unreadable: %w", name, err)
	}
	return d, nil
}

func getUint(b *bolt.Bucket, k []byte) uint64 {
	v := b.Get(k)
	if len(v) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

func putUint(b *bolt.Bucket, k []byte, v uint64) error {
	var buf [8]byte
	binary.BigEndian.PutUint64(buf[:], v)
	return b.Put(k, buf[:])
}

// putDevice stores d under name.
func putDevice(b *bolt.Bucket, name string, d *Device) error {
	buf, err := json.Marshal(d)
	if err != nil {
		return err
	}
	return b.Put([]byte(name), buf)
}

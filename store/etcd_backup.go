package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Backup writes the table as a bbolt store file, the same kind of file the
// bbolt store's Backup writes and Open and Check accept: every device,
// access code and quarantine and the zone serial, read from the cluster at
// one revision (a page at a time), so the snapshot is consistent while
// other nodes write. The file is built in a temporary file in the data
// directory (the system's temporary directory without one), copied to w
// and removed.
func (s *Etcd) Backup(w io.Writer) (int64, error) {
	f, err := os.CreateTemp(s.dir, ".etcd-backup-*")
	if err != nil {
		return 0, fmt.Errorf("backup: temporary file: %w", err)
	}
	path := f.Name()
	defer os.Remove(path)
	if err := f.Close(); err != nil {
		return 0, fmt.Errorf("backup: temporary file: %w", err)
	}
	// NoSync: the file is a scratch copy; what is durable is what w's
	// owner makes of it.
	db, err := bolt.Open(path, 0o600, &bolt.Options{NoSync: true, Timeout: time.Second})
	if err != nil {
		return 0, fmt.Errorf("backup: temporary store %s: %w", path, err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		if err := (*Store)(nil).migrate(tx); err != nil {
			return err
		}
		rev, err := s.eachPage(func(kvs []*etcdKV) error { return s.fillSnapshot(tx, kvs) })
		if err != nil {
			return err
		}
		return putUint(tx.Bucket(bucketMeta), keyRev, uint64(rev))
	})
	if err != nil {
		return 0, fmt.Errorf("backup: %w", err)
	}
	var n int64
	err = db.View(func(tx *bolt.Tx) error {
		n, err = tx.WriteTo(w)
		return err
	})
	if err != nil {
		return n, fmt.Errorf("backup: %w", err)
	}
	return n, nil
}

// eachPage calls f with every key under the prefix, read at one revision
// (which it returns) a page of zonePage keys at a time, as ZoneSnapshot
// does, so that no one response, and no one slice, holds the whole table.
func (s *Etcd) eachPage(f func(kvs []*etcdKV) error) (int64, error) {
	var rev int64
	from, end := s.prefix+"/", clientv3.GetPrefixRangeEnd(s.prefix+"/")
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(int64(s.zonePage))}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		ctx, cancel := s.request(context.Background())
		page, err := s.cli.Get(ctx, from, opts...)
		cancel()
		if err != nil {
			return 0, s.unavailable("read", err)
		}
		if rev == 0 {
			rev = page.Header.Revision
		}
		if err := f(page.Kvs); err != nil {
			return 0, err
		}
		if !page.More || len(page.Kvs) == 0 {
			return rev, nil
		}
		from = string(page.Kvs[len(page.Kvs)-1].Key) + "\x00"
	}
}

// fillSnapshot lays keys of the table out in a new bbolt file (made by
// migrate) as the bbolt store keeps them (schema.go). Keys that are not
// data (the writer mark, the sweeper election) are left out.
func (s *Etcd) fillSnapshot(tx *bolt.Tx, kvs []*etcdKV) error {
	meta := tx.Bucket(bucketMeta)
	for _, kv := range kvs {
		key := strings.TrimPrefix(string(kv.Key), s.prefix)
		var err error
		switch {
		case strings.HasPrefix(key, etcdDevices):
			err = tx.Bucket(bucketDevices).Put([]byte(strings.TrimPrefix(key, etcdDevices)), kv.Value)
		case strings.HasPrefix(key, etcdAccessCodes):
			err = tx.Bucket(bucketAccessCodes).Put([]byte(strings.TrimPrefix(key, etcdAccessCodes)), kv.Value)
		case strings.HasPrefix(key, etcdQuarantine):
			err = tx.Bucket(bucketQuarantine).Put([]byte(strings.TrimPrefix(key, etcdQuarantine)), kv.Value)
		case key == etcdSerial:
			err = putUint(meta, keySerial, uint64(parseSerial(kv)))
		}
		if err != nil {
			return fmt.Errorf("key %s: %w", kv.Key, err)
		}
	}
	return nil
}

// ImportReport says what ImportEtcd wrote.
type ImportReport struct {
	Devices, AccessCodes, Quarantined int
	Serial                            uint32
}

// importBatch is how many keys one import transaction writes: well under
// etcd's default limit of 128 operations per transaction (--max-txn-ops).
const importBatch = 64

// ImportEtcd copies the bbolt store file at path (a snapshot from
// nasreach backup, or a node's nasreach.db while its daemon is stopped)
// into the table under ec.Prefix, which must hold no device, access code,
// quarantine or serial yet: the way to move from bbolt to etcd, and to
// restore an etcd table from a backup. The file is checked first (Check,
// in full) and only read. The keys are written in transactions of
// importBatch, each committing only if none of its keys exists, the
// serial last. Start the nodes on the prefix afterwards (restart those
// running on it): a running node would show the devices, but its IXFR
// history would not hold them. On an error part of the table may have been
// written: delete the prefix (etcdctl del --prefix) and import again.
func ImportEtcd(ctx context.Context, path string, ec EtcdConfig) (ImportReport, error) {
	var rep ImportReport
	if _, err := Check(path, true); err != nil {
		return rep, err
	}
	db, err := bolt.Open(path, 0o400, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return rep, fmt.Errorf("open store %s: %w", path, err)
	}
	defer db.Close()
	prefix, cli, timeout, err := dialEtcd(ctx, ec)
	if err != nil {
		return rep, err
	}
	defer cli.Close()
	rctx, cancel := context.WithTimeout(ctx, timeout)
	for _, kind := range []string{etcdDevices, etcdAccessCodes, etcdQuarantine, etcdSerial} {
		resp, err := cli.Get(rctx, prefix+kind, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			cancel()
			return rep, fmt.Errorf("%w: etcd read: %w", ErrUnavailable, err)
		}
		if resp.Count > 0 {
			cancel()
			return rep, fmt.Errorf("etcd prefix %s already holds a device table (%s…); import only into an empty prefix", prefix, prefix+kind)
		}
	}
	cancel()
	var batch []clientv3.Op
	var cmps []clientv3.Cmp
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		rctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		resp, err := cli.Txn(rctx).If(cmps...).Then(batch...).Commit()
		if err != nil {
			return fmt.Errorf("%w: etcd commit: %w", ErrUnavailable, err)
		}
		if !resp.Succeeded {
			return fmt.Errorf("etcd prefix %s: another writer put some of the same keys during the import", prefix)
		}
		batch, cmps = batch[:0], cmps[:0]
		return nil
	}
	put := func(key string, v []byte) error {
		batch = append(batch, clientv3.OpPut(key, string(v)))
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(key), "=", 0))
		if len(batch) == importBatch {
			return flush()
		}
		return nil
	}
	err = db.View(func(tx *bolt.Tx) error {
		for _, b := range []struct {
			bucket []byte
			kind   string
			count  *int
		}{
			{bucketDevices, etcdDevices, &rep.Devices},
			{bucketAccessCodes, etcdAccessCodes, &rep.AccessCodes},
			{bucketQuarantine, etcdQuarantine, &rep.Quarantined},
		} {
			if err := tx.Bucket(b.bucket).ForEach(func(k, v []byte) error {
				*b.count++
				return put(prefix+b.kind+string(k), v)
			}); err != nil {
				return err
			}
		}
		if err := flush(); err != nil {
			return err
		}
		rep.Serial = uint32(getUint(tx.Bucket(bucketMeta), keySerial))
		if err := put(prefix+etcdSerial, []byte(strconv.FormatUint(uint64(rep.Serial), 10))); err != nil {
			return err
		}
		return flush()
	})
	if err != nil {
		return rep, fmt.Errorf("import %s into etcd prefix %s: %w (part of it may be written: delete the prefix and import again)", path, prefix, err)
	}
	return rep, nil
}

// dialEtcd checks ec and connects to its cluster, with ctx as the client's
// own context; it returns the prefix and the timeout ec means.
func dialEtcd(ctx context.Context, ec EtcdConfig) (string, *clientv3.Client, time.Duration, error) {
	if len(ec.Endpoints) == 0 {
		return "", nil, 0, errors.New("store: EtcdConfig.Endpoints is required")
	}
	prefix := cmp.Or(ec.Prefix, "/nasreach")
	if strings.HasSuffix(prefix, "/") {
		return "", nil, 0, fmt.Errorf("store: EtcdConfig.Prefix %q must not end with '/'", prefix)
	}
	tlsConf, err := etcdTLS(ec)
	if err != nil {
		return "", nil, 0, err
	}
	timeout := cmp.Or(ec.DialTimeout, 5*time.Second)
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: ec.Endpoints, DialTimeout: timeout, TLS: tlsConf, Context: ctx,
		Logger: zap.NewNop(),
	})
	if err != nil {
		return "", nil, 0, fmt.Errorf("connect to etcd %v: %w", ec.Endpoints, err)
	}
	return prefix, cli, timeout, nil
}

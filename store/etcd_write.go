package store

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// maxConflicts bounds how often one change is retried after another node
// changed the device (or the serial) between the read and the commit.
const maxConflicts = 1000

// write is the one path every change to a device takes on etcd: read the
// record (and the serial, and the quarantine for a new name) at one
// revision, run m, and commit what it decided only if none of them changed
// since (compare-and-swap); on a conflict it starts again from the read. It
// returns nil once the cluster has committed the change and this node's
// index shows it.
func (s *Etcd) write(ctx context.Context, name string, kind ChangeKind, m mutation) error {
	devKey, serialKey, quarKey := s.key(etcdDevices, name), s.prefix+etcdSerial, s.key(etcdQuarantine, name)
	return s.casLoop(ctx, name, func() ([]clientv3.Cmp, []clientv3.Op, error) {
		rctx, cancel := s.request(ctx)
		resp, err := s.cli.Txn(rctx).Then(clientv3.OpGet(devKey), clientv3.OpGet(serialKey), clientv3.OpGet(quarKey)).Commit()
		cancel()
		if err != nil {
			return nil, nil, s.unavailable("read", err)
		}
		devKV, serialKV, quarKV := first(resp.Responses[0]), first(resp.Responses[1]), first(resp.Responses[2])
		var cur *Device
		if devKV != nil {
			cur = new(Device)
			if err := json.Unmarshal(devKV.Value, cur); err != nil {
				return nil, nil, fmt.Errorf("device %q is unreadable: %w", name, err)
			}
		}
		if kind == Created && quarKV != nil && quarantinedAt(quarKV.Value, s.now(), s.quarantine) {
			free := deletedAt(quarKV.Value).Add(s.quarantine).UTC()
			return nil, nil, fmt.Errorf("%q: %w until %s", name, ErrQuarantined, free.Format(time.RFC3339))
		}
		o, err := m(cur)
		if err != nil || !o.changes() {
			return nil, nil, err
		}
		if o.tx != nil {
			return nil, nil, errors.New("store: a bbolt transaction in an etcd write") // a bug: access codes have their own path
		}
		cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(devKey), "=", modRev(devKV))}
		var ops []clientv3.Op
		var after *Device
		switch {
		case o.del:
			ops = append(ops, clientv3.OpDelete(devKey), clientv3.OpDelete(s.key(etcdAccessCodes, name+"/"), clientv3.WithPrefix()))
			if kind == Deleted { // the watch tells Deleted from Expired by this
				var ts [8]byte
				binary.BigEndian.PutUint64(ts[:], uint64(s.now().UnixNano()))
				ops = append(ops, clientv3.OpPut(quarKey, string(ts[:])))
			}
		case o.put != nil:
			buf, err := json.Marshal(o.put)
			if err != nil {
				return nil, nil, err
			}
			after = o.put
			ops = append(ops, clientv3.OpPut(devKey, string(buf)))
		}
		if kind == Created {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(quarKey), "=", modRev(quarKV)))
		}
		if dnsChanged(cur, after) {
			serial := parseSerial(serialKV) + 1
			if serial == 0 {
				serial = 1
			}
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(serialKey), "=", modRev(serialKV)))
			ops = append(ops, clientv3.OpPut(serialKey, strconv.FormatUint(uint64(serial), 10)))
		}
		return cmps, ops, nil
	})
}

// casLoop commits what try decides (nothing when it returns no operations)
// as one compare-and-swap transaction marked as this node's, and calls try
// again while another change wins the race; it returns once the commit
// shows in the index and the observers have been called.
func (s *Etcd) casLoop(ctx context.Context, name string, try func() ([]clientv3.Cmp, []clientv3.Op, error)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	for range maxConflicts {
		committed, rev, err := s.tryCommit(ctx, try)
		if err != nil || rev == 0 {
			return err
		}
		if committed {
			return s.notify(rev)
		}
	}
	return fmt.Errorf("%q: changed by others %d times while this change was tried; try again", name, maxConflicts)
}

// tryCommit reads and decides with try and commits what it decided, one
// such round at a time on this node: every change to the zone also
// changes the serial, so concurrent writers of one node would only make
// each other's compare-and-swap fail and retry, unfairly (one could lose
// every race until its client gives up). Serialized, a node's writers
// conflict only with other nodes'. rev is 0 when try decided nothing.
func (s *Etcd) tryCommit(ctx context.Context, try func() ([]clientv3.Cmp, []clientv3.Op, error)) (bool, int64, error) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	cmps, ops, err := try()
	if err != nil || ops == nil {
		return false, 0, err
	}
	return s.commit(ctx, cmps, append(ops, s.writerOp()))
}

// commit runs one compare-and-swap transaction and reports whether it
// committed, and at which revision.
func (s *Etcd) commit(ctx context.Context, cmps []clientv3.Cmp, ops []clientv3.Op) (bool, int64, error) {
	rctx, cancel := s.request(ctx)
	defer cancel()
	resp, err := s.cli.Txn(rctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return false, 0, s.unavailable("commit", err)
	}
	select {
	case s.kick <- struct{}{}: // a watch waiting to resume need not wait longer
	default:
	}
	return resp.Succeeded, resp.Header.Revision, nil
}

// writerOp marks a transaction as this node's, so that the watch hands its
// changes to the writer, which calls the observers in its own goroutine (an
// observer may write to the store itself), rather than calling them.
func (s *Etcd) writerOp() clientv3.Op { return clientv3.OpPut(s.prefix+etcdWriter, s.id) }

// notify waits until the index shows revision rev, which this node
// committed, and calls the observers with its changes.
func (s *Etcd) notify(rev int64) error {
	err := s.waitSeen(rev)
	s.seenMu.Lock()
	h := s.handoff[rev]
	delete(s.handoff, rev)
	s.seenMu.Unlock()
	for _, c := range h.changes {
		for _, f := range h.observers {
			f(c)
		}
	}
	return err
}

// waitSeen waits until the index shows revision rev, which this node
// committed: the watch delivers it, normally within a millisecond.
func (s *Etcd) waitSeen(rev int64) error {
	timeout := time.NewTimer(s.timeout)
	defer timeout.Stop()
	for {
		s.seenMu.Lock()
		seen, ch := s.seen, s.seenCh
		s.seenMu.Unlock()
		if seen >= rev {
			return nil
		}
		select {
		case <-ch:
		case <-timeout.C:
			return fmt.Errorf("%w: the change is committed (etcd revision %d) but this node's index has not seen it after %v", ErrUnavailable, rev, s.timeout)
		}
	}
}

// unavailable wraps a failed request to the cluster.
func (s *Etcd) unavailable(what string, err error) error {
	return fmt.Errorf("%w: etcd %s: %w", ErrUnavailable, what, err)
}

func first(r *etcdResponseOp) *etcdKV {
	if g := r.GetResponseRange(); g != nil && len(g.Kvs) > 0 {
		return g.Kvs[0]
	}
	return nil
}

func modRev(kv *etcdKV) int64 {
	if kv == nil {
		return 0
	}
	return kv.ModRevision
}

func parseSerial(kv *etcdKV) uint32 {
	if kv == nil {
		return 0
	}
	n, _ := strconv.ParseUint(string(kv.Value), 10, 32)
	return uint32(n)
}

// quarantinedAt reports whether a quarantine entry (the deletion time) is
// still in force at now, for a quarantine of q (negative: none).
func quarantinedAt(v []byte, now time.Time, q time.Duration) bool {
	if len(v) != 8 || q < 0 {
		return false
	}
	return now.Before(deletedAt(v).Add(q))
}

func (s *Etcd) rules() writeRules { return writeRules{s.reserved, s.now, s.write} }

// Create registers a device; see Store.Create.
func (s *Etcd) Create(ctx context.Context, name string, opts CreateOptions) (Device, string, error) {
	return s.rules().create(ctx, name, opts)
}

// SetAddress sets a device's WAN addresses; see Store.SetAddress.
func (s *Etcd) SetAddress(ctx context.Context, name string, u AddressUpdate) (Device, bool, error) {
	return s.rules().setAddress(ctx, name, u)
}

// Update applies p to a device; see Store.Update.
func (s *Etcd) Update(ctx context.Context, name string, p Patch) (Device, error) {
	return s.rules().update(ctx, name, p)
}

// SetPublicKey records the device's public key; see Store.SetPublicKey.
func (s *Etcd) SetPublicKey(ctx context.Context, name, key string) (Device, error) {
	return s.rules().setPublicKey(ctx, name, key)
}

// SetChallenges changes the device's ACME challenge values; see
// Store.SetChallenges.
func (s *Etcd) SetChallenges(ctx context.Context, name string, u ChallengeUpdate) (Device, error) {
	return s.rules().setChallenges(ctx, name, u)
}

// Delete removes a device, its access codes and quarantines its name, in
// one transaction; see Store.Delete.
func (s *Etcd) Delete(ctx context.Context, name string) error {
	return s.rules().delete(ctx, name)
}

// Get returns a device by name (any case), read from the cluster.
func (s *Etcd) Get(name string) (Device, error) {
	name = NormalizeName(name)
	ctx, cancel := s.request(context.Background())
	defer cancel()
	resp, err := s.cli.Get(ctx, s.key(etcdDevices, name))
	if err != nil {
		return Device{}, s.unavailable("read", err)
	}
	if len(resp.Kvs) == 0 {
		return Device{}, fmt.Errorf("%q: %w", name, ErrNotFound)
	}
	var d Device
	if err := json.Unmarshal(resp.Kvs[0].Value, &d); err != nil {
		return Device{}, fmt.Errorf("device %q is unreadable: %w", name, err)
	}
	return d, nil
}

// List returns all devices sorted by name.
func (s *Etcd) List() ([]Device, error) {
	ctx, cancel := s.request(context.Background())
	defer cancel()
	resp, err := s.cli.Get(ctx, s.prefix+etcdDevices, clientv3.WithPrefix())
	if err != nil {
		return nil, s.unavailable("read", err)
	}
	out := make([]Device, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var d Device
		if err := json.Unmarshal(kv.Value, &d); err != nil {
			return nil, fmt.Errorf("device %q is unreadable: %w", kv.Key, err)
		}
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Authenticate checks a device token in constant time; see
// Store.Authenticate.
func (s *Etcd) Authenticate(name, token string) (Device, error) {
	return authenticate(s.Get, name, token)
}

// AddAccessCode issues a Link access code; see Store.AddAccessCode.
func (s *Etcd) AddAccessCode(ctx context.Context, name string) (id, code string, err error) {
	ac, buf, code, err := newAccessCode(s.now())
	if err != nil {
		return "", "", err
	}
	name = NormalizeName(name)
	codes := s.key(etcdAccessCodes, name+"/")
	err = s.changeCodes(ctx, name, []clientv3.Op{clientv3.OpGet(codes, clientv3.WithPrefix(), clientv3.WithCountOnly())},
		func(got []*etcdResponseOp) ([]clientv3.Cmp, []clientv3.Op, error) {
			if n := got[0].GetResponseRange().Count; n >= MaxAccessCodes {
				return nil, nil, fmt.Errorf("%q: %w: at most %d access codes; revoke one first", name, ErrInvalid, MaxAccessCodes)
			}
			return nil, []clientv3.Op{clientv3.OpPut(codes+ac.ID, string(buf))}, nil
		})
	if err != nil {
		return "", "", err
	}
	return ac.ID, code, nil
}

// RevokeAccessCode deletes one access code; see Store.RevokeAccessCode.
func (s *Etcd) RevokeAccessCode(ctx context.Context, name, id string) error {
	name = NormalizeName(name)
	key := s.key(etcdAccessCodes, name+"/"+id)
	return s.changeCodes(ctx, name, []clientv3.Op{clientv3.OpGet(key)},
		func(got []*etcdResponseOp) ([]clientv3.Cmp, []clientv3.Op, error) {
			kv := first(got[0])
			if kv == nil {
				return nil, nil, fmt.Errorf("access code %q of %q: %w", id, name, ErrNotFound)
			}
			return []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)}, []clientv3.Op{clientv3.OpDelete(key)}, nil
		})
}

// changeCodes is the write path of a device's access codes: it reads the
// device record and reads, decides from them with decide, and commits
// decide's operations with the record written again unchanged, only if the
// record has not changed since (compare-and-swap). Rewriting the record
// orders the change among the device's others, so a code added while the
// device is deleted does not outlive it, and tells observers of it, as
// Store's change of the access codes does.
func (s *Etcd) changeCodes(ctx context.Context, name string, reads []clientv3.Op,
	decide func([]*etcdResponseOp) ([]clientv3.Cmp, []clientv3.Op, error)) error {
	devKey := s.key(etcdDevices, name)
	return s.casLoop(ctx, name, func() ([]clientv3.Cmp, []clientv3.Op, error) {
		rctx, cancel := s.request(ctx)
		resp, err := s.cli.Txn(rctx).Then(append([]clientv3.Op{clientv3.OpGet(devKey)}, reads...)...).Commit()
		cancel()
		if err != nil {
			return nil, nil, s.unavailable("read", err)
		}
		devKV := first(resp.Responses[0])
		if devKV == nil {
			return nil, nil, fmt.Errorf("%q: %w", name, ErrNotFound)
		}
		cmps, ops, err := decide(resp.Responses[1:])
		if err != nil {
			return nil, nil, err
		}
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(devKey), "=", devKV.ModRevision))
		ops = append(ops, clientv3.OpPut(devKey, string(devKV.Value)))
		return cmps, ops, nil
	})
}

// AccessCodes lists a device's access codes (hashes only), oldest first.
func (s *Etcd) AccessCodes(name string) ([]AccessCode, error) {
	name = NormalizeName(name)
	ctx, cancel := s.request(context.Background())
	defer cancel()
	resp, err := s.cli.Get(ctx, s.key(etcdAccessCodes, name+"/"), clientv3.WithPrefix())
	if err != nil {
		return nil, s.unavailable("read", err)
	}
	var out []AccessCode
	for _, kv := range resp.Kvs {
		var ac AccessCode
		if err := json.Unmarshal(kv.Value, &ac); err != nil {
			return nil, fmt.Errorf("access code %q is unreadable: %w", kv.Key, err)
		}
		out = append(out, ac)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}

// CheckAccessCode reports whether code is one of the device's access codes.
func (s *Etcd) CheckAccessCode(name, code string) bool {
	return checkAccessCode(s.AccessCodes, name, code)
}

// Sweep expires uninitialized devices past their TTL and ends quarantines;
// see Store.Sweep. Each expiry is a compare-and-swap, so nodes sweeping at
// once expire a device once.
func (s *Etcd) Sweep(ctx context.Context) (expired int, err error) {
	now := s.now()
	devices, err := s.List()
	if err != nil {
		return 0, fmt.Errorf("sweep: %w", err)
	}
	var names, challenged []string
	for _, d := range devices {
		switch {
		case expiredAt(d, now, s.uninitTTL):
			names = append(names, d.Name)
		case hasExpiredChallenge(d, now):
			challenged = append(challenged, d.Name)
		}
	}
	if expired, err = s.rules().expire(ctx, names, s.uninitTTL, s.log); err != nil {
		return expired, err
	}
	if err := s.rules().expireChallenges(ctx, challenged); err != nil {
		return expired, err
	}
	rctx, cancel := s.request(ctx)
	defer cancel()
	resp, err := s.cli.Get(rctx, s.prefix+etcdQuarantine, clientv3.WithPrefix())
	if err != nil {
		return expired, fmt.Errorf("sweep quarantine: %w", s.unavailable("read", err))
	}
	for _, kv := range resp.Kvs {
		if quarantinedAt(kv.Value, now, s.quarantine) {
			continue
		}
		key := string(kv.Key)
		if _, _, err := s.commit(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)},
			[]clientv3.Op{clientv3.OpDelete(key)}); err != nil {
			return expired, fmt.Errorf("sweep quarantine: %w", err)
		}
	}
	return expired, nil
}

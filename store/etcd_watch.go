package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

type (
	etcdResponseOp = etcdserverpb.ResponseOp
	etcdKV         = mvccpb.KeyValue
)

// reload reads the whole table at one revision into the index, replacing
// what it held, and returns that revision: at Open, and when the watch
// finds the revisions it needs compacted away, so that the index never has
// a silent gap. After the first load it tells the observers what the
// reload changed (see reloaded), since no watch event will.
func (s *Etcd) reload(ctx context.Context) (int64, error) {
	rctx, cancel := s.request(ctx)
	defer cancel()
	resp, err := s.cli.Txn(rctx).Then(
		clientv3.OpGet(s.prefix+etcdDevices, clientv3.WithPrefix()), clientv3.OpGet(s.prefix+etcdSerial),
		clientv3.OpGet(s.prefix+etcdQuarantine, clientv3.WithPrefix(), clientv3.WithKeysOnly())).Commit()
	if err != nil {
		return 0, s.unavailable("read", err)
	}
	rev := resp.Header.Revision
	kvs := resp.Responses[0].GetResponseRange().Kvs
	entries := newDevTable(len(kvs))
	devices := make(map[string]Device, len(kvs))
	for _, kv := range kvs {
		var d Device
		if err := json.Unmarshal(kv.Value, &d); err != nil {
			return 0, fmt.Errorf("device %q is unreadable: %w", kv.Key, err)
		}
		// The record's own revision, which the next watch event of the
		// device exceeds, and which tells the next reload whether the
		// device changed in between.
		entries = entries.set(d.Name, entryFor(uint64(kv.ModRevision), d, false))
		devices[d.Name] = d
	}
	quarantined := map[string]bool{}
	for _, kv := range resp.Responses[2].GetResponseRange().Kvs {
		quarantined[strings.TrimPrefix(string(kv.Key), s.prefix+etcdQuarantine)] = true
	}
	entries = entries.trimmed()
	serial := parseSerial(first(resp.Responses[1]))
	s.mu.Lock()
	old, observers := s.tab.Load(), s.observers
	s.tab.Store(entries)
	s.serial.Store(serial)
	s.mu.Unlock()
	s.seenMu.Lock()
	initial := s.seen == 0
	s.seenMu.Unlock()
	if !initial {
		s.reloaded(old, entries, devices, quarantined, observers)
	}
	s.markSeen(rev)
	return rev, nil
}

// reloaded tells the observers what a reload changed, which the watch
// events it skipped would have told them: a Created or Updated change for
// every device whose record is new or other than the index had it, a
// Deleted (its name is quarantined) or Expired change for every device
// gone. These changes carry no Before and no Serial: the serials in
// between are lost with the history, so the reload observers (OnReload)
// are called last, and a zone's change history (IXFR) must start afresh.
func (s *Etcd) reloaded(old, now *devTable, devices map[string]Device, quarantined map[string]bool, observers []func(Change)) {
	var changes []Change
	for name, d := range devices {
		e, had := old.get(name)
		ne, _ := now.get(name)
		switch {
		case !had:
			changes = append(changes, Change{Kind: Created, Device: d})
		case e.rev != ne.rev:
			changes = append(changes, Change{Kind: Updated, Device: d})
		}
	}
	// A device deleted before the one reload is told again (the index
	// keeps deleted devices): harmless to every observer.
	for name := range old.all() {
		if _, ok := devices[name]; ok {
			continue
		}
		kind := Expired
		if quarantined[name] {
			kind = Deleted
		}
		changes = append(changes, Change{Kind: kind, Device: Device{Name: name}})
	}
	s.log.Info().Int("changes", len(changes)).Msg("store reloaded from etcd; telling the observers what changed")
	for _, c := range changes {
		for _, f := range observers {
			f(c)
		}
	}
	s.historyLost()
}

// historyLost calls the reload hooks (OnReload): the index moved past
// changes it cannot describe one by one.
func (s *Etcd) historyLost() {
	s.reloadMu.Lock()
	hooks := slices.Clone(s.onReload)
	s.reloadMu.Unlock()
	for _, f := range hooks {
		f()
	}
}

// OnReload registers f to be called after the index was reloaded whole
// (the watch fell behind a compaction of etcd's history), once the
// observers have had a change for each device the reload changed, and
// after a watch resumed across a compaction delivered a change without
// the value it replaced (that change has no Serial): what
// keeps a history of the zone's changes (the IXFR journal) must start it
// afresh and tell its secondaries. f runs in the watch goroutine and must
// not block.
func (s *Etcd) OnReload(f func()) {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	s.onReload = append(s.onReload, f)
}

// markSeen records that the index reflects revision rev and wakes the
// writers waiting for it.
func (s *Etcd) markSeen(rev int64) {
	s.seenMu.Lock()
	defer s.seenMu.Unlock()
	if rev > s.seen {
		s.seen = rev
		close(s.seenCh)
		s.seenCh = make(chan struct{})
	}
}

// watch feeds the index with every change under the prefix after revision
// rev, this node's and other nodes' alike, until ctx ends. A broken watch
// (no leader, a lost connection) is resumed from the last revision seen; a
// compacted one reloads the table.
func (s *Etcd) watch(ctx context.Context, rev int64) {
	backoff := 100 * time.Millisecond
	broken := false
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for wr := range s.cli.Watch(wctx, s.prefix+"/", clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithPrevKV()) {
			if err := wr.Err(); err != nil {
				if errors.Is(err, rpctypes.ErrCompacted) || wr.CompactRevision != 0 {
					s.log.Warn().Int64("revision", rev).Msg("store watch fell behind an etcd compaction; reloading the device table")
					if r, err := s.reload(ctx); err == nil {
						rev = r
					}
				} else if ctx.Err() == nil {
					// Once per outage, not once per try (every 2 s).
					ev := s.log.Debug()
					if !broken {
						ev = s.log.Warn()
					}
					broken = true
					ev.Err(err).Msg("store watch broken; resuming")
				}
				break
			}
			backoff = 100 * time.Millisecond
			if broken {
				broken = false
				s.log.Info().Msg("store watch resumed")
			}
			if wr.IsProgressNotify() {
				s.progress.confirmed()
			}
			for len(wr.Events) > 0 {
				n := 1
				r := wr.Events[0].Kv.ModRevision
				for n < len(wr.Events) && wr.Events[n].Kv.ModRevision == r {
					n++
				}
				s.apply(r, wr.Events[:n])
				wr.Events = wr.Events[n:]
				rev = r
			}
		}
		cancel()
		select {
		case <-ctx.Done():
		case <-s.kick: // a commit succeeded: the cluster is back
		case <-time.After(backoff):
			backoff = min(2*backoff, 2*time.Second)
		}
	}
}

// apply shows the events of one revision (one transaction) in the index,
// calls the observers (or, for this node's own transaction, leaves that to
// its writer), and then marks the revision seen, releasing the writer that
// committed it.
func (s *Etcd) apply(rev int64, events []*clientv3.Event) {
	serialKey, devices, quarantine := s.prefix+etcdSerial, s.prefix+etcdDevices, s.prefix+etcdQuarantine
	var serial uint32
	local := false
	deleted := map[string]bool{}
	for _, ev := range events {
		key := string(ev.Kv.Key)
		switch {
		case key == serialKey && ev.Type == clientv3.EventTypePut:
			serial = parseSerial(ev.Kv)
		case key == s.prefix+etcdWriter && ev.Type == clientv3.EventTypePut:
			local = string(ev.Kv.Value) == s.id
		case strings.HasPrefix(key, quarantine) && ev.Type == clientv3.EventTypePut:
			deleted[strings.TrimPrefix(key, quarantine)] = true
		}
	}
	var changes []Change
	var observers []func(Change)
	lost := false // an event whose previous value was compacted away
	for _, ev := range events {
		key := string(ev.Kv.Key)
		if !strings.HasPrefix(key, devices) {
			continue
		}
		name := strings.TrimPrefix(key, devices)
		var before, after *Device
		if ev.PrevKv != nil {
			before = new(Device)
			if err := json.Unmarshal(ev.PrevKv.Value, before); err != nil {
				before = &Device{Name: name}
			}
		}
		c := committed{rev: uint64(rev)}
		change := Change{Before: before}
		switch {
		case ev.Type == clientv3.EventTypeDelete:
			c.deleted, change.Kind = true, Expired
			if deleted[name] {
				change.Kind = Deleted
			}
			if before == nil {
				before = &Device{Name: name}
			}
			c.device = *before
		default:
			after = new(Device)
			if err := json.Unmarshal(ev.Kv.Value, after); err != nil {
				s.log.Error().Str("device", name).Err(err).Msg("device record from etcd is unreadable; left out of DNS")
				continue
			}
			c.device, change.Kind = *after, Updated
			if ev.IsCreate() {
				change.Kind, change.Before = Created, nil
				before = nil
			}
		}
		c.before = before
		if c.dns = dnsChanged(before, after); c.dns {
			c.serial, change.Serial = serial, serial
		}
		if ev.PrevKv == nil && !ev.IsCreate() {
			// A watch resumed across a compaction may deliver the event
			// without the value it replaced: what the device resolved to
			// before is unknown, so no delta of the zone can be made of
			// it (a secondary would keep the old address beside the new).
			// The change goes to the observers without a serial, and the
			// reload hooks start the zone's history afresh.
			lost, change.Serial = true, 0
		}
		change.Device = c.device
		observers = s.updateIndex(name, c)
		changes = append(changes, change)
	}
	if serial != 0 {
		s.mu.Lock()
		if serialNewer(serial, s.serial.Load()) {
			s.serial.Store(serial)
		}
		s.mu.Unlock()
	}
	if local {
		s.seenMu.Lock()
		s.handoff[rev] = handoff{changes, observers}
		s.seenMu.Unlock()
	} else {
		for _, change := range changes {
			for _, f := range observers {
				f(change)
			}
		}
	}
	if lost {
		s.log.Warn().Int64("revision", rev).Msg("store watch resumed across an etcd compaction; the zone's change history starts afresh")
		s.historyLost()
	}
	s.markSeen(rev)
}

// ZoneSnapshot calls f with the zone serial and the devices that resolve,
// by name, both read at one etcd revision. The devices are read a page at a
// time at that revision as f walks them, so that a transfer of a million
// devices never holds the table twice; writes made meanwhile are not seen.
// A compaction past the revision during the walk ends it with an error (a
// secondary asks again).
func (s *Etcd) ZoneSnapshot(f func(serial uint32, devices iter.Seq2[string, Record]) error) error {
	ctx, cancel := s.request(context.Background())
	resp, err := s.cli.Get(ctx, s.prefix+etcdSerial)
	cancel()
	if err != nil {
		return fmt.Errorf("zone snapshot: %w", s.unavailable("read", err))
	}
	rev := resp.Header.Revision
	var serial uint32
	if len(resp.Kvs) > 0 {
		serial = parseSerial(resp.Kvs[0])
	}
	var bad error
	devices := func(yield func(string, Record) bool) {
		from, end := s.prefix+etcdDevices, clientv3.GetPrefixRangeEnd(s.prefix+etcdDevices)
		for {
			ctx, cancel := s.request(context.Background())
			page, err := s.cli.Get(ctx, from, clientv3.WithRange(end), clientv3.WithRev(rev), clientv3.WithLimit(int64(s.zonePage)))
			cancel()
			if err != nil {
				bad = fmt.Errorf("zone snapshot at revision %d: %w", rev, s.unavailable("read", err))
				return
			}
			for _, kv := range page.Kvs {
				var d Device
				if err := json.Unmarshal(kv.Value, &d); err != nil {
					bad = fmt.Errorf("zone snapshot: device %q is unreadable: %w", kv.Key, err)
					return
				}
				if rec, ok := resolvable(&d); ok && !yield(d.Name, rec) {
					return
				}
			}
			if !page.More || len(page.Kvs) == 0 {
				return
			}
			from = string(page.Kvs[len(page.Kvs)-1].Key) + "\x00"
		}
	}
	if err := f(serial, devices); err != nil {
		return err
	}
	return bad
}

// Ping returns an error unless a quorum of the cluster answers a
// linearizable read of the table within the timeout: what a commit needs.
func (s *Etcd) Ping() error {
	ctx, cancel := s.request(context.Background())
	defer cancel()
	if _, err := s.cli.Get(ctx, s.prefix+etcdSerial); err != nil {
		return fmt.Errorf("%w: the etcd cluster has no quorum or cannot be reached (%w); "+
			"changes are refused, DNS answers from memory", ErrUnavailable, err)
	}
	return nil
}

// Size returns the bytes the table's keys and values take in etcd (not the
// size of the members' database files, which hold other data and history).
// It reads the whole table, a page at a time, at most once every
// sizeEvery: the metrics ask for it at every scrape.
func (s *Etcd) Size() int64 {
	s.sizeMu.Lock()
	defer s.sizeMu.Unlock()
	if !s.sizeAt.IsZero() && time.Since(s.sizeAt) < sizeEvery {
		return s.size
	}
	var n int64
	_, err := s.eachPage(func(kvs []*etcdKV) error {
		for _, kv := range kvs {
			n += int64(len(kv.Key) + len(kv.Value))
		}
		return nil
	})
	if err != nil {
		return s.size
	}
	s.size, s.sizeAt = n, time.Now()
	return n
}

// sizeEvery is how long Size reports what it last read.
const sizeEvery = time.Minute

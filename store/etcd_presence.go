package store

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Link presence: which node of a cluster holds each device's Link agent,
// so that DNS can steer clients to that node and the other nodes can
// forward to it. Each node keeps one etcd lease for as long as it lives
// and puts, for every agent it accepts,
//
//	<prefix>/link/<device>   Holder JSON: {"node":"n1","addrs":["192.0.2.1:7443"]}
//
// attached to that lease; it deletes the key when the agent disconnects
// (only while the key still bears its lease: a node the agent moved to
// has written its own). A node that dies stops renewing its lease, and
// etcd deletes every key of the lease when it expires, so its agents drop
// out of every node's answers within DefaultPresenceTTL. The node also
// holds <prefix>/nodes/<name> under the same lease, so that two nodes
// never run under one name (their records would be taken for each
// other's). Nothing else is stored: no address of the agent, only the
// node's public relay addresses the operator configured.
const (
	etcdLink  = "/link/"
	etcdNodes = "/nodes/" // <prefix>/nodes/<name>: the node's Holder, under its lease: one node a name
	// DefaultPresenceTTL is the lease of a node's presence keys. 5 s: etcd
	// renews at a third of it, so two lost renewals in a row (a busy
	// member, a leader election, which takes about a second with etcd's
	// defaults) still do not expire a live node, while a dead node's
	// agents are gone from DNS in under 5 s; etcd refuses leases shorter
	// than about 1.5 s with its default election timeout anyway.
	DefaultPresenceTTL = 5 * time.Second
)

// Holder is the node that holds a device's Link agent: its name and the
// addresses (UDP, HOST:PORT) clients reach its relay at.
type Holder struct {
	Node  string           `json:"node"`
	Addrs []netip.AddrPort `json:"addrs"`
}

// PresenceConfig configures Etcd.NewPresence.
type PresenceConfig struct {
	// Self is this node: its name (unique in the cluster) and its relay's
	// advertised addresses. Node is required.
	Self Holder
	// TTL is the lease of this node's keys; zero means DefaultPresenceTTL.
	TTL    time.Duration
	Logger zerolog.Logger
}

// Presence is one node's view of Link presence in the cluster: it records
// the agents this node holds (Online, Offline) and mirrors every node's
// records in memory (Holder), fed by a watch. It is safe for concurrent
// use.
type Presence struct {
	s    *Etcd
	cfg  PresenceConfig
	self []byte // the JSON of cfg.Self
	log  zerolog.Logger

	mu        sync.Mutex
	local     map[string]bool // devices whose agent this node holds: want the key
	dirty     map[string]bool // devices whose key is to be put or deleted
	lease     clientv3.LeaseID
	holders   map[string]Holder
	observers []func(device string, h Holder, ok bool)
	wake      chan struct{}

	stop context.CancelFunc
	wg   sync.WaitGroup
}

// NewPresence starts recording this node's agents and watching every
// node's; Close stops both and withdraws this node's records.
func (s *Etcd) NewPresence(cfg PresenceConfig) (*Presence, error) {
	if cfg.Self.Node == "" || strings.ContainsAny(cfg.Self.Node, "/ ") {
		return nil, fmt.Errorf("store: presence needs a node name without '/' or spaces, got %q", cfg.Self.Node)
	}
	cfg.TTL = cmp.Or(cfg.TTL, DefaultPresenceTTL)
	self, err := json.Marshal(cfg.Self)
	if err != nil {
		return nil, err
	}
	p := &Presence{
		s: s, cfg: cfg, self: self, log: cfg.Logger,
		local: map[string]bool{}, dirty: map[string]bool{}, holders: map[string]Holder{}, wake: make(chan struct{}, 1),
	}
	ctx, stop := context.WithCancel(context.Background())
	p.stop = stop
	lease, alive, err := p.grant(ctx)
	if err != nil {
		stop()
		return nil, fmt.Errorf("link presence: %w", s.unavailable("grant a lease", err))
	}
	if err := p.claim(ctx, lease, cfg.TTL+2*time.Second); err != nil {
		stop()
		p.revoke(lease)
		return nil, err
	}
	rev, err := p.load(ctx)
	if err != nil {
		stop()
		p.revoke(lease)
		return nil, err
	}
	p.wg.Go(func() { p.watch(ctx, rev) })
	p.wg.Go(func() { p.sync(ctx, alive) })
	return p, nil
}

// claim takes this node's name for lease, waiting up to wait for a node
// of that name that died (this one, restarted) to let its lease expire.
func (p *Presence) claim(ctx context.Context, lease clientv3.LeaseID, wait time.Duration) error {
	key := p.s.prefix + etcdNodes + p.cfg.Self.Node
	deadline := time.Now().Add(wait)
	for logged := false; ; {
		rctx, cancel := p.s.request(ctx)
		resp, err := p.s.cli.Txn(rctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, string(p.self), clientv3.WithLease(lease))).Commit()
		cancel()
		switch {
		case err != nil:
			return fmt.Errorf("link presence: claim node name %q: %w", p.cfg.Self.Node, p.s.unavailable("commit", err))
		case resp.Succeeded:
			return nil
		case time.Now().After(deadline):
			return fmt.Errorf("node-name %q is in use by a running node: give every node its own name", p.cfg.Self.Node)
		case !logged:
			p.log.Info().Str("node", p.cfg.Self.Node).Msg("link presence: this node name is held, by this node before a crash or by another; waiting for its lease to expire")
			logged = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// revoke gives lease back (its keys go at once).
func (p *Presence) revoke(lease clientv3.LeaseID) error {
	ctx, cancel := p.s.request(context.Background())
	defer cancel()
	_, err := p.s.cli.Revoke(ctx, lease)
	return err
}

// Online records that this node now holds device's agent. It returns at
// once; the record is written in the background (and again whenever the
// lease had to be renewed).
func (p *Presence) Online(device string) { p.mark(device, true) }

// Offline records that device's agent left this node.
func (p *Presence) Offline(device string) { p.mark(device, false) }

func (p *Presence) mark(device string, on bool) {
	p.mu.Lock()
	if on {
		p.local[device] = true
	} else {
		delete(p.local, device)
	}
	p.dirty[device] = true
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Holder returns the node holding device's agent, from memory.
func (p *Presence) Holder(device string) (Holder, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	h, ok := p.holders[device]
	return h, ok
}

// OnChange registers f to be called, by the watch in revision order, with
// each change of a device's holder: every node's records, this node's own
// included (ok false: no agent online anywhere). f must not block.
func (p *Presence) OnChange(f func(device string, h Holder, ok bool)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.observers = append(p.observers, f)
}

func (p *Presence) notify(device string, h Holder, ok bool) {
	p.mu.Lock()
	obs := p.observers
	p.mu.Unlock()
	for _, f := range obs {
		f(device, h, ok)
	}
}

// Len returns how many devices have an agent online on any node.
func (p *Presence) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.holders)
}

// Self returns this node.
func (p *Presence) Self() Holder { return p.cfg.Self }

// Close stops recording and watching and revokes this node's lease, so
// that its agents leave every node's answers at once (a node that dies
// instead leaves them for the lease's TTL).
func (p *Presence) Close() error {
	if p.stop == nil {
		return nil
	}
	p.stop()
	p.wg.Wait()
	p.stop = nil
	p.mu.Lock()
	lease := p.lease
	p.mu.Unlock()
	if lease == 0 {
		return nil
	}
	if err := p.revoke(lease); err != nil {
		return fmt.Errorf("withdraw link presence: %w", p.s.unavailable("revoke lease", err))
	}
	return nil
}

// load reads every node's records and returns the revision they were read
// at.
func (p *Presence) load(ctx context.Context) (int64, error) {
	rctx, cancel := p.s.request(ctx)
	defer cancel()
	resp, err := p.s.cli.Get(rctx, p.s.prefix+etcdLink, clientv3.WithPrefix())
	if err != nil {
		return 0, fmt.Errorf("read link presence: %w", p.s.unavailable("read", err))
	}
	holders := map[string]Holder{}
	for _, kv := range resp.Kvs {
		var h Holder
		if json.Unmarshal(kv.Value, &h) == nil {
			holders[strings.TrimPrefix(string(kv.Key), p.s.prefix+etcdLink)] = h
		}
	}
	p.mu.Lock()
	old := p.holders
	p.holders = holders
	p.mu.Unlock()
	for d := range old {
		if _, ok := holders[d]; !ok {
			p.notify(d, Holder{}, false)
		}
	}
	for d, h := range holders {
		p.notify(d, h, true)
	}
	return resp.Header.Revision, nil
}

// watch keeps the holders in step with the cluster from revision rev on,
// resuming a broken watch and reloading after a compaction.
func (p *Presence) watch(ctx context.Context, rev int64) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for wr := range p.s.cli.Watch(wctx, p.s.prefix+etcdLink, clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
			if err := wr.Err(); err != nil {
				if wr.CompactRevision != 0 {
					if r, err := p.load(ctx); err == nil {
						rev = r
					}
				}
				break
			}
			backoff = 100 * time.Millisecond
			for _, ev := range wr.Events {
				device := strings.TrimPrefix(string(ev.Kv.Key), p.s.prefix+etcdLink)
				var h Holder
				ok := ev.Type == clientv3.EventTypePut && json.Unmarshal(ev.Kv.Value, &h) == nil
				p.mu.Lock()
				if ok {
					p.holders[device] = h
				} else {
					delete(p.holders, device)
				}
				p.mu.Unlock()
				p.notify(device, h, ok)
				rev = ev.Kv.ModRevision
			}
		}
		cancel()
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
			backoff = min(2*backoff, 2*time.Second)
		}
	}
}

// sync writes this node's records: it holds the lease (granting a new one,
// and marking every local device to be written again, when it is lost) and
// puts or deletes the key of each device marked, retrying what failed.
func (p *Presence) sync(ctx context.Context, alive <-chan *clientv3.LeaseKeepAliveResponse) {
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	for ctx.Err() == nil {
		p.mu.Lock()
		lease := p.lease
		p.mu.Unlock()
		if lease == 0 {
			var err error
			if lease, alive, err = p.grant(ctx); err == nil {
				// The name went with the old lease; a node that took it
				// meanwhile is a configuration error worth saying.
				if err = p.claim(ctx, lease, 0); err != nil {
					p.log.Error().Err(err).Msg("link presence: cannot take this node's name back")
				}
			} else {
				p.log.Warn().Err(err).Msg("link presence: cannot get a lease from etcd; retrying")
			}
		}
		if lease == 0 || !p.flush(ctx, lease) {
			retry.Reset(time.Second)
		}
		select {
		case <-ctx.Done():
			return
		case <-p.wake:
		case <-retry.C:
		case _, ok := <-alive:
			if !ok && ctx.Err() != nil {
				return // closed because we are stopping
			}
			if !ok {
				// The lease expired or the keep-alive broke: etcd has
				// deleted (or will delete) every key on it. Start over.
				p.log.Warn().Msg("link presence: lease lost; recording this node's agents again")
				alive = nil
				p.mu.Lock()
				p.lease = 0
				for d := range p.local {
					p.dirty[d] = true
				}
				p.mu.Unlock()
			}
		}
	}
}

// grant takes a new lease and keeps it alive until ctx ends.
func (p *Presence) grant(ctx context.Context) (clientv3.LeaseID, <-chan *clientv3.LeaseKeepAliveResponse, error) {
	rctx, cancel := p.s.request(ctx)
	defer cancel()
	g, err := p.s.cli.Grant(rctx, int64(p.cfg.TTL/time.Second))
	if err != nil {
		return 0, nil, err
	}
	alive, err := p.s.cli.KeepAlive(ctx, g.ID)
	if err != nil {
		return 0, nil, err
	}
	p.mu.Lock()
	p.lease = g.ID
	p.mu.Unlock()
	return g.ID, alive, nil
}

// presenceBatch is how many records one transaction puts: below etcd's
// default limit of 128 operations per transaction, so that a node taking
// over many agents at once (its peer died) writes them in few round trips.
const presenceBatch = 100

// flush writes every marked device's record under lease; it reports
// whether all succeeded (the failed ones stay marked).
func (p *Presence) flush(ctx context.Context, lease clientv3.LeaseID) bool {
	p.mu.Lock()
	var puts, deletes []string
	for d := range p.dirty {
		if p.local[d] {
			puts = append(puts, d)
		} else {
			deletes = append(deletes, d)
		}
	}
	clear(p.dirty)
	p.mu.Unlock()
	ok := true
	failed := func(err error, devices ...string) {
		if !errors.Is(err, context.Canceled) {
			p.log.Warn().Err(err).Int("devices", len(devices)).Msg("link presence: cannot record agents in etcd; retrying")
		}
		p.mu.Lock()
		for _, d := range devices {
			p.dirty[d] = true
		}
		p.mu.Unlock()
		ok = false
	}
	for len(puts) > 0 {
		batch := puts[:min(len(puts), presenceBatch)]
		puts = puts[len(batch):]
		ops := make([]clientv3.Op, 0, len(batch))
		for _, d := range batch {
			ops = append(ops, clientv3.OpPut(p.s.prefix+etcdLink+d, string(p.self), clientv3.WithLease(lease)))
		}
		rctx, cancel := p.s.request(ctx)
		_, err := p.s.cli.Txn(rctx).Then(ops...).Commit()
		cancel()
		if err != nil {
			failed(err, batch...)
		}
	}
	for _, d := range deletes {
		// Only our own record: an agent that moved to another node has
		// been recorded there since.
		key := p.s.prefix + etcdLink + d
		rctx, cancel := p.s.request(ctx)
		_, err := p.s.cli.Txn(rctx).If(clientv3.Compare(clientv3.LeaseValue(key), "=", lease)).
			Then(clientv3.OpDelete(key)).Commit()
		cancel()
		if err != nil {
			failed(err, d)
		}
	}
	return ok
}

package store

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// What an operator watches of a node on etcd (the daemon's metrics): how
// long requests to the cluster take, how far the watch that feeds the
// index is behind, and whether this node runs the housekeeping.

// EtcdLatencyBuckets are the upper bounds, in seconds, of the round-trip
// histogram (EtcdStats.RoundTrips): a member on the same LAN answers in a
// millisecond or two, one across regions in tens.
var EtcdLatencyBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}

// progressEvery is how often the watch asks the cluster to confirm that
// it has sent every event so far (a progress notification): the measure of
// the watch's lag.
const progressEvery = 2 * time.Second

// EtcdStats is a node's view of the cluster for its metrics.
type EtcdStats struct {
	// RoundTrips counts the requests to the cluster (reads and
	// transactions) by how long each took, cumulative per bucket of
	// EtcdLatencyBuckets.
	RoundTrips Histogram
	// WatchLag is how far the index may be behind the cluster: the time the
	// last progress request took to be confirmed through the watch, or, while
	// one is unanswered (a broken watch, a cluster without quorum), how long
	// it has waited.
	WatchLag time.Duration
	// Housekeeping says this node is the elected one that runs the sweeps.
	Housekeeping bool
}

// Histogram is a latency histogram: Buckets[i] counts the observations of
// at most EtcdLatencyBuckets[i] seconds (cumulative, as Prometheus has it).
type Histogram struct {
	Count   uint64
	Sum     float64 // seconds
	Buckets []uint64
}

// latencies is a lock-free histogram of round trips.
type latencies struct {
	count   atomic.Uint64
	sumNS   atomic.Int64
	buckets [16]atomic.Uint64 // per bucket, not cumulative; len(EtcdLatencyBuckets) used
}

func (l *latencies) observe(d time.Duration) {
	l.count.Add(1)
	l.sumNS.Add(int64(d))
	sec := d.Seconds()
	for i, b := range EtcdLatencyBuckets {
		if sec <= b {
			l.buckets[i].Add(1)
			return
		}
	}
}

func (l *latencies) snapshot() Histogram {
	h := Histogram{Count: l.count.Load(), Sum: time.Duration(l.sumNS.Load()).Seconds(), Buckets: make([]uint64, len(EtcdLatencyBuckets))}
	var n uint64
	for i := range EtcdLatencyBuckets {
		n += l.buckets[i].Load()
		h.Buckets[i] = n
	}
	return h
}

// timedKV is the client's KV with every request's round trip observed.
type timedKV struct {
	clientv3.KV
	l *latencies
}

func (k timedKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	defer k.since(time.Now())
	return k.KV.Get(ctx, key, opts...)
}

func (k timedKV) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	defer k.since(time.Now())
	return k.KV.Put(ctx, key, val, opts...)
}

func (k timedKV) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	defer k.since(time.Now())
	return k.KV.Delete(ctx, key, opts...)
}

func (k timedKV) Txn(ctx context.Context) clientv3.Txn { return timedTxn{k.KV.Txn(ctx), k} }

func (k timedKV) since(start time.Time) { k.l.observe(time.Since(start)) }

type timedTxn struct {
	clientv3.Txn
	k timedKV
}

func (t timedTxn) If(cs ...clientv3.Cmp) clientv3.Txn { return timedTxn{t.Txn.If(cs...), t.k} }
func (t timedTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	return timedTxn{t.Txn.Then(ops...), t.k}
}
func (t timedTxn) Else(ops ...clientv3.Op) clientv3.Txn {
	return timedTxn{t.Txn.Else(ops...), t.k}
}

func (t timedTxn) Commit() (*clientv3.TxnResponse, error) {
	defer t.k.since(time.Now())
	return t.Txn.Commit()
}

// progress measures the watch's lag with progress requests.
type progress struct {
	mu      sync.Mutex
	askedAt time.Time // zero when no request is outstanding
	lag     time.Duration
}

// ask sends a progress request on the watch stream of ctx unless one was
// sent lately and is not answered yet.
func (p *progress) ask(ctx context.Context, w clientv3.Watcher) {
	p.mu.Lock()
	switch {
	case p.askedAt.IsZero():
		p.askedAt = time.Now()
	case time.Since(p.askedAt) < progressEvery:
		p.mu.Unlock()
		return
	}
	// Unanswered for a while (the watch broke and resumed on a new
	// stream, say): ask again, still counting from the first request.
	p.mu.Unlock()
	// An error (no leader, no connection) leaves the request outstanding:
	// the lag grows until the watch confirms progress again.
	_ = w.RequestProgress(ctx)
}

// confirmed records a progress notification.
func (p *progress) confirmed() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.askedAt.IsZero() {
		p.lag, p.askedAt = time.Since(p.askedAt), time.Time{}
	}
}

func (p *progress) current() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.askedAt.IsZero() {
		return max(p.lag, time.Since(p.askedAt))
	}
	return p.lag
}

// askProgress asks for a progress notification on the watch every
// progressEvery, until ctx ends. The request must carry the same metadata
// as the watch (WithRequireLeader) to reach its stream.
func (s *Etcd) askProgress(ctx context.Context) {
	t := time.NewTicker(progressEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			rctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), s.timeout)
			s.progress.ask(rctx, s.cli)
			cancel()
		}
	}
}

// Stats returns the node's view of the cluster for its metrics.
func (s *Etcd) Stats() EtcdStats {
	return EtcdStats{RoundTrips: s.latencies.snapshot(), WatchLag: s.progress.current(), Housekeeping: s.Sweeping()}
}

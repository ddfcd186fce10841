package store

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// EtcdConfig says where the device table is kept in etcd (see OpenEtcd).
type EtcdConfig struct {
	// Endpoints are the client URLs of the cluster's members
	// (https://host:2379, or unix:///path for a local socket). Required.
	Endpoints []string
	// Prefix is the key prefix every key of this table starts with, so that
	// one cluster can hold several; "/nasreach" when empty. It must not end
	// with '/'.
	Prefix string
	// CertFile and KeyFile are the client certificate and its key, PEM, when
	// the cluster asks for one; CAFile is the CA that signed the members'
	// certificates (empty: the system's roots). Setting any of them makes
	// the connection TLS.
	CertFile, KeyFile, CAFile string
	// DialTimeout bounds the first connection and every request; zero means
	// 5s.
	DialTimeout time.Duration
}

// The layout of the table under the prefix. Every value is the same as the
// bbolt store keeps under the same name:
//
//	<prefix>/devices/<name>          the device record, record.Device JSON
//	<prefix>/accesscodes/<name>/<id> one access code, record.AccessCode JSON
//	<prefix>/quarantine/<name>       the deletion time, 8 bytes big-endian Unix ns
//	<prefix>/serial                  the zone serial, decimal
//	<prefix>/writer                  the random id of the node that made the last change
//
// Every change to a device also writes its record (unchanged, for a change
// of its access codes), so the record's ModRevision orders all changes to
// one device and is what a compare-and-swap compares; a change of what
// resolves also writes the serial, in the same transaction, so the serial
// moves by exactly one per change to the zone, in commit order, on every
// node.
const (
	etcdDevices     = "/devices/"
	etcdAccessCodes = "/accesscodes/"
	etcdQuarantine  = "/quarantine/"
	etcdSerial      = "/serial"
	etcdWriter      = "/writer" // the node that made the last change: see writerOp
)

// Etcd is the device table kept in an etcd cluster, for several nasreach
// nodes sharing one zone. Each node keeps its in-memory index, fed by a
// watch of the prefix (changes made by other nodes included); writes are
// etcd transactions that commit only if the device has not changed since it
// was read (compare-and-swap), retried on conflict. It is safe for
// concurrent use.
//
// Durability: a change is acknowledged once the transaction has committed,
// that is once a quorum of members has it in its log; by then this node's
// index shows it and its observers have been called. Observers are called
// by the watch goroutine, in revision order, for the changes of every node.
type Etcd struct {
	cli      *clientv3.Client
	prefix   string
	timeout  time.Duration
	dir      string // the data directory, for Backup's scratch file; may be empty
	reserved []string
	now      func() time.Time
	log      zerolog.Logger

	quarantine time.Duration
	uninitTTL  time.Duration

	memIndex
	// seen is the last revision the index reflects; seenCh is closed and
	// replaced each time it moves, waking writers waiting for their commit.
	seenMu sync.Mutex
	seen   int64
	seenCh chan struct{}

	// handoff holds the changes of this node's own commits, by revision,
	// from the watch until their writer calls the observers; under seenMu.
	handoff map[int64]handoff

	id   string        // this node's writer id (see writerOp)
	kick chan struct{} // wakes a broken watch waiting to resume

	sweeping atomic.Bool // this node is the elected sweeper (etcd_sweeper.go)

	reloadMu sync.Mutex
	onReload []func() // see OnReload

	writeMu sync.Mutex // one read-decide-commit round at a time (tryCommit)

	latencies latencies // round trips of requests to the cluster (etcd_stats.go)
	progress  progress  // the watch's lag

	zonePage int // devices per read of ZoneSnapshot, Backup and Size

	sizeMu sync.Mutex // Size's last reading
	size   int64
	sizeAt time.Time

	stop       context.CancelFunc
	background sync.WaitGroup
}

var _ Backend = (*Etcd)(nil)

// handoff is what the watch leaves to the writer of a revision.
type handoff struct {
	changes   []Change
	observers []func(Change)
}

// OpenEtcd connects to the cluster, loads the index from the table under
// ec.Prefix and starts watching it. cfg.Dir, when set, holds Backup's
// scratch file; the lifecycle settings of cfg (Reserved, Now, Logger,
// Quarantine, UninitializedTTL, SweepEvery) mean what they mean for Open;
// the background sweeps run on one node elected among those sharing the
// table (see sweepWhenElected).
func OpenEtcd(cfg Config, ec EtcdConfig) (*Etcd, error) {
	// ctx is the client's too: what the client does on its own (the
	// election's clean-up when a campaign is cancelled) ends with Close
	// rather than waiting for a cluster without quorum to answer.
	ctx, stop := context.WithCancel(context.Background())
	prefix, cli, timeout, err := dialEtcd(ctx, ec)
	if err != nil {
		stop()
		return nil, err
	}
	cfg = cfg.withDefaults()
	s := &Etcd{
		cli: cli, prefix: prefix, timeout: timeout, dir: cfg.Dir, reserved: cfg.Reserved, now: cfg.Now, log: cfg.Logger,
		quarantine: cfg.Quarantine, uninitTTL: cfg.UninitializedTTL, seenCh: make(chan struct{}),
		handoff: map[int64]handoff{}, kick: make(chan struct{}, 1),
		zonePage: 1000,
	}
	s.tab.Store(newDevTable(0))
	cli.KV = timedKV{cli.KV, &s.latencies}
	if s.id, err = NewToken(); err != nil {
		stop()
		cli.Close()
		return nil, err
	}
	s.stop = stop
	rev, err := s.reload(ctx)
	if err != nil {
		stop()
		cli.Close()
		if why := diagnoseClientCert(ec); why != nil {
			err = fmt.Errorf("%w (%v)", err, why)
		}
		return nil, fmt.Errorf("load the device table from etcd %v%s: %w", ec.Endpoints, prefix, err)
	}
	s.background.Go(func() { s.watch(ctx, rev) })
	s.background.Go(func() { s.askProgress(ctx) })
	if cfg.SweepEvery >= 0 {
		s.background.Go(func() { s.sweepWhenElected(ctx, cmp.Or(cfg.SweepEvery, time.Minute)) })
	}
	return s, nil
}

// etcdTLS builds the client's TLS configuration from the files of ec, or
// returns nil when none is set.
func etcdTLS(ec EtcdConfig) (*tls.Config, error) {
	if ec.CertFile == "" && ec.KeyFile == "" && ec.CAFile == "" {
		return nil, nil
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	if (ec.CertFile == "") != (ec.KeyFile == "") {
		return nil, errors.New("store: etcd client certificate and key must be given together")
	}
	if ec.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(ec.CertFile, ec.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("etcd client certificate %s: %w", ec.CertFile, err)
		}
		conf.Certificates = []tls.Certificate{cert}
	}
	if ec.CAFile != "" {
		pem, err := os.ReadFile(ec.CAFile)
		if err != nil {
			return nil, fmt.Errorf("etcd CA %s: %w", ec.CAFile, err)
		}
		conf.RootCAs = x509.NewCertPool()
		if !conf.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcd CA %s: no PEM certificate in it", ec.CAFile)
		}
	}
	return conf, nil
}

// Close stops the watch and the sweeper and closes the connection. Every
// acknowledged change has already been committed by the cluster.
func (s *Etcd) Close() error {
	if s.stop == nil {
		return nil
	}
	s.stop()
	s.background.Wait()
	s.stop = nil
	if err := s.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("close etcd client: %w", err)
	}
	return nil
}

// request returns a context for one request to the cluster, bounded by the
// configured timeout. It requires a leader: a member cut off from the
// others (no quorum) refuses at once, rather than when the timeout ends,
// so a write without quorum is refused in about an election timeout.
func (s *Etcd) request(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(clientv3.WithRequireLeader(ctx), s.timeout)
}

func (s *Etcd) key(kind, name string) string { return s.prefix + kind + name }

package daemon

import (
	"errors"
	"fmt"
	"strings"

	"github.com/nasreach/nasreach/metrics"
	"github.com/nasreach/nasreach/store"
)

// StoreConfig says where the device table is kept: the bbolt file in
// DataDir (the default) or an etcd cluster shared with other nodes.
type StoreConfig struct {
	// Backend is "bbolt" (or empty) or "etcd".
	Backend string `setting:"store"`
	// EtcdEndpoints are the client URLs of the etcd members; required with
	// Backend "etcd".
	EtcdEndpoints []string `setting:"etcd-endpoints"`
	// EtcdPrefix is the key prefix of the table; "" is "/nasreach".
	EtcdPrefix string `setting:"etcd-prefix"`
	// EtcdCert, EtcdKey and EtcdCA are the client certificate, its key and
	// the members' CA, PEM files, for a cluster that wants TLS.
	EtcdCert string `setting:"etcd-cert"`
	EtcdKey  string `setting:"etcd-key"`
	EtcdCA   string `setting:"etcd-ca"`
}

// validate checks the store settings, each error naming its setting.
func (c StoreConfig) validate(add func(setting string, err error)) {
	switch c.Backend {
	case "", "bbolt":
		if len(c.EtcdEndpoints) > 0 {
			add("etcd-endpoints", errors.New("etcd-endpoints: set only with store = \"etcd\""))
		}
	case "etcd":
		if len(c.EtcdEndpoints) == 0 {
			add("etcd-endpoints", errors.New("etcd-endpoints: store = \"etcd\" needs the client URLs of the cluster's members"))
		}
		if strings.HasSuffix(c.EtcdPrefix, "/") {
			add("etcd-prefix", fmt.Errorf("etcd-prefix %q: must not end with '/'", c.EtcdPrefix))
		}
		if (c.EtcdCert == "") != (c.EtcdKey == "") {
			add("etcd-cert", errors.New("etcd-cert and etcd-key: give both or neither"))
		}
	default:
		add("store", fmt.Errorf("store %q: want \"bbolt\" or \"etcd\"", c.Backend))
	}
}

// openStore opens the device table cfg names.
func openStore(cfg Config, sc store.Config) (store.Backend, error) {
	if cfg.Store.Backend != "etcd" {
		return store.Open(sc)
	}
	return store.OpenEtcd(sc, store.EtcdConfig{
		Endpoints: cfg.Store.EtcdEndpoints, Prefix: cfg.Store.EtcdPrefix,
		CertFile: cfg.Store.EtcdCert, KeyFile: cfg.Store.EtcdKey, CAFile: cfg.Store.EtcdCA,
	})
}

// storeCluster returns what the metrics report of a store shared by several
// nodes, or nil for a store of this node's own.
func (d *Daemon) storeCluster() func() metrics.StoreCluster {
	e, ok := d.store.(*store.Etcd)
	if !ok {
		return nil
	}
	return func() metrics.StoreCluster {
		s := e.Stats()
		return metrics.StoreCluster{
			Buckets:      store.EtcdLatencyBuckets,
			RoundTrips:   metrics.Histogram{Count: s.RoundTrips.Count, Sum: s.RoundTrips.Sum, Buckets: s.RoundTrips.Buckets},
			WatchLag:     s.WatchLag,
			Housekeeping: s.Housekeeping,
		}
	}
}

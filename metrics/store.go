package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// StoreCluster is what a node whose store is shared with other nodes
// (etcd) sees of the cluster, read at scrape time.
type StoreCluster struct {
	// Buckets are the upper bounds, in seconds, of RoundTrips' buckets.
	Buckets []float64
	// RoundTrips is the histogram of the requests to the cluster.
	RoundTrips Histogram
	// WatchLag is how far the node's view may be behind the cluster.
	WatchLag time.Duration
	// Housekeeping says this node is the one elected to run housekeeping.
	Housekeeping bool
}

// Histogram is a latency histogram: Buckets[i] is the cumulative count of
// observations of at most StoreCluster.Buckets[i] seconds.
type Histogram struct {
	Count   uint64
	Sum     float64
	Buckets []uint64
}

// registerStore registers nasreach_store_backend and, for a cluster, the
// cluster's metrics.
func (m *Metrics) registerStore(backend string, cluster func() StoreCluster) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "nasreach_store_backend", Help: "Always 1; the backend label says where the device table is kept (bbolt or etcd).",
		ConstLabels: prometheus.Labels{"backend": backend},
	}, func() float64 { return 1 }))
	if cluster == nil {
		return
	}
	m.reg.MustRegister(clusterCollector{
		roundTrips: prometheus.NewDesc("nasreach_store_etcd_request_seconds",
			"Round trips of this node's requests to the etcd cluster (reads and transactions).", nil, nil),
		lag: prometheus.NewDesc("nasreach_store_watch_lag_seconds",
			"How far this node's in-memory table may be behind etcd: the time the cluster took to confirm the watch's progress, or how long an unconfirmed request has waited.", nil, nil),
		leader: prometheus.NewDesc("nasreach_store_housekeeping_leader",
			"1 on the one node elected to run housekeeping (expiry, quarantine ends), else 0.", nil, nil),
		read: cluster,
	})
}

type clusterCollector struct {
	roundTrips, lag, leader *prometheus.Desc
	read                    func() StoreCluster
}

// Describe implements prometheus.Collector.
func (c clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.roundTrips
	ch <- c.lag
	ch <- c.leader
}

// Collect implements prometheus.Collector.
func (c clusterCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.read()
	buckets := make(map[float64]uint64, len(s.Buckets))
	for i, b := range s.Buckets {
		if i < len(s.RoundTrips.Buckets) {
			buckets[b] = s.RoundTrips.Buckets[i]
		}
	}
	ch <- prometheus.MustNewConstHistogram(c.roundTrips, s.RoundTrips.Count, s.RoundTrips.Sum, buckets)
	ch <- prometheus.MustNewConstMetric(c.lag, prometheus.GaugeValue, s.WatchLag.Seconds())
	leader := 0.0
	if s.Housekeeping {
		leader = 1
	}
	ch <- prometheus.MustNewConstMetric(c.leader, prometheus.GaugeValue, leader)
}

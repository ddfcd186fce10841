package metrics

import "github.com/prometheus/client_golang/prometheus"

// LinkCluster is what a node of a cluster reports about Link across
// nodes (Config.LinkCluster).
type LinkCluster struct {
	// Present is how many devices have an agent online on any node.
	Present int
	// MeshConns are the mesh connections to other nodes up now.
	MeshConns int
	// Forwarded counts the sessions this node forwarded to the node
	// holding the agent, ForwardedBytes their bytes both ways; Received
	// the sessions other nodes forwarded here.
	Forwarded, ForwardedBytes, Received uint64
}

// registerCluster registers the Link cluster metrics when f is set.
func (m *Metrics) registerCluster(f func() LinkCluster) {
	if f == nil {
		return
	}
	for _, c := range []struct {
		name, help string
		kind       prometheus.ValueType
		value      func(LinkCluster) float64
	}{
		{"nasreach_link_present_devices", "Devices whose Link agent is online on any node of the cluster (presence in etcd).",
			prometheus.GaugeValue, func(s LinkCluster) float64 { return float64(s.Present) }},
		{"nasreach_link_mesh_connections", "Mesh connections from this node to other nodes of the cluster, up now.",
			prometheus.GaugeValue, func(s LinkCluster) float64 { return float64(s.MeshConns) }},
		{"nasreach_link_forwarded_sessions_total", "Link sessions this node forwarded to the node holding the agent.",
			prometheus.CounterValue, func(s LinkCluster) float64 { return float64(s.Forwarded) }},
		{"nasreach_link_forwarded_bytes_total", "Bytes of the Link sessions this node forwarded to another node, both ways.",
			prometheus.CounterValue, func(s LinkCluster) float64 { return float64(s.ForwardedBytes) }},
		{"nasreach_link_forward_received_total", "Link sessions other nodes forwarded to this node's agents.",
			prometheus.CounterValue, func(s LinkCluster) float64 { return float64(s.Received) }},
	} {
		m.reg.MustRegister(labelled{
			kind: c.kind, desc: prometheus.NewDesc(c.name, c.help, nil, nil),
			values: func(emit func(float64, ...string)) { emit(c.value(f())) },
		})
	}
}

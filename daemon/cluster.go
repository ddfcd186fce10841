package daemon

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/nasreach/nasreach/internal/netaddr"
	"github.com/nasreach/nasreach/linkserver"
	"github.com/nasreach/nasreach/metrics"
	"github.com/nasreach/nasreach/store"
)

// ClusterConfig is what one node of several sharing a device table on etcd
// needs for Link across nodes: its name, where clients reach its relay
// (DNS steers them there), and the secret the nodes forward sessions to
// each other with. A node on bbolt uses none of it.
type ClusterConfig struct {
	// NodeName names this node among those sharing the table; "" is the
	// host name.
	NodeName string `setting:"node-name"`
	// Advertise are the addresses clients reach this node's Link relay at
	// (UDP; an IPv4 and an IPv6 one, say, on one port), which DNS answers
	// for the devices whose agent this node holds; empty: the relay's own
	// address when it listens on one.
	Advertise []netip.AddrPort `setting:"link-advertise"`
	// MeshKey is the secret every node shares to forward a client's
	// session to the node holding the agent; empty: no forwarding, a client
	// must reach that node (DNS steers it there).
	MeshKey string `setting:"link-mesh-key"`
}

// MinMeshKeyLen is the shortest mesh key accepted: 128 bits of base64.
const MinMeshKeyLen = 22

// validate checks the cluster settings, each error naming its setting;
// linkAddr is the Link relay's listen address.
func (c ClusterConfig) validate(backend, linkAddr string, add func(setting string, err error)) {
	if host, _, err := net.SplitHostPort(linkAddr); backend == "etcd" && err == nil && len(c.Advertise) == 0 {
		if ip, err := netip.ParseAddr(host); host == "" || (err == nil && ip.IsUnspecified()) {
			add("link-advertise", fmt.Errorf("link-advertise: the Link relay listens on every address (link = %q); say which addresses clients reach this node at", linkAddr))
		}
	}
	if backend != "etcd" {
		if len(c.Advertise) > 0 {
			add("link-advertise", errors.New("link-advertise: set only with store = \"etcd\" (a cluster of nodes)"))
		}
		if c.MeshKey != "" {
			add("link-mesh-key", errors.New("link-mesh-key: set only with store = \"etcd\" (a cluster of nodes)"))
		}
	}
	if c.NodeName != "" && (len(c.NodeName) > 63 || strings.ContainsAny(c.NodeName, "/ \t")) {
		add("node-name", fmt.Errorf("node-name %q: at most 63 characters, no '/' or spaces", c.NodeName))
	}
	for _, a := range c.Advertise {
		switch {
		case !a.IsValid() || a.Port() == 0:
			add("link-advertise", fmt.Errorf("link-advertise %s: want IP:PORT, e.g. 203.0.113.7:7443", a))
		case a.Addr().IsUnspecified():
			add("link-advertise", fmt.Errorf("link-advertise %s: an address clients can reach, not the unspecified one", a))
		case a.Port() != c.Advertise[0].Port():
			add("link-advertise", fmt.Errorf("link-advertise %s: every address on one port (%d), which the SRV record gives", a, c.Advertise[0].Port()))
		}
	}
	if c.MeshKey != "" && len(c.MeshKey) < MinMeshKeyLen {
		add("link-mesh-key", fmt.Errorf("link-mesh-key: at least %d characters (openssl rand -base64 32 makes one)", MinMeshKeyLen))
	}
}

// clustered reports whether this daemon is a node of a Link cluster: its
// device table on etcd and a Link relay.
func clustered(cfg Config) bool { return cfg.Store.Backend == "etcd" && cfg.Link.Addr != "" }

// startPresence opens the node's Link presence before the relay starts.
// Without advertised addresses it binds the relay's UDP socket itself, to
// learn the address (hands it over in lc.PacketConn).
func (d *Daemon) startPresence(cfg Config, lc *linkserver.Config) (*store.Presence, error) {
	es, ok := d.store.(*store.Etcd)
	if !ok {
		return nil, nil
	}
	cc := cfg.Cluster
	name := cc.NodeName
	if name == "" {
		var err error
		if name, err = os.Hostname(); err != nil {
			return nil, fmt.Errorf("node-name: not set, and no host name: %w", err)
		}
	}
	addrs := cc.Advertise
	if len(addrs) == 0 {
		pc, err := net.ListenPacket("udp", lc.Addr)
		if err != nil {
			return nil, fmt.Errorf("link listen %s: %w", lc.Addr, err)
		}
		local := netaddr.AddrPort(pc.LocalAddr())
		if local.Addr().IsUnspecified() {
			pc.Close()
			return nil, &SettingError{Setting: "link-advertise", Err: fmt.Errorf(
				"link-advertise: the Link relay listens on every address (%s); say which address clients reach this node at", lc.Addr)}
		}
		lc.PacketConn, addrs = pc, []netip.AddrPort{local}
	}
	p, err := es.NewPresence(store.PresenceConfig{
		Self: store.Holder{Node: name, Addrs: addrs}, Logger: d.component("link presence"),
	})
	if err != nil {
		if lc.PacketConn != nil {
			lc.PacketConn.Close()
		}
		return nil, err
	}
	d.presence.Store(p)
	d.log.Info().Str("node", name).Str("advertise", fmt.Sprint(addrs)).Bool("forwarding", cc.MeshKey != "").
		Msg("link cluster node: recording agents in etcd, DNS steers clients to the node holding each")
	return p, nil
}

// linkRelays is the DNS server's steering source: the advertised
// addresses of the node holding device's agent.
func (d *Daemon) linkRelays(device string) []netip.AddrPort {
	p := d.presence.Load()
	if p == nil {
		return nil
	}
	h, ok := p.Holder(device)
	if !ok {
		return nil
	}
	return h.Addrs
}

// linkCluster is the metrics' view of Link across nodes.
func (d *Daemon) linkCluster() metrics.LinkCluster {
	var s metrics.LinkCluster
	if p := d.presence.Load(); p != nil {
		s.Present = p.Len()
	}
	if d.ready.Load() && d.relays.link != nil {
		m := d.relays.link.MeshStats()
		s.MeshConns, s.Forwarded, s.ForwardedBytes, s.Received = m.Conns, m.Sessions, m.Bytes, m.Received
	}
	return s
}

// steering is the DNS server's LinkRelays for a cluster node, else nil.
func (d *Daemon) steering(cfg Config) func(string) []netip.AddrPort {
	if !clustered(cfg) {
		return nil
	}
	return d.linkRelays
}

// linkClusterMetrics is the metrics' LinkCluster for a cluster node, else
// nil.
func (d *Daemon) linkClusterMetrics(cfg Config) func() metrics.LinkCluster {
	if !clustered(cfg) {
		return nil
	}
	return d.linkCluster
}

package main

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/nasreach/nasreach/daemon"
	"github.com/nasreach/nasreach/linkserver"
	"github.com/urfave/cli/v3"
)

// defaultLinkAddr is the development default of the Link relay: loopback, an
// unprivileged port, UDP for QUIC and TCP for the TCP carrier. In production
// --link is 0.0.0.0:7443 and --link-tcp 0.0.0.0:443.
const defaultLinkAddr = "127.0.0.1:17443"

// linkFlags are serve's flags for the Link relay. Its certificate comes from
// --tls-cert and --tls-key, which turnFlags defines and both relays share;
// without them a self-signed one is generated once into the data directory.
func linkFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "link", Value: defaultLinkAddr, Usage: `Link relay UDP listen address for QUIC ("" disables it; production: 0.0.0.0:7443)`, Sources: cli.EnvVars("NASREACH_LINK")},
		&cli.StringFlag{Name: "link-tcp", Value: defaultLinkAddr, Usage: `Link relay TCP listen address: TLS for agents and clients whose UDP is blocked ("" disables it; production: 0.0.0.0:443)`, Sources: cli.EnvVars("NASREACH_LINK_TCP")},
		&cli.IntFlag{Name: "link-max-agents", Value: linkserver.DefaultMaxAgents, Usage: "NAS agents connected at once", Sources: cli.EnvVars("NASREACH_LINK_MAX_AGENTS")},
		&cli.IntFlag{Name: "link-max-streams", Value: linkserver.DefaultMaxStreamsPerDevice, Usage: "Link sessions open to one device at once", Sources: cli.EnvVars("NASREACH_LINK_MAX_STREAMS")},
		&cli.FloatFlag{Name: "link-stream-rate", Value: linkserver.DefaultStreamRate, Usage: "new Link sessions per second per client address (burst: --link-stream-burst)", Sources: cli.EnvVars("NASREACH_LINK_STREAM_RATE")},
		&cli.IntFlag{Name: "link-stream-burst", Value: linkserver.DefaultStreamBurst, Usage: "new Link sessions a client address may open at once", Sources: cli.EnvVars("NASREACH_LINK_STREAM_BURST")},
		&cli.BoolFlag{Name: "link-direct", Value: true, Usage: "introduce Link clients to agents for direct (hole-punched) paths; false keeps every byte on the relay", Sources: cli.EnvVars("NASREACH_LINK_DIRECT")},
		&cli.StringFlag{Name: "node-name", Usage: "this node's name among the nodes sharing a device table on etcd", DefaultText: "the host name", Sources: cli.EnvVars("NASREACH_NODE_NAME")},
		&cli.StringSliceFlag{Name: "link-advertise", Usage: "IP:PORT clients reach this node's Link relay at, which DNS gives for the devices whose agent it holds (repeatable: IPv4 and IPv6, one port; with --store etcd)", DefaultText: "--link's address, unless 0.0.0.0 or [::]", Sources: cli.EnvVars("NASREACH_LINK_ADVERTISE")},
		&cli.StringFlag{Name: "link-mesh-key", Usage: "secret every node of the cluster shares to forward Link sessions to the node holding the agent (or the systemd credential link-mesh-key; with --store etcd)", Sources: cli.EnvVars("NASREACH_LINK_MESH_KEY")},
		&cli.DurationFlag{Name: "link-idle-timeout", Value: linkserver.DefaultIdleTimeout, Usage: "close a Link connection silent this long (agents and clients send keep-alives well within it)", Sources: cli.EnvVars("NASREACH_LINK_IDLE_TIMEOUT")},
	}
}

// clusterConfigFromFlags reads the cluster settings of linkFlags; the mesh
// key may come from the systemd credential link-mesh-key instead.
func clusterConfigFromFlags(cmd *cli.Command) (daemon.ClusterConfig, error) {
	c := daemon.ClusterConfig{NodeName: cmd.String("node-name"), MeshKey: cmd.String("link-mesh-key")}
	for _, v := range cmd.StringSlice("link-advertise") {
		a, err := netip.ParseAddrPort(v)
		if err != nil {
			return c, fmt.Errorf("--link-advertise %q: want IP:PORT, e.g. 203.0.113.7:7443 or [2001:db8::7]:7443: %w", v, err)
		}
		c.Advertise = append(c.Advertise, a)
	}
	if c.MeshKey == "" {
		key, _, err := readCredential(meshKeyCredential)
		if err != nil {
			return c, err
		}
		c.MeshKey = key
	}
	return c, nil
}

// linkConfigFromFlags reads linkFlags.
func linkConfigFromFlags(cmd *cli.Command) (daemon.LinkConfig, error) {
	c := daemon.LinkConfig{
		Addr: cmd.String("link"), TCPAddr: cmd.String("link-tcp"),
		MaxAgents: cmd.Int("link-max-agents"), MaxStreams: cmd.Int("link-max-streams"),
		StreamRate: cmd.Float("link-stream-rate"), StreamBurst: cmd.Int("link-stream-burst"),
		IdleTimeout: cmd.Duration("link-idle-timeout"), Direct: cmd.Bool("link-direct"),
	}
	if c.MaxAgents < 1 || c.MaxStreams < 1 || c.StreamBurst < 1 || c.StreamRate <= 0 {
		return c, fmt.Errorf("--link-max-agents, --link-max-streams, --link-stream-burst and --link-stream-rate must be positive")
	}
	if c.IdleTimeout < time.Second {
		return c, fmt.Errorf("--link-idle-timeout %v: want at least 1s", c.IdleTimeout)
	}
	return c, nil
}

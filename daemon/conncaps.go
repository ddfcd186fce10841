package daemon

import (
	"cmp"

	"github.com/nasreach/nasreach/internal/connlimit"
	"github.com/nasreach/nasreach/linkserver"
	"github.com/nasreach/nasreach/metrics"
	"github.com/nasreach/nasreach/turnserver"
)

// The connection caps, sized here and nowhere else.
//
// Every TCP connection holds a file descriptor, and HTTP, DNS over TCP,
// STUN/TURN over TCP, TURN over TLS and Link over TCP share the process's limit
// (RLIMIT_NOFILE, which the systemd unit sets with LimitNOFILE=) with the
// store, the logs, the UDP sockets and TURN's relay sockets. Out of
// descriptors, every accept fails (EMFILE) and an owner's update waits
// behind whoever took them. So, from the file limit L:
//
//	reserved  = reservedFDs (512)
//	          + turn-max-allocations when TURN runs (a relay socket each)
//	per TCP listener that runs (http, dns, stun or turn, turns, link-tcp):
//	  total cap    = (L - reserved) / number of those listeners
//	  per source   = total / 100, at least 8 (connlimit.PerSource)
//
// The totals add up to no more than L - reserved, so no listener can take
// another's descriptors, and no source network (an IPv4 address, an IPv6
// /64) more than a hundredth of one listener's. With the unit's
// LimitNOFILE=65536 and the defaults (TURN with 10,000 allocations, TLS and
// link-tcp): 11,004 connections per listener, 110 per source; without TLS
// 13,756 and 137. A trusted proxy (trusted-proxy) is not capped per
// source on the HTTP listener: it carries every client's connections.
//
// Link's QUIC connections hold no descriptor but memory (about 64 KiB
// each): its cap is linkConnsPerAgent per agent allowed (link-max-agents),
// room for the agents and their clients, and follows a reload of
// link-max-agents. Per source, the same hundredth.
const (
	// reservedFDs are the descriptors kept for everything but the capped
	// connections: standard streams, the store and its lock, the
	// connection log, the listening and UDP sockets (TURN's one per CPU and
	// transport), the metrics listener's connections (metrics.MaxConns),
	// the local operator socket's (api.MaxLocalConns), backups and the
	// runtime's own.
	reservedFDs = 512
	// minListenerConns is the least total cap a listener gets, however
	// low the file limit; then the caps may add up to more than it has, and
	// the daemon says so at start.
	minListenerConns = 64
	// linkConnsPerAgent is the Link relay's connection cap per agent
	// allowed.
	linkConnsPerAgent = 4
	// DefaultFileLimit is the file limit the caps are sized from where the
	// system does not tell it.
	DefaultFileLimit = 1024
	// maxFileLimit bounds the file limit taken into account (the kernel's
	// default fs.nr_open), so that an unlimited one sizes finite caps.
	maxFileLimit = 1 << 20
)

// connCaps are the caps of every listener, as sized from one file limit.
type connCaps struct {
	fileLimit uint64
	http, dns connlimit.Config
	// stream is the STUN/TURN port's TCP listener (the standalone STUN
	// server's with TURN off), turns TURN over TLS.
	stream, turns connlimit.Config
	link          connlimit.Config
	// linkTCP is the Link relay's TCP carrier (agents and clients whose
	// UDP is blocked), a TCP listener like the others.
	linkTCP connlimit.Config
	// short is how many descriptors short the file limit is of giving
	// each TCP listener minListenerConns; zero when it is not.
	short uint64
}

// sizeConnCaps sizes the caps of the listeners cfg runs from a file limit.
func sizeConnCaps(fileLimit uint64, cfg Config) connCaps {
	fileLimit = min(fileLimit, maxFileLimit)
	c := connCaps{fileLimit: fileLimit}
	turn := cfg.TURN.Addr != "" && cfg.TURN.Enabled
	reserved := uint64(reservedFDs)
	if turn {
		reserved += uint64(max(cmp.Or(cfg.TURN.MaxAllocations, turnserver.DefaultMaxAllocations), 0))
	}
	var listeners []*connlimit.Config
	if cfg.HTTPAddr != "" {
		listeners = append(listeners, &c.http)
	}
	if cfg.DNSAddr != "" {
		listeners = append(listeners, &c.dns)
	}
	if cfg.TURN.Addr != "" {
		listeners = append(listeners, &c.stream)
	}
	if turn && cfg.CertFile != "" {
		listeners = append(listeners, &c.turns)
	}
	if cfg.Link.Addr != "" && cfg.Link.TCPAddr != "" {
		listeners = append(listeners, &c.linkTCP)
	}
	n := uint64(max(len(listeners), 1))
	need := reserved + n*minListenerConns
	share := uint64(minListenerConns)
	if fileLimit >= need {
		share = (fileLimit - reserved) / n
	} else {
		c.short = need - fileLimit
	}
	for _, l := range listeners {
		l.Max = int(share)
	}
	c.link = linkCaps(cfg.Link)
	return c
}

// linkCaps sizes the Link relay's cap from its agent limit.
func linkCaps(lc LinkConfig) connlimit.Config {
	return connlimit.Config{Max: linkConnsPerAgent * max(cmp.Or(lc.MaxAgents, linkserver.DefaultMaxAgents), 1)}
}

// logConnCaps logs the caps at start, and warns when the file limit is too
// low to give each listener its least.
func (d *Daemon) logConnCaps() {
	c := d.caps
	ev := d.log.Info().Uint64("file_limit", c.fileLimit)
	for _, l := range []struct {
		name string
		cfg  connlimit.Config
	}{{"http", c.http}, {"dns", c.dns}, {"stun_turn", c.stream}, {"turns", c.turns}, {"link", c.link}, {"link_tcp", c.linkTCP}} {
		if l.cfg.Max > 0 {
			ev = ev.Int(l.name, l.cfg.Max).Int(l.name+"_per_source", connlimit.PerSource(l.cfg.Max))
		}
	}
	ev.Msg("connection caps")
	if c.short > 0 {
		d.log.Warn().Uint64("file_limit", c.fileLimit).Uint64("at_least", c.fileLimit+c.short).
			Msg("file limit too low for the listeners and TURN allocations configured: connections may fail with too many open files; raise LimitNOFILE")
	}
}

// connsRefused counts each listener's connections refused over a cap, for
// nasreach_connections_refused_total; nothing until the daemon is ready.
func (d *Daemon) connsRefused() map[string]metrics.ConnsRefused {
	if !d.ready.Load() {
		return nil
	}
	out := map[string]metrics.ConnsRefused{}
	add := func(listener string, st connlimit.Stats) {
		out[listener] = metrics.ConnsRefused{Total: st.RefusedTotal, Source: st.RefusedSource}
	}
	if d.api.Addr().IsValid() {
		add("http", d.api.ConnStats())
	}
	add("dns", d.dns.TCPConnStats())
	r := d.relays
	if r.stun != nil {
		add("stun", r.stun.TCPConnStats())
	}
	if r.turn != nil {
		add("turn", r.turn.TCPConnStats())
		if r.turnsAddr.IsValid() {
			add("turns", r.turn.TLSConnStats())
		}
	}
	if r.link != nil {
		add("link", r.link.ConnStats())
		if r.link.TCPAddr().IsValid() {
			add("link_tcp", r.link.TCPConnStats())
		}
	}
	return out
}

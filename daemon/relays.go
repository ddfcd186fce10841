package daemon

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/netip"

	"github.com/nasreach/nasreach/internal/certfile"
	"github.com/nasreach/nasreach/linkserver"
	"github.com/nasreach/nasreach/stun"
	"github.com/nasreach/nasreach/turnserver"
)

// relays are STUN/TURN and the Link relay. With TURN on, STUN Binding is
// answered on the TURN port by a stun.Responder; with TURN off a standalone
// stun.Server answers it.
type relays struct {
	turn *turnserver.Server
	stun *stun.Server
	link *linkserver.Server

	stunAddr, turnsAddr netip.AddrPort
	linkFingerprint     string
}

// startRelays starts what cfg asks for, sending each relay's
// connection-log records to d.Log, and puts each on the daemon's stop list
// as it starts. The operator's certificate (cfg.CertFile) is watched once
// and served by both relays. There is no graceful drain at shutdown (a
// relayed call cannot be finished for its users): every session and
// allocation ends at once and is logged.
func (d *Daemon) startRelays(cfg Config) error {
	d.relays = &relays{}
	var cert *certfile.Watcher
	if cfg.CertFile != "" {
		var err error
		if cert, err = certfile.New(cfg.CertFile, cfg.KeyFile, 0); err != nil {
			return fmt.Errorf("--tls-cert: %w", err)
		}
	}
	if err := d.startSTUN(cfg, cert); err != nil {
		return err
	}
	return d.startLink(cfg, cert)
}

func (d *Daemon) startSTUN(cfg Config, cert *certfile.Watcher) error {
	r, tc := d.relays, cfg.TURN
	if tc.Addr == "" {
		return nil
	}
	if !tc.Enabled {
		s, err := stun.New(stun.Config{Addr: tc.Addr, Software: tc.Software, TCPConns: d.caps.stream, Logger: d.component("stun")})
		if err != nil {
			return err
		}
		d.onStop("stun", s.Shutdown)
		r.stun, r.stunAddr = s, s.Addr()
		return nil
	}
	responder, err := stun.NewResponder(stun.ResponderConfig{Software: tc.Software})
	if err != nil {
		return fmt.Errorf("--stun-software: %w", err)
	}
	rc := turnserver.Config{
		Addr: tc.Addr, Realm: tc.Realm, Users: tc.Users, Secret: tc.Secret,
		RelayIP: tc.RelayIP, AllowPeers: tc.AllowPeers,
		MaxAllocations: tc.MaxAllocations, MaxAllocationsPerUser: tc.UserQuota,
		MaxLifetime: tc.MaxLifetime, BandwidthPerAllocation: tc.Bandwidth,
		Binding: responder.Answer, Devices: d.store, Events: d.Log,
		TCPConns: d.caps.stream, TLSConns: d.caps.turns,
		Logger: d.component("turn"),
	}
	if cert != nil {
		rc.TLS = &tls.Config{GetCertificate: cert.GetCertificate, MinVersion: tls.VersionTLS12}
		rc.TLSAddr = tc.TLSAddr
	}
	t, err := turnserver.New(rc)
	if err != nil {
		return err
	}
	// Not a server to stop: the Binding counters are logged after TURN has
	// stopped (the list runs in reverse), when they are final.
	d.onStop("stun binding counters", func(context.Context) error {
		st := responder.Stats()
		d.log.Info().Uint64("answered", st.Answered).Uint64("dropped", st.Dropped).Msg("stun binding counters")
		return nil
	})
	d.onStop("turn", t.Shutdown)
	r.turn, r.stunAddr, r.turnsAddr = t, t.Addr(), t.TLSAddr()
	return nil
}

// startLink starts the Link relay with the operator's certificate, or the
// self-signed one in the data directory, and logs the fingerprint agents
// and clients pin.
func (d *Daemon) startLink(cfg Config, cert *certfile.Watcher) error {
	r, lc := d.relays, cfg.Link
	if lc.Addr == "" {
		return nil
	}
	c := linkserver.Config{
		Addr: lc.Addr, TCPAddr: lc.TCPAddr, TCPConns: d.caps.linkTCP, Store: d.store,
		MaxAgents: lc.MaxAgents, MaxStreamsPerDevice: lc.MaxStreams,
		StreamRate: lc.StreamRate, StreamBurst: lc.StreamBurst, IdleTimeout: lc.IdleTimeout,
		STUN: r.stunAddr, DisableDirect: !lc.Direct,
		Conns: d.caps.link, Events: d.Log, Logger: d.component("link"),
	}
	if cert != nil {
		c.GetCertificate = cert.GetCertificate
		r.linkFingerprint = linkserver.Fingerprint(cert.Current().Leaf)
	} else {
		var err error
		if c.Certificate, r.linkFingerprint, err = linkserver.LoadCert(cfg.DataDir); err != nil {
			return err
		}
	}
	p, err := d.startPresence(cfg, &c)
	if err != nil {
		return err
	}
	if p != nil {
		c.Presence, c.MeshKey = p, cfg.Cluster.MeshKey
	}
	l, err := linkserver.New(c)
	if err != nil {
		if p != nil {
			p.Close()
		}
		return err
	}
	d.onStop("link relay", l.Shutdown)
	r.link = l
	if p != nil {
		// Stopped before the relay: the lease is revoked, so this node's
		// agents leave every node's DNS at once, not after the lease's TTL.
		d.onStop("link presence", func(context.Context) error { return p.Close() })
	}
	ev := d.log.Info().Str("link", l.Addr().String())
	if l.TCPAddr().IsValid() {
		ev = ev.Str("link_tcp", l.TCPAddr().String())
	}
	ev.Str("relay_fingerprint", r.linkFingerprint).Bool("direct", lc.Direct).
		Msg("link relay ready; agents and clients pin it with --relay-fingerprint")
	return nil
}

// linkAgents is the devices_online gauge: agents connected to the relay.
func (d *Daemon) linkAgents() int {
	if !d.ready.Load() || d.relays.link == nil {
		return 0
	}
	return d.relays.link.Agents()
}

// linkCarriers is the Link relay's connections by transport.
func (d *Daemon) linkCarriers() map[string]int {
	if !d.ready.Load() || d.relays.link == nil {
		return nil
	}
	return d.relays.link.Carriers()
}

// linkSessions is the sessions_active gauge of the Link relay.
func (d *Daemon) linkSessions() int {
	if !d.ready.Load() || d.relays.link == nil {
		return 0
	}
	return d.relays.link.Sessions()
}

// runningTURN is the TURN relay once the daemon is ready, else nil.
func (d *Daemon) runningTURN() *turnserver.Server {
	if !d.ready.Load() {
		return nil
	}
	return d.relays.turn
}

// turnAllocations is the sessions_active gauge of TURN.
func (d *Daemon) turnAllocations() int {
	if t := d.runningTURN(); t != nil {
		return t.Stats().Allocations
	}
	return 0
}

// turnRefused counts what TURN refused, by reason.
func (d *Daemon) turnRefused() map[string]uint64 {
	t := d.runningTURN()
	if t == nil {
		return nil
	}
	st := t.Stats()
	return map[string]uint64{
		turnserver.RefusedAuth: st.AuthFailed, turnserver.RefusedQuota: st.QuotaRefused,
		turnserver.RefusedPeer: st.PeerRefused, turnserver.RefusedRequest: st.RequestRefused,
		"bandwidth": st.BandwidthDropped, "malformed": st.Malformed,
	}
}

package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/netip"

	"github.com/nasreach/nasreach/connlog"
	"github.com/nasreach/nasreach/internal/certfile"
	"github.com/nasreach/nasreach/linkserver"
	"github.com/nasreach/nasreach/store"
	"github.com/nasreach/nasreach/stun"
	"github.com/nasreach/nasreach/turnserver"
	"github.com/rs/zerolog"
)

// relays are STUN/TURN and the Link relay. With TURN on, STUN Binding is
// answered on the TURN port by a stun.Responder; with TURN off a standalone
// stun.Server answers it.
type relays struct {
	log       zerolog.Logger
	turn      *turnserver.Server
	responder *stun.Responder
	stun      *stun.Server
	link      *linkserver.Server

	stunAddr, turnsAddr netip.AddrPort
	linkFingerprint     string
}

// startRelays starts what cfg asks for, sending each relay's
// connection-log records to events. The operator's certificate
// (cfg.CertFile) is watched once and served by both relays.
func startRelays(cfg Config, st *store.Store, events func(connlog.Event), log zerolog.Logger) (_ *relays, err error) {
	r := &relays{log: log}
	defer func() {
		if err != nil {
			r.shutdown(context.Background()) //nolint:errcheck // the start error is the one to report
		}
	}()
	var cert *certfile.Watcher
	if cfg.CertFile != "" {
		if cert, err = certfile.New(cfg.CertFile, cfg.KeyFile, 0); err != nil {
			return nil, fmt.Errorf("--tls-cert: %w", err)
		}
	}
	if err := r.startSTUN(cfg, st, cert, events); err != nil {
		return nil, err
	}
	if err := r.startLink(cfg, st, cert, events); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *relays) startSTUN(cfg Config, st *store.Store, cert *certfile.Watcher, events func(connlog.Event)) error {
	tc := cfg.TURN
	if tc.Addr == "" {
		return nil
	}
	if !tc.Enabled {
		s, err := stun.New(stun.Config{Addr: tc.Addr, Software: tc.Software, Logger: r.log.With().Str("component", "stun").Logger()})
		if err != nil {
			return err
		}
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
		Binding: responder.Answer, Devices: st, Events: events,
		Logger: r.log.With().Str("component", "turn").Logger(),
	}
	if cert != nil {
		rc.TLS = &tls.Config{GetCertificate: cert.GetCertificate, MinVersion: tls.VersionTLS12}
		rc.TLSAddr = tc.TLSAddr
	}
	t, err := turnserver.New(rc)
	if err != nil {
		return err
	}
	r.turn, r.responder, r.stunAddr, r.turnsAddr = t, responder, t.Addr(), t.TLSAddr()
	return nil
}

// startLink starts the Link relay with the operator's certificate, or the
// self-signed one in the data directory, and logs the fingerprint agents
// and clients pin.
func (r *relays) startLink(cfg Config, st *store.Store, cert *certfile.Watcher, events func(connlog.Event)) error {
	lc := cfg.Link
	if lc.Addr == "" {
		return nil
	}
	c := linkserver.Config{
		Addr: lc.Addr, Store: st,
		MaxAgents: lc.MaxAgents, MaxStreamsPerDevice: lc.MaxStreams,
		StreamRate: lc.StreamRate, StreamBurst: lc.StreamBurst, IdleTimeout: lc.IdleTimeout,
		Events: events, Logger: r.log.With().Str("component", "link").Logger(),
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
	l, err := linkserver.New(c)
	if err != nil {
		return err
	}
	r.link = l
	r.log.Info().Str("link", l.Addr().String()).Str("relay_fingerprint", r.linkFingerprint).
		Msg("link relay ready; agents and clients pin it with --relay-fingerprint")
	return nil
}

// shutdown stops the relays. There is no graceful drain (a relayed call
// cannot be finished for its users): every session and allocation ends at
// once and is logged.
func (r *relays) shutdown(ctx context.Context) error {
	var errs []error
	if r.link != nil {
		errs = append(errs, r.link.Shutdown(ctx))
	}
	if r.turn != nil {
		errs = append(errs, r.turn.Shutdown(ctx))
		st := r.responder.Stats()
		r.log.Info().Uint64("answered", st.Answered).Uint64("dropped", st.Dropped).Msg("stun binding counters")
	}
	if r.stun != nil {
		errs = append(errs, r.stun.Shutdown(ctx))
	}
	return errors.Join(errs...)
}

// linkAgents is the devices_online gauge: agents connected to the relay.
func (d *Daemon) linkAgents() int {
	if !d.ready.Load() || d.relays.link == nil {
		return 0
	}
	return d.relays.link.Agents()
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
		"auth": st.AuthFailed, "quota": st.QuotaRefused, "peer": st.PeerRefused,
		"bandwidth": st.BandwidthDropped, "malformed": st.Malformed,
	}
}

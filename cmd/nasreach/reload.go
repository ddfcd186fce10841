package main

import (
	"context"
	"reflect"
	"slices"
	"strings"

	"github.com/nasreach/nasreach/linkserver"
	"github.com/nasreach/nasreach/turnserver"
	"github.com/rs/zerolog"
)

// reloadFrom re-reads the configuration serve would start with (args as
// os.Args: flags, environment and config file) and applies it. A config that
// does not parse is refused whole and the running one is kept.
func (d *daemon) reloadFrom(ctx context.Context, args []string) {
	next, err := parseServeConfig(ctx, args)
	if err != nil {
		d.log.Error().Err(err).Msg("reload refused; the running configuration stays")
		return
	}
	applied, restart := d.reload(next)
	ev := d.log.Info()
	if len(restart) > 0 {
		ev = d.log.Warn().Strs("needs_restart", restart)
	}
	ev.Strs("applied", applied).Msg("configuration reloaded")
}

// reload applies what can change without dropping a query or a session and
// returns the settings it changed and those that need a restart.
func (d *daemon) reload(next daemonConfig) (applied, restart []string) {
	cur := d.cfg
	live := []struct {
		name  string
		same  bool
		apply func()
	}{
		{"ttl", cur.TTL == next.TTL, func() { _ = d.dns.SetTTL(next.TTL) }},
		{"exact-names", cur.ExactNames == next.ExactNames, func() { d.dns.SetExactNamesOnly(next.ExactNames) }},
		{"open-registration", cur.OpenRegistration == next.OpenRegistration, func() { d.api.SetOpenRegistration(next.OpenRegistration) }},
		{"trusted-proxy", reflect.DeepEqual(cur.TrustedProxies, next.TrustedProxies), func() { d.api.SetTrustedProxies(next.TrustedProxies) }},
		{"log-queries", cur.Privacy.LogQueries == next.Privacy.LogQueries, func() { d.logQuery.Store(next.Privacy.LogQueries) }},
		{"log-level", cur.LogLevel == next.LogLevel, func() { zerolog.SetGlobalLevel(next.LogLevel) }},
		{"turn-allow-peer", reflect.DeepEqual(cur.TURN.Relay.AllowPeers, next.TURN.Relay.AllowPeers), func() {
			if t := d.runningTURN(); t != nil {
				t.SetAllowPeers(next.TURN.Relay.AllowPeers)
			}
		}},
	}
	// The Link relay's limits change together, for the next agents and
	// sessions; nothing admitted is closed.
	cl, nl := cur.Link, next.Link
	linkLimits := []struct {
		name string
		same bool
	}{
		{"link-max-agents", cl.MaxAgents == nl.MaxAgents}, {"link-max-streams", cl.MaxStreams == nl.MaxStreams},
		{"link-stream-rate", cl.StreamRate == nl.StreamRate}, {"link-stream-burst", cl.StreamBurst == nl.StreamBurst},
	}
	linkChanged := false
	for _, l := range linkLimits {
		if !l.same {
			applied, linkChanged = append(applied, l.name), true
		}
	}
	if linkChanged && d.link != nil {
		d.link.SetLimits(linkserver.Limits{MaxAgents: nl.MaxAgents, MaxStreamsPerDevice: nl.MaxStreams,
			StreamRate: nl.StreamRate, StreamBurst: nl.StreamBurst})
	}
	d.cfg.Link.MaxAgents, d.cfg.Link.MaxStreams = nl.MaxAgents, nl.MaxStreams
	d.cfg.Link.StreamRate, d.cfg.Link.StreamBurst = nl.StreamRate, nl.StreamBurst
	for _, s := range live {
		if !s.same {
			s.apply()
			applied = append(applied, s.name)
		}
	}
	// TURN users may be refused (a malformed pair): then they stay as they
	// are, and the next reload tries again.
	if !slices.Equal(cur.TURN.Relay.Users, next.TURN.Relay.Users) {
		if t := d.runningTURN(); t == nil {
			d.cfg.TURN.Relay.Users = next.TURN.Relay.Users
			applied = append(applied, "turn-user")
		} else if err := t.SetUsers(next.TURN.Relay.Users); err != nil {
			d.log.Error().Err(err).Msg("reload: turn-user refused; the running TURN users stay")
		} else {
			d.cfg.TURN.Relay.Users = next.TURN.Relay.Users
			applied = append(applied, "turn-user")
		}
	}
	fixed := []struct {
		name string
		a, b any
	}{
		{"data", cur.DataDir, next.DataDir}, {"zone", strings.TrimSuffix(cur.Zone, "."), strings.TrimSuffix(next.Zone, ".")},
		{"dns", cur.DNSAddr, next.DNSAddr}, {"http", cur.HTTPAddr, next.HTTPAddr}, {"metrics", cur.MetricsAddr, next.MetricsAddr},
		{"admin-token", cur.AdminToken, next.AdminToken}, {"ns", cur.NameServers, next.NameServers}, {"reserved", cur.Reserved, next.Reserved},
		{"log-dir", cur.Privacy.LogDir, next.Privacy.LogDir}, {"log-retention", cur.Privacy.LogRetention, next.Privacy.LogRetention},
		{"log-max-bytes", cur.Privacy.LogMaxBytes, next.Privacy.LogMaxBytes}, {"log-encrypt-to", cur.Privacy.LogRecipients, next.Privacy.LogRecipients},
		{"ipv6-mask-bits", cur.Privacy.IPv6Bits, next.Privacy.IPv6Bits}, {"quarantine", cur.Privacy.Quarantine, next.Privacy.Quarantine},
		{"uninitialized-ttl", cur.Privacy.UninitializedTTL, next.Privacy.UninitializedTTL},
		{"stun", cur.TURN.Relay.Addr, next.TURN.Relay.Addr}, {"turn", cur.TURN.Enabled, next.TURN.Enabled},
		{"stun-software", cur.TURN.Software, next.TURN.Software}, {"turn-realm", cur.TURN.Relay.Realm, next.TURN.Relay.Realm},
		{"turn-secret", cur.TURN.Relay.Secret, next.TURN.Relay.Secret}, {"turn-relay-ip", cur.TURN.Relay.RelayIP, next.TURN.Relay.RelayIP},
		{"turns", cur.TURN.Relay.TLSAddr, next.TURN.Relay.TLSAddr},
		{"turn-max-allocations", cur.TURN.Relay.MaxAllocations, next.TURN.Relay.MaxAllocations},
		{"turn-user-quota", cur.TURN.Relay.MaxAllocationsPerUser, next.TURN.Relay.MaxAllocationsPerUser},
		{"turn-max-lifetime", cur.TURN.Relay.MaxLifetime, next.TURN.Relay.MaxLifetime},
		{"turn-bandwidth", cur.TURN.Relay.BandwidthPerAllocation, next.TURN.Relay.BandwidthPerAllocation},
		{"tls-cert", cur.Link.CertFile, next.Link.CertFile}, {"tls-key", cur.Link.KeyFile, next.Link.KeyFile},
		{"link", cur.Link.Addr, next.Link.Addr}, {"link-idle-timeout", cur.Link.IdleTimeout, next.Link.IdleTimeout},
	}
	for _, f := range fixed {
		if !reflect.DeepEqual(f.a, f.b) {
			restart = append(restart, f.name)
		}
	}
	// What was applied is now the running configuration; what needs a
	// restart is not, so the next reload reports it again.
	d.cfg.TTL, d.cfg.ExactNames, d.cfg.OpenRegistration = next.TTL, next.ExactNames, next.OpenRegistration
	d.cfg.TrustedProxies, d.cfg.Privacy.LogQueries, d.cfg.LogLevel = next.TrustedProxies, next.Privacy.LogQueries, next.LogLevel
	d.cfg.TURN.Relay.AllowPeers = next.TURN.Relay.AllowPeers
	return applied, restart
}

// runningTURN is the TURN relay, or nil when the daemon runs none.
func (d *daemon) runningTURN() *turnserver.Server {
	if d.turn == nil {
		return nil
	}
	return d.turn.turn
}

package main

import (
	"context"
	"reflect"
	"strings"

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
	}
	for _, s := range live {
		if !s.same {
			s.apply()
			applied = append(applied, s.name)
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
	return applied, restart
}

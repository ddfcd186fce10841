package daemon

import (
	"context"
	"errors"
	"slices"

	"github.com/nasreach/nasreach/dnsserver"
	"github.com/nasreach/nasreach/linkserver"
	"github.com/nasreach/nasreach/sdnotify"
)

// liveSetting is a setting Reload applies to the running daemon.
type liveSetting struct {
	names []string // settings applied together
	apply func(d *Daemon, next *Config) error
}

// live are the settings with a setter; every other setting in Config needs a
// restart (settings and changed find them all, so a new flag is safe by
// default). Each apply copies what it applied into d.cfg.
var live = []liveSetting{
	{[]string{"ttl"}, func(d *Daemon, n *Config) error {
		if err := d.dns.SetTTL(n.TTL); err != nil {
			return err
		}
		d.cfg.TTL = n.TTL
		return nil
	}},
	{[]string{"exact-names"}, func(d *Daemon, n *Config) error {
		d.dns.SetExactNamesOnly(n.ExactNames)
		d.cfg.ExactNames = n.ExactNames
		return nil
	}},
	// DNS rate limiting changes as a whole, from the next answer on; the
	// buckets keep what they counted.
	{[]string{"rrl-rate", "rrl-nxdomain-rate", "rrl-error-rate", "rrl-slip", "rrl-exempt"}, func(d *Daemon, n *Config) error {
		if err := d.dns.SetRRL(n.RRL.dns()); err != nil {
			return err
		}
		d.cfg.RRL = n.RRL
		return nil
	}},
	{[]string{"open-registration"}, func(d *Daemon, n *Config) error {
		d.api.SetOpenRegistration(n.OpenRegistration)
		d.cfg.OpenRegistration = n.OpenRegistration
		return nil
	}},
	{[]string{"trusted-proxy"}, func(d *Daemon, n *Config) error {
		d.api.SetTrustedProxies(n.TrustedProxies)
		d.cfg.TrustedProxies = n.TrustedProxies
		return nil
	}},
	{[]string{"log-queries"}, func(d *Daemon, n *Config) error {
		d.logQuery.Store(n.Privacy.LogQueries)
		d.cfg.Privacy.LogQueries = n.Privacy.LogQueries
		return nil
	}},
	{[]string{"log-level"}, func(d *Daemon, n *Config) error {
		if d.cfg.SetLogLevel == nil {
			return errNeedsRestart
		}
		d.cfg.SetLogLevel(n.LogLevel)
		d.cfg.LogLevel = n.LogLevel
		return nil
	}},
	// Secondaries and TSIG keys change together, as knotc reload changes
	// ACLs: the next transfer request is judged by them, and the NOTIFY
	// senders restart for the new list.
	{[]string{"secondary", "tsig-key"}, func(d *Daemon, n *Config) error {
		keys, err := dnsserver.NewStaticKeys(n.Transfer.TSIGKeys)
		if err != nil {
			return err
		}
		if err := d.dns.SetTransfer(n.Transfer.Secondaries, dnsserver.Keys{keys}); err != nil {
			return err
		}
		d.cfg.Transfer = n.Transfer
		return nil
	}},
	{[]string{"turn-allow-peer"}, func(d *Daemon, n *Config) error {
		if t := d.relays.turn; t != nil {
			t.SetAllowPeers(n.TURN.AllowPeers)
		}
		d.cfg.TURN.AllowPeers = n.TURN.AllowPeers
		return nil
	}},
	// TURN users may be refused (a malformed pair): then they stay as they
	// are, and the next reload tries again.
	{[]string{"turn-user"}, func(d *Daemon, n *Config) error {
		if t := d.relays.turn; t != nil {
			if err := t.SetUsers(n.TURN.Users); err != nil {
				return err
			}
		}
		d.cfg.TURN.Users = n.TURN.Users
		return nil
	}},
	// The Link relay's limits change together, for the next agents and
	// sessions, and its connection cap follows the agent limit; nothing
	// admitted is closed.
	{[]string{"link-max-agents", "link-max-streams", "link-stream-rate", "link-stream-burst"}, func(d *Daemon, n *Config) error {
		nl := n.Link
		if l := d.relays.link; l != nil {
			l.SetLimits(linkserver.Limits{MaxAgents: nl.MaxAgents, MaxStreamsPerDevice: nl.MaxStreams,
				StreamRate: nl.StreamRate, StreamBurst: nl.StreamBurst, Conns: linkCaps(nl), TCPConns: d.caps.linkTCP})
		}
		d.cfg.Link.MaxAgents, d.cfg.Link.MaxStreams = nl.MaxAgents, nl.MaxStreams
		d.cfg.Link.StreamRate, d.cfg.Link.StreamBurst = nl.StreamRate, nl.StreamBurst
		return nil
	}},
	// Direct paths turned off close the ones running (agents and clients
	// hear it on their Info streams); turned on, clients punch again.
	{[]string{"link-direct"}, func(d *Daemon, n *Config) error {
		if l := d.relays.link; l != nil {
			l.SetDirect(n.Link.Direct)
		}
		d.cfg.Link.Direct = n.Link.Direct
		return nil
	}},
}

// errNeedsRestart is what a live setter returns when it cannot apply its
// setting in this daemon after all.
var errNeedsRestart = errors.New("needs a restart")

// Reload applies next to what can change without dropping a query or a
// session and returns the settings it changed and those that need a
// restart. What needs a restart is not applied, so the next reload reports
// it again; a live setting that was refused (e.g. a malformed TURN user) is
// logged and stays as it was. The wiring fields of next (Logger, Now,
// SetLogLevel, Version) are ignored.
func (d *Daemon) Reload(next Config) (applied, needRestart []string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	ctx := context.Background()
	if d.sd.Enabled() {
		_ = d.sd.Notify(ctx, sdnotify.Reloading)
		defer func() { _ = d.sd.Notify(ctx, sdnotify.Ready, sdnotify.Status(d.status())) }()
	}
	diff := changed(&d.cfg, &next)
	for _, s := range live {
		var names []string
		for _, n := range s.names {
			if slices.Contains(diff, n) {
				names = append(names, n)
			}
		}
		if len(names) == 0 {
			continue
		}
		switch err := s.apply(d, &next); {
		case err == nil:
			applied = append(applied, names...)
		case errors.Is(err, errNeedsRestart):
			needRestart = append(needRestart, names...)
		default:
			d.log.Error().Err(err).Strs("settings", names).Msg("reload refused these settings; they stay as they were")
		}
		diff = slices.DeleteFunc(diff, func(n string) bool { return slices.Contains(names, n) })
	}
	needRestart = append(needRestart, diff...)
	slices.Sort(applied)
	slices.Sort(needRestart)
	ev := d.log.Info()
	if len(needRestart) > 0 {
		ev = d.log.Warn().Strs("needs_restart", needRestart)
	}
	ev.Strs("applied", applied).Msg("configuration reloaded")
	return applied, needRestart
}

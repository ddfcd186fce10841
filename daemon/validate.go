package daemon

import (
	"crypto/tls"
	"errors"
	"fmt"

	"github.com/nasreach/nasreach/api"
	"github.com/nasreach/nasreach/dnsserver"
	"github.com/nasreach/nasreach/internal/listen"
	"github.com/nasreach/nasreach/turnserver"
)

// SettingError is a setting whose value the daemon cannot run with. Setting
// is the flag and config key (e.g. "zone"), so that the command line can
// point at the line of the config file that set it.
type SettingError struct {
	Setting string
	Err     error
}

func (e *SettingError) Error() string { return e.Err.Error() }
func (e *SettingError) Unwrap() error { return e.Err }

// Validate checks every setting of c without touching the disk or the
// network (it reads the TLS certificate and key, nothing more) and returns
// all the problems at once, each a *SettingError, in the order of the
// Config's fields. New calls it before it creates anything, so a refused
// configuration leaves no admin token or store behind; `nasreach config
// check` calls it too.
func (c Config) Validate() error {
	var errs []error
	add := func(setting string, err error) {
		if err != nil {
			errs = append(errs, &SettingError{Setting: setting, Err: err})
		}
	}
	if c.DataDir == "" {
		add("data", errors.New("data: the data directory must be set"))
	}
	add("zone", dnsserver.Config{Zone: c.Zone}.Validate())
	for _, a := range []struct{ setting, addr string }{
		{"dns", c.DNSAddr}, {"http", c.HTTPAddr}, {"metrics", c.MetricsAddr},
		{"stun", c.TURN.Addr}, {"turns", c.TURN.TLSAddr}, {"link", c.Link.Addr}, {"link-tcp", c.Link.TCPAddr},
	} {
		if a.addr != "" {
			add(a.setting, prefix(a.setting, listen.CheckAddr(a.addr)))
		}
	}
	if c.AdminToken != "" && len(c.AdminToken) < api.MinAdminTokenLen {
		add("admin-token", fmt.Errorf("admin-token: must be at least %d characters", api.MinAdminTokenLen))
	}
	// Each dnsserver setting is checked on its own, with defaults for the
	// others, so that every error is tied to the setting that caused it.
	if (dnsserver.Config{Zone: c.Zone}).Validate() == nil {
		add("ns", dnsserver.Config{Zone: c.Zone, NameServers: c.NameServers}.Validate())
	}
	add("ttl", dnsserver.Config{TTL: c.TTL}.Validate())
	add("caa", dnsserver.Config{CAA: c.CAA}.Validate())
	keys, err := dnsserver.NewStaticKeys(c.Transfer.TSIGKeys)
	add("tsig-key", err)
	add("secondary", dnsserver.Config{Transfer: dnsserver.TransferConfig{Secondaries: c.Transfer.Secondaries, Keys: keys}}.Validate())
	for _, r := range []struct {
		setting string
		rrl     dnsserver.RRL
	}{
		{"rrl-rate", dnsserver.RRL{Rate: c.RRL.Rate}}, {"rrl-nxdomain-rate", dnsserver.RRL{NXDomainRate: c.RRL.NXDomainRate}},
		{"rrl-error-rate", dnsserver.RRL{ErrorRate: c.RRL.ErrorRate}}, {"rrl-slip", dnsserver.RRL{Slip: c.RRL.Slip}},
		{"rrl-exempt", dnsserver.RRL{Exempt: c.RRL.Exempt}},
	} {
		add(r.setting, r.rrl.Validate())
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		add("tls-cert", errors.New("tls-cert and tls-key go together (the key may be the systemd credential tls-key): give both, or neither"))
	} else if c.CertFile != "" {
		if _, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile); err != nil {
			add("tls-cert", fmt.Errorf("tls-cert %s with tls-key %s: %w", c.CertFile, c.KeyFile, err))
		}
	}
	c.Store.validate(add)
	c.Cluster.validate(c.Store.Backend, c.Link.Addr, add)
	if c.TURN.Addr != "" && c.TURN.Enabled {
		if _, err := turnserver.RelayAddr(c.TURN.Addr, c.TURN.RelayIP); err != nil {
			add("turn-relay-ip", fmt.Errorf("stun: %w", err))
		}
	}
	return errors.Join(errs...)
}

// prefix names setting in err, or returns nil.
func prefix(setting string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", setting, err)
}

package daemon

import (
	"path/filepath"
	"strings"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/connlog"
	"github.com/nasreach/nasreach/dnsserver"
	"github.com/nasreach/nasreach/internal/netaddr"
	"github.com/nasreach/nasreach/metrics"
	"github.com/rs/zerolog"
)

// openConnLog starts the connection log.
func openConnLog(cfg Config, log zerolog.Logger) (*connlog.Log, error) {
	p := cfg.Privacy
	if p.LogDir == "" {
		p.LogDir = filepath.Join(cfg.DataDir, "logs")
	}
	return connlog.New(connlog.Config{
		Dir: p.LogDir, Retention: p.LogRetention, MaxBytes: p.LogMaxBytes, Recipients: p.LogRecipients,
		IPv6Prefix: p.IPv6Bits, Now: cfg.Now, Logger: log,
	})
}

// Log takes one connection event from the API or a relay: the metrics count
// it and the connection log keeps it, masked.
func (d *Daemon) Log(e connlog.Event) {
	d.metrics.ObserveEvent(e)
	d.connlog.Log(e)
}

// observeQuery is the DNS server's query hook: metrics always, and with
// log-queries one masked connection-log event per query.
func (d *Daemon) observeQuery(q dnsserver.Query) {
	d.metrics.ObserveQuery(q.Type, q.Rcode)
	if !d.logQuery.Load() {
		return
	}
	d.connlog.Log(connlog.Event{
		Service: "dns", Kind: "query", Outcome: metrics.RcodeName(q.Rcode), Client: q.Client(),
		Detail: strings.TrimSuffix(strings.ToLower(q.Name()), ".") + " " + dns.TypeToString[q.Type],
	})
}

// transferConfig is the DNS server's zone transfer settings, counted in
// metrics. Validate has checked the keys.
func (d *Daemon) transferConfig(c TransferConfig) dnsserver.TransferConfig {
	keys, _ := d.tsigKeys(c)
	return dnsserver.TransferConfig{
		Secondaries: c.Secondaries, Keys: keys,
		OnTransfer: func(e dnsserver.TransferEvent) { d.metrics.ObserveTransfer(e.Kind, e.Outcome) },
		OnNotify:   func(e dnsserver.NotifyEvent) { d.metrics.ObserveNotify(e.Outcome) },
	}
}

// tsigKeys are every TSIG key the DNS server knows: the configured ones
// (the secondaries'), then each device's own, which may only update the
// device's names. A configured key named like a device's FQDN hides the
// device's key.
func (d *Daemon) tsigKeys(c TransferConfig) (dnsserver.KeySource, error) {
	static, err := dnsserver.NewStaticKeys(c.TSIGKeys)
	if err != nil {
		return nil, err
	}
	return dnsserver.Keys{static, dnsserver.DeviceKeys{Zone: d.cfg.Zone, Store: d.store}}, nil
}

// observeUpdate is the DNS server's dynamic update hook: metrics count
// every UPDATE, and the connection log keeps, masked, those a device's key
// signed, as it keeps dyndns2's. An unsigned or badly signed UPDATE may
// come over UDP from a forged address: it is counted, not logged.
func (d *Daemon) observeUpdate(u dnsserver.UpdateEvent) {
	e := connlog.Event{Service: "dns", Kind: "update", Outcome: u.Outcome, Device: u.Device, Client: netaddr.Addr(u.Remote), Detail: u.Detail}
	d.metrics.ObserveEvent(e)
	if u.Device != "" {
		d.connlog.Log(e)
	}
}

// dnsDropped and dnsSlipped are what DNS rate limiting held back, for the
// metrics; nothing until the daemon is ready (the DNS server starts after
// the metrics).
func (d *Daemon) dnsDropped() uint64 {
	if !d.ready.Load() {
		return 0
	}
	return d.dns.RRLStats().Dropped
}

func (d *Daemon) dnsSlipped() uint64 {
	if !d.ready.Load() {
		return 0
	}
	return d.dns.RRLStats().Slipped
}

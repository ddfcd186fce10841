// Package metrics serves the daemon's Prometheus metrics, /healthz, /readyz
// and a status page for a browser on their own listener (loopback by default). Labels never carry a device
// name or an address: only query types, rcodes, services and outcomes.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/connlog"
	"github.com/nasreach/nasreach/internal/connlimit"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
)

// Config configures New. The funcs are read at scrape time; nil ones are left out.
type Config struct {
	// Addr is the listen address of /metrics, /healthz and /readyz.
	// Required unless Listener is set.
	Addr string
	// Listener, when set, is served instead of binding Addr; it is closed
	// at Shutdown.
	Listener net.Listener
	// Version is reported in nasreach_build_info.
	Version string
	// Devices returns the number of registered devices.
	Devices func() int
	// Online returns the number of devices whose agent is connected.
	Online func() int
	// Sessions return, per service ("link", "turn"), the relay sessions or
	// allocations in progress.
	Sessions map[string]func() int
	// LinkConns returns the Link relay's connections held now, by transport
	// ("quic", "tcp").
	LinkConns func() map[string]int
	// LinkCluster returns a cluster node's Link presence and forwarding
	// counters (cluster.go); nil on a node on its own.
	LinkCluster func() LinkCluster
	// TURNRefused returns what the TURN relay refused or dropped so far, by
	// reason (auth, quota, peer, request, bandwidth, malformed).
	TURNRefused func() map[string]uint64
	// ConnsRefused returns, per listener ("http", "dns", "stun", "turn",
	// "turns", "link", "link_tcp"), the connections refused so far over a cap.
	ConnsRefused func() map[string]ConnsRefused
	// DNSLimited return, per action ("dropped", "slipped"), the UDP answers
	// DNS rate limiting held back so far.
	DNSLimited map[string]func() uint64
	// StoreBytes returns the size of the store file.
	StoreBytes func() int64
	// LogWritten and LogDropped return the connection log's counters.
	LogWritten, LogDropped func() uint64
	// Ready returns nil when the daemon is ready to serve, else the reason.
	Ready func() error
	// Listeners returns where the daemon serves, for the status page.
	Listeners func() []Listener
	// Logger receives the server's own problems.
	Logger zerolog.Logger
}

// ConnsRefused counts one listener's connections refused over a cap: the
// listener's total cap, or the cap of the source network they came from.
type ConnsRefused struct {
	Total, Source uint64
}

// MaxConns caps the connections the metrics listener holds at once (and
// connlimit's default share of it per source): a scraper and a browser need
// a few, and the listener must not take the descriptors the daemon's other
// listeners are sized to.
const MaxConns = 64

// Metrics holds the collectors and the HTTP server for them.
type Metrics struct {
	reg     *prometheus.Registry
	queries *prometheus.CounterVec
	events  *prometheus.CounterVec
	updates *prometheus.CounterVec
	bytes   *prometheus.CounterVec
	// paths, punches and toDirect follow Link's direct paths (linkPunch).
	paths    *prometheus.CounterVec
	punches  *prometheus.CounterVec
	toDirect prometheus.Histogram
	xfrs     *prometheus.CounterVec
	notifys  *prometheus.CounterVec
	// hot caches the query counter of common (type, rcode) pairs so the DNS
	// path does no label hashing.
	hot     [len(hotTypes)][24]atomic.Pointer[prometheus.Counter]
	cfg     Config
	started time.Time // for the status page's uptime
	srv     *http.Server
	ln      net.Listener
	done    chan error
	once    sync.Once
}

var hotTypes = [...]uint16{dns.TypeA, dns.TypeAAAA, dns.TypeSOA, dns.TypeNS, dns.TypeANY, dns.TypeTXT, dns.TypeMX, dns.TypeCAA}

// New builds the registry, binds and serves it until Shutdown.
func New(cfg Config) (*Metrics, error) {
	if cfg.Addr == "" && cfg.Listener == nil {
		return nil, errors.New("metrics: Config.Addr is required")
	}
	m := &Metrics{cfg: cfg, reg: prometheus.NewRegistry(), started: time.Now()}
	m.queries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nasreach_dns_queries_total", Help: "DNS queries answered, by query type and response code.",
	}, []string{"type", "rcode"})
	m.updates = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nasreach_updates_total", Help: "Address update attempts, by the way they came (via: http for dyndns2 and REST, dns for RFC 2136 UPDATE) and outcome.",
	}, []string{"via", "outcome"})
	m.events = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nasreach_connection_events_total", Help: "Connection events (relay sessions, TURN allocations, updates, refusals), by service, kind and outcome.",
	}, []string{"service", "kind", "outcome"})
	m.bytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nasreach_relayed_bytes_total", Help: "Bytes relayed, by service and direction (in = from the client).",
	}, []string{"service", "direction"})
	m.paths = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nasreach_link_paths_total", Help: "Link clients settling on a path to a device after trying for a direct one: direct, or relay (no direct path, or a direct path lost).",
	}, []string{"path"})
	m.punches = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nasreach_link_punch_total", Help: "Link hole-punching attempts, by outcome (direct, no_answer, failed, refused).",
	}, []string{"outcome"})
	m.toDirect = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "nasreach_link_time_to_direct_seconds", Help: "Time from a client's first session to a device until its direct path is up.",
		Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16},
	})
	m.xfrs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nasreach_dns_transfers_total", Help: "Zone transfer requests, by kind (axfr, ixfr, ixfr-full: an IXFR answered with the whole zone) and outcome (ok, uptodate, refused, notauth, formerr, udp, failed).",
	}, []string{"kind", "outcome"})
	m.notifys = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nasreach_dns_notifies_total", Help: "NOTIFYs sent to secondaries, each try, by outcome (ok, timeout, error, or the secondary's rcode).",
	}, []string{"outcome"})
	m.reg.MustRegister(m.queries, m.updates, m.events, m.bytes, m.paths, m.punches, m.toDirect, m.xfrs, m.notifys,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "nasreach_build_info", Help: "Always 1; the version label says which build runs.",
		ConstLabels: prometheus.Labels{"version": cmpOr(cfg.Version, "dev")},
	}, func() float64 { return 1 }))
	gauge := func(name, help string, f func() float64) {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
	}
	counter := func(name, help string, f func() float64) {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f))
	}
	if f := cfg.Devices; f != nil {
		gauge("nasreach_devices", "Registered devices.", func() float64 { return float64(f()) })
	}
	if f := cfg.Online; f != nil {
		gauge("nasreach_devices_online", "Devices whose Link agent is connected.", func() float64 { return float64(f()) })
	}
	for service, f := range cfg.Sessions {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "nasreach_sessions_active", Help: "Relay sessions and TURN allocations in progress, by service.",
			ConstLabels: prometheus.Labels{"service": service},
		}, func() float64 { return float64(f()) }))
	}
	if f := cfg.LinkConns; f != nil {
		m.reg.MustRegister(labelled{
			kind: prometheus.GaugeValue,
			desc: prometheus.NewDesc("nasreach_link_connections",
				"Connections of agents and clients to the Link relay, by transport: quic, or tcp where UDP is blocked.", []string{"transport"}, nil),
			values: func(emit func(float64, ...string)) {
				for transport, n := range f() {
					emit(float64(n), transport)
				}
			},
		})
	}
	m.registerCluster(cfg.LinkCluster)
	if f := cfg.TURNRefused; f != nil {
		m.reg.MustRegister(labelled{
			kind: prometheus.CounterValue,
			desc: prometheus.NewDesc("nasreach_turn_refused_total",
				"TURN requests and datagrams refused, by reason (auth, quota, peer, request, bandwidth, malformed).", []string{"reason"}, nil),
			values: func(emit func(float64, ...string)) {
				for reason, v := range f() {
					emit(float64(v), reason)
				}
			},
		})
	}
	if f := cfg.ConnsRefused; f != nil {
		m.reg.MustRegister(labelled{
			kind: prometheus.CounterValue,
			desc: prometheus.NewDesc("nasreach_connections_refused_total",
				"Connections refused over a cap, by listener and by reason: total (the listener's cap) or source (the cap per source address, IPv6 /64).",
				[]string{"listener", "reason"}, nil),
			values: func(emit func(float64, ...string)) {
				for listener, v := range f() {
					emit(float64(v.Total), listener, "total")
					emit(float64(v.Source), listener, "source")
				}
			},
		})
	}
	for action, f := range cfg.DNSLimited {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "nasreach_dns_rrl_total", Help: "UDP answers held back by response rate limiting, by action (dropped; slipped: sent empty with TC).",
			ConstLabels: prometheus.Labels{"action": action},
		}, func() float64 { return float64(f()) }))
	}
	if f := cfg.StoreBytes; f != nil {
		gauge("nasreach_store_bytes", "Size of the store file.", func() float64 { return float64(f()) })
	}
	if f := cfg.LogWritten; f != nil {
		counter("nasreach_connlog_written_total", "Connection log events written.", func() float64 { return float64(f()) })
	}
	if f := cfg.LogDropped; f != nil {
		counter("nasreach_connlog_dropped_total", "Connection log events dropped because the queue was full.", func() float64 { return float64(f()) })
	}
	if err := m.serve(); err != nil {
		return nil, err
	}
	return m, nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// ObserveQuery counts one answered DNS query. It is cheap enough for the DNS
// hot path: common pairs are cached counters.
func (m *Metrics) ObserveQuery(qtype uint16, rcode int) {
	for i, t := range hotTypes {
		if t == qtype && rcode >= 0 && rcode < 24 {
			p := &m.hot[i][rcode]
			if c := p.Load(); c != nil {
				(*c).Inc()
				return
			}
			c := m.queries.WithLabelValues(typeName(qtype), RcodeName(rcode))
			p.Store(&c)
			c.Inc()
			return
		}
	}
	m.queries.WithLabelValues(typeName(qtype), RcodeName(rcode)).Inc()
}

// ObserveTransfer counts one zone transfer request.
func (m *Metrics) ObserveTransfer(kind, outcome string) { m.xfrs.WithLabelValues(kind, outcome).Inc() }

// ObserveNotify counts one NOTIFY sent.
func (m *Metrics) ObserveNotify(outcome string) { m.notifys.WithLabelValues(outcome).Inc() }

// typeName bounds the label's values: unknown types share one label.
func typeName(t uint16) string {
	if s, ok := dns.TypeToString[t]; ok {
		return s
	}
	return "other"
}

// RcodeName names a DNS response code as the rcode label and the connection
// log show it; unknown codes share "other", which bounds the label's values.
// 16 is BADVERS: miekg/dns calls it BADSIG, TSIG's use of the same number,
// but the server never signs, so the 16 it answers is always RFC 6891's
// refusal of an EDNS version it does not speak.
func RcodeName(rcode int) string {
	if rcode == dns.RcodeBadVers {
		return "BADVERS"
	}
	if s, ok := dns.RcodeToString[rcode]; ok {
		return s
	}
	return "other"
}

// ObserveEvent counts a connection event (the same events the connection log
// gets); it reads only its service, kind, outcome and byte counts.
func (m *Metrics) ObserveEvent(e connlog.Event) {
	if e.Kind == "update" && (e.Service == "ddns" || e.Service == "dns") {
		via := "http"
		if e.Service == "dns" {
			via = "dns"
		}
		m.updates.WithLabelValues(via, cmpOr(e.Outcome, "unknown")).Inc()
	}
	if e.Service == "dns" && e.Kind == "query" {
		return // counted by ObserveQuery
	}
	m.events.WithLabelValues(e.Service, e.Kind, cmpOr(e.Outcome, "unknown")).Inc()
	if e.Service == "link" {
		m.linkPunch(e)
	}
	if e.BytesIn > 0 {
		m.bytes.WithLabelValues(e.Service, "in").Add(float64(e.BytesIn))
	}
	if e.BytesOut > 0 {
		m.bytes.WithLabelValues(e.Service, "out").Add(float64(e.BytesOut))
	}
}

// linkPunch counts the Link relay's direct-path events: a client's report
// of an attempt (kind "punch": direct, no_answer, failed; lost when a
// direct path stopped working) and the relay's own refusals of an
// exchange (kind "exchange", outcome "refused"). Each ends with the client
// on a path.
func (m *Metrics) linkPunch(e connlog.Event) {
	outcome := e.Outcome
	switch {
	case e.Kind == "exchange" && outcome == "refused":
	case e.Kind == "punch" && (outcome == "direct" || outcome == "no_answer" || outcome == "failed" || outcome == "lost"):
	default:
		return
	}
	path := "relay"
	if outcome == "direct" {
		path = "direct"
		if !e.Start.IsZero() && !e.Time.Before(e.Start) {
			m.toDirect.Observe(e.Time.Sub(e.Start).Seconds())
		}
	}
	m.paths.WithLabelValues(path).Inc()
	if outcome != "lost" {
		m.punches.WithLabelValues(outcome).Inc()
	}
}

// labelled is a counter or gauge family read at scrape time: values
// reports each series through emit, its value and its label values.
type labelled struct {
	desc   *prometheus.Desc
	kind   prometheus.ValueType
	values func(emit func(v float64, labels ...string))
}

// Describe implements prometheus.Collector.
func (c labelled) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect implements prometheus.Collector.
func (c labelled) Collect(ch chan<- prometheus.Metric) {
	c.values(func(v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(c.desc, c.kind, v, labels...)
	})
}

// Handler serves the status page at /, /metrics, /healthz and /readyz.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", m.handleStatus)
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorLog: nil}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if m.cfg.Ready != nil {
			if err := m.cfg.Ready(); err != nil {
				http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}

// serve binds Config.Addr (or takes Config.Listener) and serves in the
// background.
func (m *Metrics) serve() error {
	ln := m.cfg.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", m.cfg.Addr); err != nil {
			return fmt.Errorf("metrics listen %s: %w", m.cfg.Addr, err)
		}
	}
	m.ln = connlimit.New(connlimit.Config{Max: MaxConns}).Listener(ln)
	m.srv = &http.Server{Handler: m.Handler(), ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute}
	m.done = make(chan error, 1)
	go func() { m.done <- m.srv.Serve(m.ln) }()
	m.cfg.Logger.Info().Str("addr", ln.Addr().String()).Msg("metrics listening")
	return nil
}

// Addr returns the bound address.
func (m *Metrics) Addr() net.Addr {
	if m.ln == nil {
		return nil
	}
	return m.ln.Addr()
}

// Shutdown stops the server, letting scrapes in progress finish until ctx ends.
func (m *Metrics) Shutdown(ctx context.Context) error {
	if m.srv == nil {
		return nil
	}
	var err error
	m.once.Do(func() {
		err = m.srv.Shutdown(ctx)
		if serr := <-m.done; !errors.Is(serr, http.ErrServerClosed) {
			err = errors.Join(err, serr)
		}
	})
	if err != nil {
		return fmt.Errorf("metrics shutdown: %w", err)
	}
	return nil
}

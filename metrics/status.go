package metrics

import (
	"cmp"
	"html/template"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// Listener is one address the daemon serves, as the status page lists it.
type Listener struct {
	// Name says what is served, e.g. "dns (udp, tcp)".
	Name string
	// Addr is where, e.g. "127.0.0.1:10053".
	Addr string
}

// status is what the status page shows, read from the same registry that
// /metrics serves so that the two never disagree.
type status struct {
	Version   string
	Uptime    time.Duration
	Ready     string // "ready" or "not ready: why"
	Listeners []Listener
	Figures   []figure
}

// figure is one line of the page: a label and a value.
type figure struct {
	Label string
	Value string
}

var statusPage = template.Must(template.New("status").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="10">
<title>nasreach status</title>
<style>body{font:15px/1.4 system-ui,sans-serif;margin:2em;max-width:48em}td{padding:.1em 1.5em .1em 0}
h2{font-size:1.1em;margin-top:1.5em}.ok{color:#060}.bad{color:#a00}</style></head>
<body><h1>nasreach</h1>
<p>version {{.Version}} · up {{.Uptime}} · <span class="{{if eq .Ready "ready"}}ok{{else}}bad{{end}}">{{.Ready}}</span></p>
<h2>Listening</h2><table>{{range .Listeners}}<tr><td>{{.Name}}</td><td>{{.Addr}}</td></tr>{{end}}</table>
<h2>Now and since start</h2><table>{{range .Figures}}<tr><td>{{.Label}}</td><td>{{.Value}}</td></tr>{{end}}</table>
<p><a href="/metrics">/metrics</a> · <a href="/healthz">/healthz</a> · <a href="/readyz">/readyz</a></p>
</body></html>
`))

// handleStatus serves the status page at a glance, like derper's: version,
// uptime, readiness, listeners, devices, sessions and what was dropped or
// refused. It shows no device name or address, as /metrics does not.
func (m *Metrics) handleStatus(w http.ResponseWriter, _ *http.Request) {
	families, err := m.reg.Gather()
	if err != nil {
		m.cfg.Logger.Warn().Err(err).Msg("status page: gathering metrics")
	}
	total := func(name string, labels ...string) float64 {
		i, ok := slices.BinarySearchFunc(families, name, func(f *dto.MetricFamily, n string) int { return cmp.Compare(f.GetName(), n) })
		if !ok {
			return 0
		}
		var sum float64
		for _, mt := range families[i].GetMetric() {
			if hasLabels(mt, labels) {
				sum += mt.GetCounter().GetValue() + mt.GetGauge().GetValue()
			}
		}
		return sum
	}
	s := status{
		Version: cmpOr(m.cfg.Version, "dev"), Uptime: time.Since(m.started).Round(time.Second), Ready: "ready",
	}
	if m.cfg.Ready != nil {
		if err := m.cfg.Ready(); err != nil {
			s.Ready = "not ready: " + err.Error()
		}
	}
	if m.cfg.Listeners != nil {
		s.Listeners = m.cfg.Listeners()
	}
	count := func(label string, v float64) { s.Figures = append(s.Figures, figure{label, formatCount(v)}) }
	count("devices registered", total("nasreach_devices"))
	count("devices online (Link agent connected)", total("nasreach_devices_online"))
	count("Link sessions in progress", total("nasreach_sessions_active", "service", "link"))
	count("TURN allocations in progress", total("nasreach_sessions_active", "service", "turn"))
	count("DNS queries answered", total("nasreach_dns_queries_total"))
	count("DNS answers rate-limited (dropped or slipped)", total("nasreach_dns_rrl_total"))
	count("address updates accepted", total("nasreach_updates_total", "outcome", "ok"))
	count("bytes relayed", total("nasreach_relayed_bytes_total"))
	count("TURN requests refused", total("nasreach_turn_refused_total"))
	count("connections refused over a cap", total("nasreach_connections_refused_total"))
	count("connection-log events dropped", total("nasreach_connlog_dropped_total"))
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err := statusPage.Execute(w, s); err != nil {
		m.cfg.Logger.Warn().Err(err).Msg("status page: writing")
	}
}

// hasLabels reports whether mt carries every name=value pair of labels.
func hasLabels(mt *dto.Metric, labels []string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		if !slices.ContainsFunc(mt.GetLabel(), func(l *dto.LabelPair) bool {
			return l.GetName() == labels[i] && l.GetValue() == labels[i+1]
		}) {
			return false
		}
	}
	return true
}

// formatCount writes a whole number with thousands separators.
func formatCount(v float64) string {
	digits := strconv.FormatUint(uint64(v), 10)
	var b strings.Builder
	for i, d := range digits {
		if i > 0 && (len(digits)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(d)
	}
	return b.String()
}

// Command dnsbench is the driver of `make bench-dns`: it measures nasreach's
// authoritative DNS against Knot DNS and NSD serving the same 100,000-device
// zone, each server pinned to one core and dnsperf to another, and the rate of
// durable dyndns2 updates. docs/BENCHMARKS.md says how to read the figures.
//
// Everything it starts listens on 127.0.0.1 ports picked at run time and is
// stopped when it ends, also on Ctrl-C or when the time bound (-timeout)
// passes; the data lives in a temporary directory. Result lines go to stdout,
// progress to stderr.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// config is the command line.
type config struct {
	nasreach      string
	zone          string
	devices       int
	queries       int
	seed          uint64
	duration      time.Duration
	warmup        time.Duration
	perf          perfParams
	serverCPU     string // a taskset list: "0", "0,1"
	peers         []string
	loadWorkers   int
	updates       int
	updateClients int
	updateTime    time.Duration
	pprof         string
	keep          bool
	timeout       time.Duration
	latencyRate   int           // queries a second of the latency run (0: none)
	latencyTime   time.Duration // its length
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var cfg config
	var peers string
	fs := flag.NewFlagSet("dnsbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.nasreach, "nasreach", "bin/nasreach", "nasreach binary to benchmark")
	fs.StringVar(&cfg.zone, "zone", "myqnapcloud.com", "zone served")
	fs.IntVar(&cfg.devices, "devices", 100_000, "devices in the zone")
	fs.IntVar(&cfg.queries, "queries", 200_000, "lines in the dnsperf input (it loops over them)")
	fs.Uint64Var(&cfg.seed, "seed", 1, "seed of the generated names, addresses and query order")
	fs.DurationVar(&cfg.duration, "duration", 10*time.Second, "measured dnsperf run per server")
	fs.DurationVar(&cfg.warmup, "warmup", 2*time.Second, "unmeasured dnsperf run before each measured one (0: none)")
	fs.IntVar(&cfg.perf.Clients, "clients", 8, "dnsperf -c: client sockets")
	fs.IntVar(&cfg.perf.Outstanding, "outstanding", 100, "dnsperf -q: queries in flight (100 fits every server's default 208 KiB receive buffer)")
	fs.BoolVar(&cfg.perf.EDNS, "edns", true, "dnsperf -e: queries carry EDNS0, as resolvers send them")
	fs.StringVar(&cfg.serverCPU, "server-cpu", "0", "cores every server is pinned to, a comma-separated list (each server gets as many workers)")
	fs.StringVar(&cfg.perf.CPU, "client-cpu", "1", "cores dnsperf is pinned to, a comma-separated list (a dnsperf thread each)")
	fs.StringVar(&peers, "peers", "knot,nsd", "peers to compare with, comma-separated (knot, nsd; empty for none)")
	fs.IntVar(&cfg.loadWorkers, "load-workers", 128, "concurrent HTTP clients loading the devices")
	fs.IntVar(&cfg.updates, "updates", 20_000, "dyndns2 updates in the durable-update phase (each a real change)")
	fs.IntVar(&cfg.updateClients, "update-clients", 200, "concurrent dyndns2 clients")
	fs.DurationVar(&cfg.updateTime, "update-time", 30*time.Second, "time bound of the durable-update phase")
	fs.StringVar(&cfg.pprof, "pprof", "", "also profile nasreach's DNS path under the same dnsperf load and write the CPU profile here")
	fs.IntVar(&cfg.latencyRate, "latency-qps", 20_000, "rate of the latency run (dnsperf -Q, every answer's latency; 0: no latency run), well below every server's saturation")
	fs.DurationVar(&cfg.latencyTime, "latency-duration", 5*time.Second, "length of the latency run")
	fs.BoolVar(&cfg.keep, "keep", false, "keep the work directory (logs, zone, data) after a successful run")
	fs.DurationVar(&cfg.timeout, "timeout", 290*time.Second, "bound of the whole run")
	fs.StringVar(&servers.pidfile, "pidfile", "", "keep the process groups of running servers listed in this file (for a cleanup trap)")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	for _, p := range strings.Split(peers, ",") {
		switch p = strings.TrimSpace(p); p {
		case "":
		case "knot", "nsd":
			cfg.peers = append(cfg.peers, p)
		default:
			return cfg, fmt.Errorf("-peers: unknown peer %q (want knot, nsd)", p)
		}
	}
	switch {
	case cfg.devices < 1 || cfg.devices > maxDevices:
		return cfg, fmt.Errorf("-devices %d: want 1 to %d", cfg.devices, maxDevices)
	case cfg.queries < 10:
		return cfg, fmt.Errorf("-queries %d: want at least 10", cfg.queries)
	case cfg.duration < time.Second || cfg.duration%time.Second != 0:
		return cfg, fmt.Errorf("-duration %s: want whole seconds, at least 1s", cfg.duration)
	case cfg.latencyTime < time.Second || cfg.latencyTime%time.Second != 0:
		return cfg, fmt.Errorf("-latency-duration %s: want whole seconds, at least 1s", cfg.latencyTime)
	case cfg.warmup%time.Second != 0:
		return cfg, fmt.Errorf("-warmup %s: want whole seconds", cfg.warmup)
	case cpuCount(cfg.serverCPU) == 0 || cpuCount(cfg.perf.CPU) == 0:
		return cfg, fmt.Errorf("-server-cpu %q, -client-cpu %q: want comma-separated core numbers", cfg.serverCPU, cfg.perf.CPU)
	case cfg.perf.Clients < 1 || cfg.perf.Outstanding < 1 || cfg.loadWorkers < 1 || cfg.updateClients < 1:
		return cfg, errors.New("-clients, -outstanding, -load-workers and -update-clients must be at least 1")
	}
	cfg.updates = min(cfg.updates, cfg.devices)
	if cfg.pprof != "" {
		abs, err := filepath.Abs(cfg.pprof)
		if err != nil {
			return cfg, err
		}
		cfg.pprof = abs
	}
	return cfg, nil
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == profileServerCmd {
		if err := runProfileServer(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "dnsbench profile-server:", err)
			os.Exit(1)
		}
		return
	}
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "dnsbench:", err)
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.timeout)
	defer cancel()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigs
		progress("%s: stopping", s)
		cancel()
		// The run unwinds and stops its servers; if it does not within 15s, or
		// a second signal comes, stop them here.
		select {
		case <-sigs:
		case <-time.After(15 * time.Second):
		}
		stopAllServers()
		os.Exit(130)
	}()
	rep, err := run(ctx, cfg)
	stopAllServers()
	rep.print(os.Stdout)
	if err != nil {
		if ctx.Err() == context.DeadlineExceeded {
			err = fmt.Errorf("%w (the run is bounded by -timeout %s)", err, cfg.timeout)
		}
		fmt.Fprintln(os.Stderr, "dnsbench:", err)
		os.Exit(1)
	}
}

var start = time.Now()

// progress reports what the driver is doing, on stderr.
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "# [%5.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
}

// report collects the result lines in the order they are printed.
type report struct {
	serverCores int // the cores each server may use
	header      []string
	dns         []string // one per server
	ratios      []string
	memory      []string
	load        []string
	update      []string
	notes       []string

	perDeviceBytes map[string]float64 // resident memory per device, by server
}

func (r *report) print(w io.Writer) {
	for _, group := range [][]string{r.header, r.dns, r.ratios, r.memory, r.load, r.update, r.notes} {
		for _, l := range group {
			fmt.Fprintln(w, l)
		}
	}
}

func (r *report) note(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	progress("%s", msg)
	r.notes = append(r.notes, "# "+msg)
}

// run does the whole benchmark. The report holds whatever was measured even
// when it returns an error.
func run(ctx context.Context, cfg config) (rep *report, err error) {
	rep = &report{serverCores: cpuCount(cfg.serverCPU)}
	work, err := os.MkdirTemp("", "nasreach-dnsbench-")
	if err != nil {
		return rep, err
	}
	defer func() {
		if (err != nil && !errors.Is(err, context.Canceled)) || cfg.keep { // logs to read; an interrupt needs none
			progress("work directory kept: %s", work)
			return
		}
		os.RemoveAll(work)
	}()
	progress("work directory %s", work)

	devs := genDevices(cfg.devices, cfg.seed)
	qs := genQueries(cfg.queries, devs, cfg.zone, cfg.seed)
	cfg.perf.QueryFile = filepath.Join(work, "queries.txt")
	if err := writeQueryFile(cfg.perf.QueryFile, qs); err != nil {
		return rep, err
	}
	sample := qs[:min(len(qs), 300)]
	loaded := func(q query) netip.Addr {
		if q.Kind == hitAAAA {
			return devs[q.Device].IPv6
		}
		return devs[q.Device].IPv4
	}
	edns := ""
	if cfg.perf.EDNS {
		edns = " -e"
	}
	rep.header = append(rep.header, fmt.Sprintf(
		"# dnsbench %s: %d devices; %d queries (80%% A hit, 10%% AAAA hit, 10%% NXDOMAIN); servers on cpu %s; dnsperf -c %d -q %d%s -l %d on cpu %s; %d cpus; %s",
		time.Now().UTC().Format("2006-01-02"), cfg.devices, cfg.queries, cfg.serverCPU,
		cfg.perf.Clients, cfg.perf.Outstanding, edns, int(cfg.duration/time.Second), cfg.perf.CPU, onlineCPUs(), runtime.Version()))

	nas, serial, err := benchNasreach(ctx, cfg, work, devs, sample, loaded, rep)
	if err != nil {
		return rep, err
	}
	if cfg.pprof != "" {
		if err := profileNasreach(ctx, cfg, work, rep); err != nil {
			return rep, err
		}
	}
	if len(cfg.peers) == 0 {
		return rep, nil
	}
	zoneFile := filepath.Join(work, "zone.db")
	if err := writeZoneFile(zoneFile, cfg.zone, serial, devs); err != nil {
		return rep, err
	}
	for _, peer := range cfg.peers {
		res, err := benchPeer(ctx, cfg, work, peer, zoneFile, sample, loaded, rep)
		if err != nil {
			if ctx.Err() != nil {
				return rep, err
			}
			rep.note("%s skipped: %v", peer, err)
			continue
		}
		rep.ratios = append(rep.ratios,
			fmt.Sprintf("dns ratio nasreach/%s=%.2f", peer, nas.QPS/res.QPS),
			fmt.Sprintf("dns ratio_by_cpu nasreach/%s=%.2f", peer, res.cpuPerQuery().Seconds()/nas.cpuPerQuery().Seconds()))
	}
	return rep, nil
}

// benchNasreach starts nasreach, loads the devices through its API, measures
// DNS and then durable dyndns2 updates, and stops it. It returns the DNS run
// and the zone serial after loading (the peers serve the same SOA).
func benchNasreach(ctx context.Context, cfg config, work string, devs []device, sample []query, loaded func(query) netip.Addr, rep *report) (perfResult, uint32, error) {
	listeners, err := listenerFlags(ctx, cfg.nasreach)
	if err != nil {
		return perfResult{}, 0, err
	}
	ports, err := freePorts(2 + len(listeners))
	if err != nil {
		return perfResult{}, 0, err
	}
	dnsPort, httpPort := ports[0], ports[1]
	var tok [16]byte
	if _, err := rand.Read(tok[:]); err != nil {
		return perfResult{}, 0, err
	}
	admin := hex.EncodeToString(tok[:])
	dnsAddr := "127.0.0.1:" + strconv.Itoa(dnsPort)
	args := []string{cfg.nasreach, "serve", "--data", filepath.Join(work, "nasreach"), "--zone", cfg.zone,
		"--dns", dnsAddr, "--http", "127.0.0.1:" + strconv.Itoa(httpPort),
		"--admin-token", admin, "--log-format", "json"}
	for i, f := range listeners {
		if f != "dns" && f != "http" {
			args = append(args, "--"+f, "127.0.0.1:"+strconv.Itoa(ports[2+i]))
		}
	}
	srv, err := startServer("nasreach", cfg.serverCPU, filepath.Join(work, "nasreach.log"), args...)
	if err != nil {
		return perfResult{}, 0, err
	}
	defer srv.stop(10 * time.Second)
	api := newAPIClient("http://127.0.0.1:"+strconv.Itoa(httpPort), admin, max(cfg.loadWorkers, cfg.updateClients))
	defer api.close()
	if err := api.waitReady(ctx, srv, 20*time.Second); err != nil {
		return perfResult{}, 0, err
	}
	if _, err := waitDNS(ctx, srv, dnsAddr, cfg.zone, 20*time.Second); err != nil {
		return perfResult{}, 0, err
	}
	// What the daemon holds with no device at all: what memory per device
	// is counted from.
	empty, err := readMem(srv.pid())
	if err != nil {
		return perfResult{}, 0, err
	}

	progress("nasreach: registering %d devices through POST /v1/devices (%d workers)", len(devs), cfg.loadWorkers)
	tokens := make([]string, len(devs))
	created, err := runConcurrent(ctx, len(devs), cfg.loadWorkers, func(ctx context.Context, i int) error {
		t, err := api.create(ctx, devs[i].Name)
		tokens[i] = t
		return err
	})
	if err == nil && created.Done < len(devs) {
		err = ctx.Err()
	}
	if err != nil {
		return perfResult{}, 0, fmt.Errorf("load nasreach: %w", err)
	}
	progress("nasreach: setting addresses through PUT /v1/devices/{name}/address")
	addressed, err := runConcurrent(ctx, len(devs), cfg.loadWorkers, func(ctx context.Context, i int) error {
		return api.setAddress(ctx, devs[i].Name, devs[i].IPv4, devs[i].IPv6)
	})
	if err == nil && addressed.Done < len(devs) {
		err = ctx.Err()
	}
	if err != nil {
		return perfResult{}, 0, fmt.Errorf("load nasreach: %w", err)
	}
	rep.load = append(rep.load, fmt.Sprintf("load nasreach creates_per_s=%.0f address_puts_per_s=%.0f workers=%d devices=%d",
		created.rate(), addressed.rate(), cfg.loadWorkers, len(devs)))
	progress("nasreach: loaded in %.1fs", (created.Elapsed + addressed.Elapsed).Seconds())

	serial, err := waitDNS(ctx, srv, dnsAddr, cfg.zone, 5*time.Second)
	if err != nil {
		return perfResult{}, 0, err
	}
	if err := checkAnswers(ctx, "nasreach", dnsAddr, sample, loaded); err != nil {
		return perfResult{}, 0, fmt.Errorf("wrong answer: %w", err)
	}
	res, err := measure(ctx, cfg, "nasreach", srv, dnsPort, work)
	if err != nil {
		return perfResult{}, 0, err
	}
	rep.dns = append(rep.dns, dnsLine("nasreach", res))
	rep.saturation("nasreach", res)
	mem, err := readMem(srv.pid())
	if err != nil {
		return perfResult{}, 0, err
	}
	rep.memory = append(rep.memory, mem.line("nasreach", len(devs)))

	// Durable updates: each client sends dyndns2 updates with a device's own
	// credentials; nasreach answers only after the bbolt commit (fsync), so
	// every "good" counted here is on disk.
	n := cfg.updates
	progress("nasreach: %d dyndns2 updates from %d concurrent clients (bound %s)", n, cfg.updateClients, cfg.updateTime)
	uctx, ucancel := context.WithTimeout(ctx, cfg.updateTime)
	upd, err := runConcurrent(uctx, n, cfg.updateClients, func(ctx context.Context, i int) error {
		return api.dyndns2(ctx, cfg.zone, devs[i].Name, tokens[i], updatedIPv4(i))
	})
	ucancel()
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		return perfResult{}, 0, fmt.Errorf("dyndns2 updates: %w", err)
	}
	line := fmt.Sprintf("update durable_updates_per_s=%.0f clients=%d updates=%d p50_ms=%.1f p99_ms=%.1f",
		upd.rate(), cfg.updateClients, upd.Done, ms(upd.percentile(0.5)), ms(upd.percentile(0.99)))
	if upd.Done < n {
		line += fmt.Sprintf(" (time bound %s reached before %d)", cfg.updateTime, n)
	}
	rep.update = append(rep.update, line)
	// Every acknowledged update must be visible to the very next query.
	var updated []query
	for i := 0; i < upd.Done && len(updated) < 200; i += max(1, upd.Done/200) {
		updated = append(updated, query{Kind: hitA, Name: devs[i].Name + "." + cfg.zone + ".", Device: i})
	}
	if err := checkAnswers(ctx, "nasreach after dyndns2", dnsAddr, updated, func(q query) netip.Addr { return updatedIPv4(q.Device) }); err != nil {
		return perfResult{}, 0, fmt.Errorf("update not visible: %w", err)
	}

	// Start-up: the same data directory served again, timed from the
	// process start to the first right answer for a device.
	srv.stop(10 * time.Second)
	began := time.Now()
	if srv, err = startServer("nasreach", cfg.serverCPU, filepath.Join(work, "nasreach-restart.log"), args...); err != nil {
		return perfResult{}, 0, err
	}
	defer srv.stop(10 * time.Second)
	first := updated[:1]
	for {
		if err := checkAnswers(ctx, "nasreach restarted", dnsAddr, first, func(q query) netip.Addr { return updatedIPv4(q.Device) }); err == nil {
			break
		}
		if srv.exited() || ctx.Err() != nil || time.Since(began) > 60*time.Second {
			return perfResult{}, 0, fmt.Errorf("nasreach restarted on %d devices gave no right answer within %s", len(devs), time.Since(began).Round(time.Millisecond))
		}
		time.Sleep(5 * time.Millisecond) // polling a process we do not control: no event to wait on
	}
	startup := time.Since(began)
	if mem, err = readMem(srv.pid()); err != nil {
		return perfResult{}, 0, err
	}
	rep.memory = append(rep.memory, fmt.Sprintf("dns nasreach startup_to_first_answer_ms=%.0f store_open_ms=%.0f rss_after_restart_mib=%.1f anon_after_restart_mib=%.1f devices=%d",
		ms(startup), storeOpenMs(filepath.Join(work, "nasreach-restart.log")), mem.rss, mem.anon, len(devs)))
	rep.perDevice("nasreach", empty, mem, len(devs))
	if err := rep.latency(ctx, cfg, "nasreach", dnsPort, work, len(devs)); err != nil {
		return perfResult{}, 0, err
	}
	return res, serial, nil
}

// measure runs the warm-up and the measured dnsperf run against a server.
func measure(ctx context.Context, cfg config, name string, srv *server, port int, work string) (perfResult, error) {
	if cfg.warmup > 0 {
		if _, err := runDnsperf(ctx, cfg.perf, port, cfg.warmup, srv.pid(), filepath.Join(work, name+"-warmup.dnsperf")); err != nil {
			return perfResult{}, fmt.Errorf("%s warm-up: %w", name, err)
		}
	}
	progress("%s: dnsperf for %s", name, cfg.duration)
	res, err := runDnsperf(ctx, cfg.perf, port, cfg.duration, srv.pid(), filepath.Join(work, name+".dnsperf"))
	if err != nil {
		return res, fmt.Errorf("%s: %w", name, err)
	}
	if srv.exited() {
		return res, fmt.Errorf("%s exited during the run (%v); see %s", name, srv.err, srv.log)
	}
	progress("%s: %.0f qps, mean latency %.3f ms, lost %.2f%%, server cpu %.0f%%, dnsperf cpu %.0f%%, responses %d bytes",
		name, res.QPS, ms(res.MeanLatency), res.LostPct, 100*res.ServerCPU, 100*res.ClientCPU, res.RespBytes)
	if p := res.mixProblem(); p != "" {
		return res, fmt.Errorf("%s answered the mix wrongly: %s; see %s.dnsperf", name, p, filepath.Join(work, name))
	}
	return res, nil
}

// saturatedCPU is the share of its core above which a server counts as the
// bottleneck of a run.
const saturatedCPU = 0.9

// saturation notes a run in which the server had CPU to spare: then dnsperf,
// or whatever else ran on the cores, set the figure, which is a lower bound of
// what the server can do (and a ratio against it is not a server-to-server
// comparison).
func (r *report) saturation(name string, res perfResult) {
	if res.LostPct > 0.5 {
		r.note("%s lost %.2f%% of the queries: each lost query holds one of dnsperf's -q slots for its 2 s timeout, so this qps understates the server; rerun", name, res.LostPct)
	}
	if res.ServerCPU < saturatedCPU*float64(r.serverCores) {
		r.note("%s used %.0f%% of a core of the %d it may use (dnsperf %.0f%%): the server was not the bottleneck; its qps is a lower bound",
			name, 100*res.ServerCPU, r.serverCores, 100*res.ClientCPU)
	}
}

func dnsLine(name string, r perfResult) string {
	return fmt.Sprintf("dns %s qps=%.0f mean_latency_ms=%.3f lost=%.2f%% server_cpu=%.0f%% dnsperf_cpu=%.0f%% cpu_us_per_query=%.1f queries_per_cpu_s=%.0f resp_bytes=%d",
		name, r.QPS, ms(r.MeanLatency), r.LostPct, 100*r.ServerCPU, 100*r.ClientCPU, us(r.cpuPerQuery()), 1/r.cpuPerQuery().Seconds(), r.RespBytes)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// benchPeer starts one peer on the zone file, checks its answers, measures it
// and stops it.
func benchPeer(ctx context.Context, cfg config, work, peer, zoneFile string, sample []query, loaded func(query) netip.Addr, rep *report) (perfResult, error) {
	port, err := freePort()
	if err != nil {
		return perfResult{}, err
	}
	dir := filepath.Join(work, peer)
	var srv *server
	switch peer {
	case "knot":
		srv, err = startKnot(ctx, dir, cfg.serverCPU, port, cfg.zone, zoneFile)
	case "nsd":
		srv, err = startNSD(ctx, dir, cfg.serverCPU, port, cfg.zone, zoneFile)
	}
	if err != nil {
		return perfResult{}, err
	}
	defer srv.stop(10 * time.Second)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	progress("%s: loading the zone", peer)
	if _, err := waitDNS(ctx, srv, addr, cfg.zone, 90*time.Second); err != nil {
		return perfResult{}, err
	}
	if err := checkAnswers(ctx, peer, addr, sample, loaded); err != nil {
		return perfResult{}, fmt.Errorf("wrong answer: %w", err)
	}
	// Memory once the zone is loaded and answered, before any load, as
	// nasreach's restarted figure is taken.
	mem, memErr := readMem(srv.pid())
	res, err := measure(ctx, cfg, peer, srv, port, work)
	if err != nil {
		return perfResult{}, err
	}
	rep.dns = append(rep.dns, dnsLine(peer, res))
	rep.saturation(peer, res)
	if err := rep.latency(ctx, cfg, peer, port, work, cfg.devices); err != nil {
		return perfResult{}, err
	}
	if memErr == nil && peer == "knot" { // NSD's is spread over forked processes
		rep.memory = append(rep.memory, mem.line("knot", cfg.devices))
		empty, err := knotEmpty(ctx, cfg, work)
		if err != nil {
			return perfResult{}, fmt.Errorf("knot without devices: %w", err)
		}
		rep.perDevice("knot", empty, mem, cfg.devices)
	}
	return res, nil
}

// storeOpenMs reads from the daemon's JSON log how long opening its store
// and loading the device index took (the "took" of its "store open" line),
// or -1.
func storeOpenMs(log string) float64 {
	b, err := os.ReadFile(log)
	if err != nil {
		return -1
	}
	for line := range strings.Lines(string(b)) {
		var l struct {
			Message string  `json:"message"`
			Took    float64 `json:"took"`
		}
		if json.Unmarshal([]byte(line), &l) == nil && strings.HasPrefix(l.Message, "store open") {
			return l.Took // zerolog writes durations in milliseconds
		}
	}
	return -1
}

// perDevice records the memory one device costs a server: the resident
// memory it holds serving devices devices less what it holds serving none,
// by device, and compares the servers measured so far.
func (r *report) perDevice(name string, empty, full memStat, devices int) {
	b := (full.rss - empty.rss) * (1 << 20) / float64(devices)
	anon := (full.anon - empty.anon) * (1 << 20) / float64(devices)
	r.memory = append(r.memory, fmt.Sprintf("memory %s per_device_bytes=%.0f anon_per_device_bytes=%.0f rss_empty_mib=%.1f rss_mib=%.1f devices=%d",
		name, b, anon, empty.rss, full.rss, devices))
	if r.perDeviceBytes == nil {
		r.perDeviceBytes = map[string]float64{}
	}
	r.perDeviceBytes[name] = b
	if n, k := r.perDeviceBytes["nasreach"], r.perDeviceBytes["knot"]; n > 0 && k > 0 && name == "knot" {
		r.memory = append(r.memory, fmt.Sprintf("memory ratio_per_device nasreach/knot=%.2f", n/k))
	}
}

// latency runs the fixed-rate latency measurement against the server on
// port and records it.
func (r *report) latency(ctx context.Context, cfg config, name string, port int, work string, devices int) error {
	if cfg.latencyRate <= 0 {
		return nil
	}
	progress("%s: latency at %d qps for %s", name, cfg.latencyRate, cfg.latencyTime)
	res, err := runLatency(ctx, cfg.perf, port, cfg.latencyRate, cfg.latencyTime, filepath.Join(work, name+"-latency.dnsperf"))
	if err != nil {
		return fmt.Errorf("%s latency: %w", name, err)
	}
	r.memory = append(r.memory, res.line(name, devices))
	return nil
}

// knotEmpty starts Knot on the same zone without its devices (SOA, NS and
// glue only) and returns its memory once it answers.
func knotEmpty(ctx context.Context, cfg config, work string) (memStat, error) {
	dir := filepath.Join(work, "knot-empty")
	empty := filepath.Join(work, "zone-empty.db")
	if err := writeZoneFile(empty, cfg.zone, 1, nil); err != nil {
		return memStat{}, err
	}
	port, err := freePort()
	if err != nil {
		return memStat{}, err
	}
	srv, err := startKnot(ctx, dir, cfg.serverCPU, port, cfg.zone, empty)
	if err != nil {
		return memStat{}, err
	}
	defer srv.stop(10 * time.Second)
	if _, err := waitDNS(ctx, srv, "127.0.0.1:"+strconv.Itoa(port), cfg.zone, 30*time.Second); err != nil {
		return memStat{}, err
	}
	return readMem(srv.pid())
}

// profileNasreach runs nasreach's DNS path in this binary's profile-server
// mode on the data nasreach left, under the same dnsperf load, and writes the
// CPU profile to cfg.pprof.
func profileNasreach(ctx context.Context, cfg config, work string, rep *report) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	srv, err := startServer("nasreach-profile", cfg.serverCPU, filepath.Join(work, "profile.log"),
		exe, profileServerCmd, "-data", filepath.Join(work, "nasreach"), "-dns", addr, "-zone", cfg.zone, "-cpuprofile", cfg.pprof)
	if err != nil {
		return err
	}
	defer srv.stop(10 * time.Second)
	if _, err := waitDNS(ctx, srv, addr, cfg.zone, 30*time.Second); err != nil {
		return err
	}
	res, err := runDnsperf(ctx, cfg.perf, port, cfg.duration, srv.pid(), filepath.Join(work, "profile.dnsperf"))
	if err != nil {
		return fmt.Errorf("profile run: %w", err)
	}
	srv.stop(10 * time.Second) // SIGTERM writes the profile
	rep.note("cpu profile of nasreach's DNS path at %.0f qps (in-process, same store and dnsserver code): %s; read it with: go tool pprof -top %s",
		res.QPS, cfg.pprof, cfg.pprof)
	if goBin, err := exec.LookPath("go"); err == nil {
		out, _ := exec.CommandContext(ctx, goBin, "tool", "pprof", "-top", "-nodecount=30", cfg.pprof).CombinedOutput()
		os.Stderr.Write(out)
	}
	return nil
}

// onlineCPUs counts the machine's CPUs, whatever this process is pinned to.
func onlineCPUs() int {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return runtime.NumCPU()
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if len(line) > 3 && strings.HasPrefix(line, "cpu") && line[3] >= '0' && line[3] <= '9' {
			n++
		}
	}
	return n
}

// cpuCount is the number of cores in a comma-separated list of core
// numbers, or 0 when it is not one.
func cpuCount(list string) int {
	n := 0
	for _, c := range strings.Split(list, ",") {
		if _, err := strconv.ParseUint(strings.TrimSpace(c), 10, 16); err != nil {
			return 0
		}
		n++
	}
	return n
}

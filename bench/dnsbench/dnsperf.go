package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// perfParams are the dnsperf settings every server gets.
type perfParams struct {
	CPU         string // the cores dnsperf is pinned to (a taskset list), a thread each
	QueryFile   string // "name type" lines
	Clients     int    // -c: UDP sockets
	Outstanding int    // -q: queries in flight
	EDNS        bool   // -e: send an OPT record, as resolvers do
}

// perfResult is what dnsperf reports for one run, plus the CPU the server
// and dnsperf used during it.
type perfResult struct {
	Sent, Completed, Lost int64
	LostPct               float64
	QPS                   float64
	MeanLatency           time.Duration
	RespBytes             int
	RCodes                map[string]float64 // rcode name -> share in percent
	ServerCPU, ClientCPU  float64            // fraction of one core over the run
	ServerCPUTime         time.Duration      // user+system time of the server during the run
}

// cpuPerQuery is the server CPU time one answered query cost. Unlike qps it
// does not depend on whether the server or the client was the bottleneck, so
// it still compares servers when neither could use a whole core.
func (r perfResult) cpuPerQuery() time.Duration {
	if r.Completed == 0 {
		return 0
	}
	return r.ServerCPUTime / time.Duration(r.Completed)
}

var (
	reSent      = regexp.MustCompile(`Queries sent:\s+(\d+)`)
	reCompleted = regexp.MustCompile(`Queries completed:\s+(\d+)`)
	reLost      = regexp.MustCompile(`Queries lost:\s+(\d+) \(([\d.]+)%\)`)
	reQPS       = regexp.MustCompile(`Queries per second:\s+([\d.]+)`)
	reLatency   = regexp.MustCompile(`Average Latency \(s\):\s+([\d.]+)`)
	reSize      = regexp.MustCompile(`Average packet size:\s+request \d+, response (\d+)`)
	reRCodes    = regexp.MustCompile(`Response codes:\s+(.*)`)
	reRCode     = regexp.MustCompile(`([A-Z]+) \d+ \(([\d.]+)%\)`)
)

// runDnsperf runs dnsperf pinned to p.CPU against 127.0.0.1:port for d, with
// its output kept in logPath, and measures the CPU that serverPID (and its
// children) used meanwhile.
func runDnsperf(ctx context.Context, p perfParams, port int, d time.Duration, serverPID int, logPath string) (perfResult, error) {
	args := []string{"-c", p.CPU, "dnsperf",
		"-s", "127.0.0.1", "-p", strconv.Itoa(port), "-d", p.QueryFile,
		"-l", strconv.Itoa(int(d / time.Second)), "-T", strconv.Itoa(cpuCount(p.CPU)),
		"-c", strconv.Itoa(p.Clients), "-q", strconv.Itoa(p.Outstanding), "-t", "2"}
	if p.EDNS {
		args = append(args, "-e")
	}
	// Bounded twice: dnsperf stops itself after -l, and the context kills it
	// if it hangs.
	rctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(rctx, "taskset", args...)
	cpu0, wall0 := cpuTime(serverPID), time.Now()
	out, err := cmd.CombinedOutput()
	wall := time.Since(wall0)
	serverCPU := cpuTime(serverPID) - cpu0
	if werr := os.WriteFile(logPath, out, 0o600); werr != nil && err == nil {
		err = werr
	}
	if err != nil {
		return perfResult{}, fmt.Errorf("dnsperf: %w; output in %s", err, logPath)
	}
	r, err := parseDnsperf(string(out))
	if err != nil {
		return r, fmt.Errorf("dnsperf output in %s: %w", logPath, err)
	}
	r.ServerCPUTime = serverCPU
	r.ServerCPU = serverCPU.Seconds() / wall.Seconds()
	if st := cmd.ProcessState; st != nil {
		r.ClientCPU = (st.UserTime() + st.SystemTime()).Seconds() / wall.Seconds()
	}
	return r, nil
}

// parseDnsperf reads the statistics block dnsperf 2.x prints.
func parseDnsperf(out string) (perfResult, error) {
	var r perfResult
	num := func(re *regexp.Regexp, i int) (float64, error) {
		m := re.FindStringSubmatch(out)
		if m == nil {
			return 0, fmt.Errorf("no line matching %q", re)
		}
		return strconv.ParseFloat(m[i], 64)
	}
	var vals [7]float64
	for i, f := range []struct {
		re *regexp.Regexp
		i  int
	}{{reSent, 1}, {reCompleted, 1}, {reLost, 1}, {reLost, 2}, {reQPS, 1}, {reLatency, 1}, {reSize, 1}} {
		v, err := num(f.re, f.i)
		if err != nil {
			return r, err
		}
		vals[i] = v
	}
	r.Sent, r.Completed, r.Lost = int64(vals[0]), int64(vals[1]), int64(vals[2])
	r.LostPct, r.QPS = vals[3], vals[4]
	r.MeanLatency = time.Duration(vals[5] * float64(time.Second))
	r.RespBytes = int(vals[6])
	r.RCodes = map[string]float64{}
	if m := reRCodes.FindStringSubmatch(out); m != nil {
		for _, c := range reRCode.FindAllStringSubmatch(m[1], -1) {
			r.RCodes[c[1]], _ = strconv.ParseFloat(c[2], 64)
		}
	}
	return r, nil
}

// mixProblem says what is wrong with the response codes of a run of the
// 80/10/10 mix, or "" if they are as expected: NXDOMAIN near 10 %, the rest
// NOERROR. A server that answers SERVFAIL or REFUSED fast must not win.
func (r perfResult) mixProblem() string {
	var bad []string
	for code, pct := range r.RCodes {
		switch code {
		case "NOERROR":
		case "NXDOMAIN":
			if pct < 8 || pct > 12 {
				bad = append(bad, fmt.Sprintf("NXDOMAIN %.1f%% (want 10%%)", pct))
			}
		default:
			bad = append(bad, fmt.Sprintf("%s %.1f%%", code, pct))
		}
	}
	return strings.Join(bad, ", ")
}

// latencyResult is the latency of each answer in a run at a fixed rate
// below saturation, where a server's own delay shows rather than the queue
// that a saturating run builds in front of it.
type latencyResult struct {
	Rate          int // queries per second asked of dnsperf
	Answered      int
	Lost          int64
	P50, P99, Max time.Duration
}

// runLatency runs dnsperf pinned to p.CPU at rate queries a second for d,
// printing every answer's latency (-v), keeps the output in logPath and
// returns the percentiles.
func runLatency(ctx context.Context, p perfParams, port, rate int, d time.Duration, logPath string) (latencyResult, error) {
	args := []string{"-c", p.CPU, "dnsperf",
		"-s", "127.0.0.1", "-p", strconv.Itoa(port), "-d", p.QueryFile,
		"-l", strconv.Itoa(int(d / time.Second)), "-Q", strconv.Itoa(rate),
		"-c", strconv.Itoa(p.Clients), "-q", strconv.Itoa(p.Outstanding), "-t", "2", "-v"}
	if p.EDNS {
		args = append(args, "-e")
	}
	rctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(rctx, "taskset", args...).CombinedOutput()
	if werr := os.WriteFile(logPath, out, 0o600); werr != nil && err == nil {
		err = werr
	}
	if err != nil {
		return latencyResult{}, fmt.Errorf("dnsperf: %w; output in %s", err, logPath)
	}
	return parseLatencies(string(out), rate)
}

// parseLatencies reads the "> RCODE name type seconds" lines of dnsperf -v
// and its loss count.
func parseLatencies(out string, rate int) (latencyResult, error) {
	r := latencyResult{Rate: rate}
	var lat []time.Duration
	for line := range strings.Lines(out) {
		if !strings.HasPrefix(line, "> ") {
			continue
		}
		f := strings.Fields(line)
		s, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil || f[1] == "T" { // T: timed out, counted as lost below
			continue
		}
		lat = append(lat, time.Duration(s*float64(time.Second)))
	}
	if len(lat) == 0 {
		return r, fmt.Errorf("dnsperf -v printed no answer latencies")
	}
	if m := reLost.FindStringSubmatch(out); m != nil {
		r.Lost, _ = strconv.ParseInt(m[1], 10, 64)
	}
	slices.Sort(lat)
	r.Answered = len(lat)
	r.P50, r.P99, r.Max = lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1]
	return r, nil
}

func (r latencyResult) line(name string, devices int) string {
	return fmt.Sprintf("latency %s rate_qps=%d answered=%d lost=%d p50_ms=%.3f p99_ms=%.3f max_ms=%.3f devices=%d",
		name, r.Rate, r.Answered, r.Lost, ms(r.P50), ms(r.P99), ms(r.Max), devices)
}

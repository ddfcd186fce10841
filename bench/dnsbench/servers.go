package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// server is a process the benchmark started, pinned to one CPU, in its own
// process group so that stopping it also stops any children (NSD forks).
type server struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error // set when done is closed

	stopOnce sync.Once
}

// servers is every process started, so that a signal or a failure anywhere
// still stops them all. If pidfile is set, it always lists the process groups
// of the servers still running, for the trap in mk/bench-dns.mk that cleans up
// after a driver killed with SIGKILL: the parent-death signal set below reaches
// only the process the driver started, not the children NSD forks.
var servers struct {
	sync.Mutex
	list    []*server
	pidfile string
}

// writePidfile rewrites servers.pidfile; the caller holds servers.
func writePidfile() {
	if servers.pidfile == "" {
		return
	}
	var b strings.Builder
	for _, s := range servers.list {
		if !s.exited() {
			fmt.Fprintln(&b, s.pid())
		}
	}
	if err := os.WriteFile(servers.pidfile, []byte(b.String()), 0o600); err != nil {
		progress("write %s: %v", servers.pidfile, err)
	}
}

// startServer runs argv pinned to cpu with taskset, stdout and stderr to
// logPath. The process gets SIGKILL if this driver dies without cleaning up.
func startServer(name string, cpus string, logPath string, argv ...string) (*server, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer f.Close() // the child has its own descriptor
	cmd := exec.Command("taskset", append([]string{"-c", cpus}, argv...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = serverEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	s := &server{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { s.err = cmd.Wait(); close(s.done) }()
	servers.Lock()
	servers.list = append(servers.list, s)
	writePidfile()
	servers.Unlock()
	return s, nil
}

// serverEnv is this process's environment without what would configure a
// server behind the benchmark's back: nasreach's NASREACH_* variables and the
// directories and notify socket systemd passes.
func serverEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(k, "NASREACH_"):
		case k == "STATE_DIRECTORY", k == "CONFIGURATION_DIRECTORY", k == "LOGS_DIRECTORY",
			k == "CREDENTIALS_DIRECTORY", k == "NOTIFY_SOCKET", k == "LISTEN_FDS", k == "LISTEN_PID":
		default:
			env = append(env, kv)
		}
	}
	return env
}

// reListener matches a flag in `nasreach serve --help` whose default is a
// listen address, such as --metrics (default: "127.0.0.1:10090").
var reListener = regexp.MustCompile(`(?m)^\s+--([a-z0-9-]+) string\b.*\(default: "[^"]*:\d+"\)`)

// listenerFlags returns the serve flags that open a listener on a fixed
// default port. The benchmark gives each a free 127.0.0.1 port, so that it
// neither collides with another nasreach on this machine nor listens beyond
// loopback, however many listeners serve grows.
func listenerFlags(ctx context.Context, bin string) ([]string, error) {
	out, err := exec.CommandContext(ctx, bin, "serve", "--help").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%s serve --help: %v: %s", bin, err, out)
	}
	var flags []string
	for _, m := range reListener.FindAllStringSubmatch(string(out), -1) {
		flags = append(flags, m[1])
	}
	return flags, nil
}

// pid is the server's process id (taskset execs the server, so it is the
// server's own).
func (s *server) pid() int { return s.cmd.Process.Pid }

func (s *server) exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group, waits up to grace, then SIGKILLs
// what is left of the group. It signals the group only once, however often
// it is called: afterwards the id may belong to somebody else's processes.
func (s *server) stop(grace time.Duration) {
	s.stopOnce.Do(func() {
		pg := -s.pid()
		if !s.exited() {
			_ = syscall.Kill(pg, syscall.SIGTERM)
			select {
			case <-s.done:
			case <-time.After(grace):
				progress("%s did not stop within %s; killing it", s.name, grace)
			}
		}
		_ = syscall.Kill(pg, syscall.SIGKILL) // forked children (NSD) that outlived the leader
		<-s.done
		servers.Lock()
		servers.list = slices.DeleteFunc(servers.list, func(x *server) bool { return x == s })
		writePidfile()
		servers.Unlock()
	})
	<-s.done
}

// stopping makes a second caller of stopAllServers wait for the first.
var stopping sync.Mutex

// stopAllServers stops every server still running.
func stopAllServers() {
	stopping.Lock()
	defer stopping.Unlock()
	servers.Lock()
	list := slices.Clone(servers.list)
	servers.Unlock()
	for _, s := range list {
		s.stop(5 * time.Second)
	}
}

// freePorts returns n distinct ports that are free on 127.0.0.1 for both UDP
// and TCP. It holds each until it has them all, so that the kernel cannot hand
// out the same port twice.
func freePorts(n int) ([]int, error) {
	var (
		ports   []int
		holders []io.Closer
	)
	defer func() {
		for _, h := range holders {
			h.Close()
		}
	}()
	for tries := 0; len(ports) < n; tries++ {
		if tries == 50*n {
			return nil, errors.New("no port free for both UDP and TCP on 127.0.0.1")
		}
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			pc.Close()
			continue
		}
		holders = append(holders, pc, ln)
		ports = append(ports, port)
	}
	return ports, nil
}

// freePort returns one port free on 127.0.0.1 for both UDP and TCP.
func freePort() (int, error) {
	p, err := freePorts(1)
	if err != nil {
		return 0, err
	}
	return p[0], nil
}

// waitDNS polls addr with an SOA query for zone until the server answers it
// authoritatively, and returns the serial. It fails early if s exits.
func waitDNS(ctx context.Context, s *server, addr, zone string, timeout time.Duration) (uint32, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c := &dns.Client{Timeout: 500 * time.Millisecond}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(zone), dns.TypeSOA)
	for {
		if s.exited() {
			return 0, fmt.Errorf("%s exited before serving (%v); see %s", s.name, s.err, s.log)
		}
		r, _, err := c.ExchangeContext(ctx, m, addr)
		if err == nil && r.Rcode == dns.RcodeSuccess && r.Authoritative && len(r.Answer) == 1 {
			if soa, ok := r.Answer[0].(*dns.SOA); ok {
				return soa.Serial, nil
			}
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("%s does not answer SOA %s on %s after %s; see %s", s.name, zone, addr, timeout, s.log)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// startKnot writes a one-core Knot configuration in dir and starts knotd on
// 127.0.0.1:port serving zoneFile.
func startKnot(ctx context.Context, dir string, cpu string, port int, zone, zoneFile string) (*server, error) {
	for _, d := range []string{"run", "db"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	// One UDP worker per core. Knot 3.2 has no response rate limiting
	// unless the rrl module is configured, so none is. Journal and zone file
	// sync are off: nothing is written while serving.
	conf := fmt.Sprintf(`server:
    rundir: "%[1]s/run"
    listen: 127.0.0.1@%[2]d
    udp-workers: %[5]d
    tcp-workers: 1
    background-workers: 1
control:
    listen: "%[1]s/run/knot.sock"
database:
    storage: "%[1]s/db"
log:
  - target: stderr
    any: info
template:
  - id: default
    storage: "%[1]s"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
    semantic-checks: off
zone:
  - domain: %[3]s
    file: "%[4]s"
`, dir, port, zone, zoneFile, cpuCount(cpu))
	confPath := filepath.Join(dir, "knot.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	if out, err := exec.CommandContext(ctx, "knotc", "-c", confPath, "conf-check").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("knot configuration %s: %v: %s", confPath, err, strings.TrimSpace(string(out)))
	}
	return startServer("knot", cpu, filepath.Join(dir, "knotd.log"), "knotd", "-c", confPath)
}

// startNSD writes a one-server NSD configuration in dir and starts nsd in the
// foreground on 127.0.0.1:port; NSD reads and compiles zoneFile itself.
func startNSD(ctx context.Context, dir string, cpu string, port int, zone, zoneFile string) (*server, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	// rrl-ratelimit 0: NSD's default rate limiting would cap one loopback
	// source at a few thousand QPS. minimal-responses: the same answer shape
	// as nasreach and Knot (no NS/glue added to positive answers).
	conf := fmt.Sprintf(`server:
    ip-address: 127.0.0.1@%[2]d
    server-count: %[5]d
    username: ""
    chroot: ""
    zonesdir: "%[1]s"
    database: ""
    zonelistfile: "%[1]s/zone.list"
    xfrdfile: "%[1]s/xfrd.state"
    xfrdir: "%[1]s"
    pidfile: "%[1]s/nsd.pid"
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
    minimal-responses: yes
    verbosity: 1
remote-control:
    control-enable: no
zone:
    name: %[3]s
    zonefile: "%[4]s"
`, dir, port, zone, zoneFile, cpuCount(cpu))
	confPath := filepath.Join(dir, "nsd.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	if out, err := exec.CommandContext(ctx, "nsd-checkconf", confPath).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("nsd configuration %s: %v: %s", confPath, err, strings.TrimSpace(string(out)))
	}
	return startServer("nsd", cpu, filepath.Join(dir, "nsd.log"), "nsd", "-d", "-c", confPath)
}

// procTree returns pid and all its descendants.
func procTree(pid int) []int {
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", out[i]))
		for _, t := range tasks {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", out[i], t.Name()))
			if err != nil {
				continue
			}
			for _, f := range strings.Fields(string(b)) {
				if c, err := strconv.Atoi(f); err == nil {
					out = append(out, c)
				}
			}
		}
	}
	return out
}

// clockTick is USER_HZ, the unit of /proc/PID/stat times; 100 on every Linux
// architecture Go runs on.
const clockTick = 100

// cpuTime is the user+system CPU time used so far by pid and its descendants.
func cpuTime(pid int) time.Duration {
	var ticks int64
	for _, p := range procTree(pid) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		// Fields after the command name, which is in parentheses and may hold spaces.
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 13 {
			continue
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64) // field 14, utime
		st, _ := strconv.ParseInt(f[12], 10, 64) // field 15, stime
		ticks += ut + st
	}
	return time.Duration(ticks) * time.Second / clockTick
}

// memStat is one process's memory from /proc/PID/status, in MiB: resident
// (rss), its peak, and the resident set's two parts, anonymous memory (the
// heap, stacks: what the process itself holds) and file-backed pages (the
// program's text and mapped files such as bbolt's or LMDB's, which are the
// page cache's and shared with it).
type memStat struct{ rss, peak, anon, file float64 }

// line is the memory line for server with devices loaded.
func (m memStat) line(server string, devices int) string {
	return fmt.Sprintf("dns %s rss_mib=%.1f peak_rss_mib=%.1f anon_mib=%.1f file_mib=%.1f devices=%d kib_per_device=%.2f anon_kib_per_device=%.2f",
		server, m.rss, m.peak, m.anon, m.file, devices, m.rss*1024/float64(devices), m.anon*1024/float64(devices))
}

// readMem returns the memory of one process.
func readMem(pid int) (memStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memStat{}, err
	}
	var m memStat
	fields := map[string]*float64{"VmRSS": &m.rss, "VmHWM": &m.peak, "RssAnon": &m.anon, "RssFile": &m.file}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || fields[k] == nil {
			continue
		}
		kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
		if err != nil {
			return memStat{}, fmt.Errorf("/proc/%d/status %s: %w", pid, k, err)
		}
		*fields[k] = kb / 1024
	}
	return m, nil
}

//go:build linux

package turnserver

// The TURN benchmark behind `make bench-turn`: this relay against coturn's
// turnserver with equivalent settings, each pinned to one core, driven by the
// same turnutils_uclient loads from the other core, plus a Go load generator
// counting allocations per second. It runs only with NASREACH_BENCH_TURN=1.
//
// Everything listens on and sends to 127.0.0.1. Every load is bounded in
// count and in time; every process the driver starts is killed by its PID
// when its run ends, and by the kernel (PR_SET_PDEATHSIG) if the driver dies.
//
// How a run is measured. turnutils_uclient connects all its clients (an
// allocation and a channel each, plus a probe allocation it never releases),
// then starts each client's sending at a random moment 1 to 6 s later, and
// sends unpaced (-z 0: up to 50 messages per client per millisecond tick).
// Its totals would mostly measure that random start, so the driver reads
// uclient's per-second progress lines instead and measures a steady window
// that opens once every client is sending: round trips/s and bytes/s are
// the received messages and payload bytes in the window over its length,
// loss is 1 - received/sent in the window (uclient exits 0 even when all is
// lost). The server is started afresh for every run, so leftover probe
// allocations and queues never carry over.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nasreach/nasreach/connlog"
	"github.com/nasreach/nasreach/internal/connlimit"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/stun"
	pion "github.com/pion/stun/v4"
	"github.com/rs/zerolog"
)

// Bounds of one uclient run beyond the measured window.
const (
	// uclientStagger is how long after "Total connect time" every client
	// is sure to be sending: uclient starts each one 1000 + random()%5000
	// ms after connecting.
	uclientStagger = 6500 * time.Millisecond
	// uclientConnectTimeout bounds uclient's connect phase.
	uclientConnectTimeout = 60 * time.Second
	// uclientMessages is -n, messages per client: far more than a window
	// lasts, so that no client finishes inside it; the run is ended by
	// time.
	uclientMessages = 5_000_000
	// maxAllocations bounds one allocation run in count.
	maxAllocations = 1_000_000
)

// Benchmark knobs, from the environment (make bench-turn BENCH_TURN_...).
func benchEnv(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

const benchUser, benchPass = "bench", "bench"

// TestBenchTURNServe is the relay process of the benchmark: it serves on
// NASREACH_BENCH_TURN_SERVE as the daemon would (Binding answered by the
// stun package, events and logs discarded, quotas out of the way), prints
// "ready ADDR" and runs until its stdin closes (the driver exits) or it gets
// SIGTERM.
func TestBenchTURNServe(t *testing.T) {
	addr := os.Getenv("NASREACH_BENCH_TURN_SERVE")
	if addr == "" {
		t.Skip("the relay process of make bench-turn")
	}
	responder, err := stun.NewResponder(stun.ResponderConfig{})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{
		Addr: addr, Users: []string{benchUser + ":" + benchPass}, AllowPeers: loopbackOnly,
		MaxAllocations: 1 << 20, MaxAllocationsPerUser: 1 << 20, Binding: responder.Answer,
		// Every benchmark client comes from 127.0.0.1.
		TCPConns: connlimit.Config{Max: 1 << 16, MaxPerSource: 1 << 16},
		Events:   func(connlog.Event) {}, Logger: zerolog.Nop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("ready %s\n", srv.Addr())
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() { io.Copy(io.Discard, os.Stdin); stop <- syscall.SIGTERM }()
	<-stop
	srv.Shutdown(context.Background())
}

// benchCommand is a command that the kernel kills if the driver dies
// (timeout(1), Ctrl-C), so that no server outlives a run.
func benchCommand(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// benchServer is a TURN server process under test.
type benchServer struct {
	name string // "ours" or "coturn"
	cmd  *exec.Cmd
	addr netip.AddrPort
	in   io.WriteCloser
	once sync.Once
}

// cpuSeconds is the user+system CPU the server process (all its threads)
// has used.
func (s *benchServer) cpuSeconds() float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100 // USER_HZ is 100 on Linux
}

// stop ends the process: stdin closed and SIGTERM (ours writes its profile
// then), SIGKILL by PID after 5 s.
func (s *benchServer) stop() {
	s.once.Do(func() {
		if s.in != nil {
			s.in.Close()
		}
		if s.cmd.Process == nil {
			return
		}
		s.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { s.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			s.cmd.Process.Kill()
			<-done
		}
	})
}

// freePort returns a port free on 127.0.0.1 for both UDP and TCP just now,
// for coturn's turnserver and turnutils_peer: programs that take a port
// number and cannot be handed a bound socket, so the port is released before
// they bind it. (Ours binds 127.0.0.1:0 itself and prints the address.)
// Another program may take it in between; startBenchPeer then tries again.
// Tolerable in a benchmark run on demand, which is why the tests (interop
// included) use only sockets they hold.
func freePort(t *testing.T) int {
	t.Helper()
	for range 20 {
		u, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := u.LocalAddr().(*net.UDPAddr).Port
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		u.Close()
		if err == nil {
			l.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

// waitSTUN waits until a Binding request to addr is answered.
func waitSTUN(t *testing.T, addr netip.AddrPort) {
	t.Helper()
	c, err := stun.NewClient(stun.ClientConfig{RTO: 100 * time.Millisecond, Rc: 3, Rm: 2})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.Discover(ctx, conn, addr)
		cancel()
		if err == nil {
			return
		}
	}
	t.Fatalf("server on %s never answered STUN", addr)
}

// startServer starts a fresh server of kind "ours" or "coturn" pinned to
// cpu; profile, when set, is where ours writes its CPU profile on exit.
func startServer(t *testing.T, kind, cpu, profile string) *benchServer {
	t.Helper()
	if kind == "ours" {
		return startOurs(t, cpu, profile)
	}
	return startCoturn(t, cpu)
}

func startOurs(t *testing.T, cpu, profile string) *benchServer {
	t.Helper()
	args := []string{"-c", cpu, os.Args[0], "-test.run", "^TestBenchTURNServe$", "-test.count", "1"}
	if profile != "" {
		args = append(args, "-test.cpuprofile", profile)
	}
	cmd := benchCommand(context.Background(), "taskset", args...)
	cmd.Env = append(os.Environ(), "NASREACH_BENCH_TURN_SERVE=127.0.0.1:0", "NASREACH_BENCH_TURN=")
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &benchServer{name: "ours", cmd: cmd, in: in}
	t.Cleanup(s.stop)
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "ready ") {
		t.Fatalf("relay process: %q, %v", line, err)
	}
	s.addr = netip.MustParseAddrPort(strings.Fields(line)[1])
	go io.Copy(io.Discard, out)
	waitSTUN(t, s.addr)
	return s
}

// startCoturn runs turnserver with the settings that match ours: long-term
// credentials for one static user, no CLI, TLS or DTLS, no TCP relay, and
// loopback peers allowed (ours allow-lists 127.0.0.1/32 the same way).
func startCoturn(t *testing.T, cpu string) *benchServer {
	t.Helper()
	dir := t.TempDir()
	port := freePort(t)
	cmd := benchCommand(context.Background(), "taskset", "-c", cpu, testutil.NeedTool(t, "turnserver"), "-n",
		"--no-cli", "--no-tls", "--no-dtls", "--no-tcp-relay", "--allow-loopback-peers",
		"-L", "127.0.0.1", "-E", "127.0.0.1", "-p", strconv.Itoa(port),
		"-a", "-u", benchUser+":"+benchPass, "-r", DefaultRealm,
		"--db", filepath.Join(dir, "turndb"), "--pidfile", filepath.Join(dir, "pid"),
		"--no-stdout-log", "--log-file", filepath.Join(dir, "log"), "--simple-log")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &benchServer{name: "coturn", cmd: cmd, addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))}
	t.Cleanup(s.stop)
	waitSTUN(t, s.addr)
	return s
}

// startBenchPeer runs coturn's turnutils_peer (a UDP echo server) on
// 127.0.0.1 and returns its port once it echoes.
func startBenchPeer(t *testing.T) int {
	t.Helper()
	bin := testutil.NeedTool(t, "turnutils_peer")
	for range 5 {
		port := freePort(t)
		cmd := benchCommand(context.Background(), bin, "-L", "127.0.0.1", "-p", strconv.Itoa(port))
		if err := cmd.Start(); err != nil {
			t.Fatalf("start turnutils_peer: %v", err)
		}
		stop := func() { cmd.Process.Kill(); cmd.Wait() }
		if echoes(port) {
			t.Cleanup(stop)
			return port
		}
		stop()
	}
	t.Fatal("turnutils_peer did not start")
	return 0
}

// echoes reports whether a UDP echo server answers on 127.0.0.1:port within 5s.
func echoes(port int) bool {
	c, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return false
	}
	defer c.Close()
	buf := make([]byte, 16)
	for range 25 {
		c.Write([]byte("ping"))
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if n, err := c.Read(buf); err == nil && string(buf[:n]) == "ping" {
			return true
		}
		time.Sleep(100 * time.Millisecond) // "connection refused" comes back at once
	}
	return false
}

// uclientSample is one of uclient's progress lines, with the time it
// arrived and the server's CPU time then.
type uclientSample struct {
	at                  time.Time
	clients, sent, recv int64
	recvBytes           int64
	cpu                 float64
}

// uclientResult is the measured window of one uclient run.
type uclientResult struct {
	seconds             float64
	sent, recv          int64
	recvBytes           int64
	cpuSeconds          float64 // server CPU in the window
	totalSent, totalRcv int64   // since uclient started, for the progress log
}

func (r uclientResult) rtPerSec() float64    { return float64(r.recv) / r.seconds }
func (r uclientResult) bytesPerSec() float64 { return float64(r.recvBytes) / r.seconds }
func (r uclientResult) cpuShare() float64    { return r.cpuSeconds / r.seconds }
func (r uclientResult) cpuPerRT() float64    { return r.cpuSeconds / float64(max(r.recv, 1)) }
func (r uclientResult) loss() float64 {
	if r.sent == 0 {
		return 1
	}
	return max(0, 1-float64(r.recv)/float64(r.sent))
}

var (
	uclientConnectedRE = regexp.MustCompile(`Total connect time is`)
	uclientProgressRE  = regexp.MustCompile(`start_mclient: msz=(\d+), tot_send_msgs=(\d+), tot_recv_msgs=(\d+), tot_send_bytes ~ \d+, tot_recv_bytes ~ (\d+)`)
)

// runUclient runs one uclient load against s for a window of the given
// length once every client sends, then kills it.
func runUclient(s *benchServer, peer, clients, paceMS int, window time.Duration, args []string) (uclientResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), uclientConnectTimeout+uclientStagger+window+30*time.Second)
	defer cancel()
	full := append([]string{"-u", benchUser, "-w", benchPass, "-L", "127.0.0.1", "-X", "-c",
		"-e", "127.0.0.1", "-r", strconv.Itoa(peer), "-p", strconv.Itoa(int(s.addr.Port())),
		"-m", strconv.Itoa(clients), "-n", strconv.Itoa(uclientMessages), "-z", strconv.Itoa(paceMS)}, args...)
	bin, err := exec.LookPath("turnutils_uclient")
	if err != nil {
		return uclientResult{}, err
	}
	cmd := benchCommand(ctx, bin, append(full, "127.0.0.1")...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return uclientResult{}, err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return uclientResult{}, err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()

	var connected time.Time
	var first, last *uclientSample
	var tail []string // the last lines, to show when uclient fails
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		now := time.Now()
		if tail = append(tail, line); len(tail) > 8 {
			tail = tail[1:]
		}
		if uclientConnectedRE.MatchString(line) {
			connected = now
			continue
		}
		m := uclientProgressRE.FindStringSubmatch(line)
		if m == nil || connected.IsZero() || now.Sub(connected) < uclientStagger {
			continue
		}
		smp := &uclientSample{at: now, cpu: s.cpuSeconds()}
		smp.clients, _ = strconv.ParseInt(m[1], 10, 64)
		smp.sent, _ = strconv.ParseInt(m[2], 10, 64)
		smp.recv, _ = strconv.ParseInt(m[3], 10, 64)
		smp.recvBytes, _ = strconv.ParseInt(m[4], 10, 64)
		if first == nil {
			first = smp
			continue
		}
		if smp.clients < first.clients {
			break // a client gave up: the window ends with the last full sample
		}
		last = smp
		if last.at.Sub(first.at) >= window {
			break
		}
	}
	if first == nil || last == nil {
		return uclientResult{}, fmt.Errorf("uclient ended before a measurement window (%v); its last lines:\n%s", sc.Err(), strings.Join(tail, "\n"))
	}
	r := uclientResult{
		seconds: last.at.Sub(first.at).Seconds(),
		sent:    last.sent - first.sent, recv: last.recv - first.recv,
		recvBytes:  last.recvBytes - first.recvBytes,
		cpuSeconds: last.cpu - first.cpu,
		totalSent:  last.sent, totalRcv: last.recv,
	}
	if r.sent == 0 {
		return r, fmt.Errorf("uclient sent nothing in the window; its last lines:\n%s", strings.Join(tail, "\n"))
	}
	return r, nil
}

// allocationsPerSecond runs workers that each allocate over a fresh UDP
// socket (challenge, authenticated Allocate, Refresh 0 to release) for d or
// maxAllocations attempts, and returns completed allocations per second and
// the failures.
func allocationsPerSecond(s *benchServer, workers int, d time.Duration) (float64, int64, error) {
	var ok, failed, started atomic.Int64
	var firstErr atomic.Value
	begin := time.Now()
	stopAt := begin.Add(d)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stopAt) && started.Add(1) <= maxAllocations {
				if err := benchAllocate(s.addr); err == nil {
					ok.Add(1)
				} else {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	wg.Wait()
	err, _ := firstErr.Load().(error)
	return float64(ok.Load()) / time.Since(begin).Seconds(), failed.Load(), err
}

// benchSource numbers the generator's client addresses.
var benchSource atomic.Uint32

// benchClientAddr returns the next client address of the generator: 127.1.x.y
// in turn over 64,516 loopback addresses, port chosen by the kernel. A fresh
// socket on one address would soon get a port back that a just-released
// allocation had, and coturn answers 437 (allocation mismatch) to that
// 5-tuple for a while.
func benchClientAddr() netip.AddrPort {
	n := benchSource.Add(1) % (254 * 254)
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 1, byte(1 + n/254), byte(1 + n%254)}), 0)
}

func benchAllocate(srv netip.AddrPort) error {
	c, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(benchClientAddr()), net.UDPAddrFromAddrPort(srv))
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 1500)
	ask := func(setters ...pion.Setter) (*pion.Message, error) {
		req, err := pion.Build(append([]pion.Setter{pion.TransactionID}, setters...)...)
		if err != nil {
			return nil, err
		}
		for range 3 {
			c.Write(req.Raw)
			c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			n, err := c.Read(buf)
			if err != nil {
				continue
			}
			m := &pion.Message{Raw: append([]byte(nil), buf[:n]...)}
			if m.Decode() == nil && m.TransactionID == req.TransactionID {
				return m, nil
			}
		}
		return nil, errors.New("no answer")
	}
	allocate := pion.NewType(pion.MethodAllocate, pion.ClassRequest)
	resp, err := ask(allocate, requestedTransport(17))
	if err != nil {
		return fmt.Errorf("challenge: %w", err)
	}
	var nonce pion.Nonce
	var realm pion.Realm
	if nonce.GetFrom(resp) != nil || realm.GetFrom(resp) != nil {
		return fmt.Errorf("no challenge: %v error %d", resp.Type, errorCode(resp))
	}
	key := pion.NewLongTermIntegrity(benchUser, realm.String(), benchPass)
	auth := []pion.Setter{pion.NewUsername(benchUser), &realm, &nonce, key}
	if resp, err = ask(append([]pion.Setter{allocate, requestedTransport(17)}, auth...)...); err != nil {
		return fmt.Errorf("allocate: %w", err)
	}
	if resp.Type.Class != pion.ClassSuccessResponse {
		return fmt.Errorf("allocate: error %d", errorCode(resp))
	}
	lifetime0 := setterFunc(func(m *pion.Message) error { m.Add(pion.AttrLifetime, []byte{0, 0, 0, 0}); return nil })
	if resp, err = ask(append([]pion.Setter{pion.NewType(pion.MethodRefresh, pion.ClassRequest), lifetime0}, auth...)...); err != nil {
		return fmt.Errorf("refresh: %w", err)
	}
	if resp.Type.Class != pion.ClassSuccessResponse {
		return fmt.Errorf("refresh: error %d", errorCode(resp))
	}
	return nil
}

// progress writes a line for the operator watching the run.
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench-turn: "+format+"\n", args...)
}

// TestBenchTURN is the driver of make bench-turn. Summary lines go to
// stdout, progress to stderr.
func TestBenchTURN(t *testing.T) {
	if os.Getenv("NASREACH_BENCH_TURN") == "" {
		t.Skip("benchmark: run with make bench-turn")
	}
	serverCPU := os.Getenv("BENCH_TURN_SERVER_CPU")
	if serverCPU == "" {
		serverCPU = "0"
	}
	profileDir := os.Getenv("BENCH_TURN_PPROF") // CPU profiles of ours, one per run
	clients := benchEnv("BENCH_TURN_CLIENTS", 20)
	paceMS := benchEnv("BENCH_TURN_PACE_MS", 0) // uclient -z; 0 sends unpaced
	window := time.Duration(benchEnv("BENCH_TURN_SECONDS", 10)) * time.Second
	rounds := benchEnv("BENCH_TURN_ROUNDS", 2)
	allocSeconds := benchEnv("BENCH_TURN_ALLOC_SECONDS", 5)
	allocWorkers := benchEnv("BENCH_TURN_ALLOC_WORKERS", 32)
	testutil.NeedTool(t, "turnutils_uclient")
	testutil.NeedTool(t, "turnserver")

	load, _ := os.ReadFile("/proc/loadavg")
	pace := "unpaced (-z 0)"
	if paceMS > 0 {
		pace = fmt.Sprintf("one message per %d ms each (-z %d)", paceMS, paceMS)
	}
	progress("servers on CPU %s; uclient, turnutils_peer and the allocation generator on the CPUs this driver may use; %d uclient clients sending %s, %v window per run, best of %d rounds (order alternates); load average %s",
		serverCPU, clients, pace, window, rounds, strings.Join(strings.Fields(string(load))[:3], " "))
	peer := startBenchPeer(t)
	kinds := []string{"ours", "coturn"}
	cases := []struct {
		name string
		args []string
	}{
		{"udp100", []string{"-l", "100"}},
		{"udp1000", []string{"-l", "1000"}},
		{"tcp100", []string{"-l", "100", "-t"}},
	}
	only := os.Getenv("BENCH_TURN_CASES") // "udp100,tcp100": a subset, for profiling
	for _, c := range cases {
		if only != "" && !slices.Contains(strings.Split(only, ","), c.name) {
			continue
		}
		best := map[string]uclientResult{}
		for round := range rounds {
			order := kinds
			if round%2 == 1 {
				order = []string{kinds[1], kinds[0]}
			}
			for _, kind := range order {
				profile := ""
				if profileDir != "" && kind == "ours" {
					profile = filepath.Join(profileDir, fmt.Sprintf("ours-%s-%d.pprof", c.name, round+1))
				}
				s := startServer(t, kind, serverCPU, profile)
				r, err := runUclient(s, peer, clients, paceMS, window, c.args)
				s.stop()
				if err != nil {
					t.Fatalf("%s %s round %d: %v", c.name, kind, round+1, err)
				}
				progress("%s %s round %d: %.0f round trips/s, loss %.2f%%, server CPU %.0f%% over %.1fs (uclient totals: %d sent, %d received)",
					c.name, kind, round+1, r.rtPerSec(), 100*r.loss(), 100*r.cpuShare(), r.seconds, r.totalSent, r.totalRcv)
				if b, ok := best[kind]; !ok || r.rtPerSec() > b.rtPerSec() {
					best[kind] = r
				}
			}
		}
		for _, kind := range kinds {
			r := best[kind]
			fmt.Printf("turn %s %s rt_per_s=%.0f bytes_per_s=%.0f loss=%.2f%% server_cpu=%.0f%% cpu_us_per_rt=%.1f\n",
				c.name, kind, r.rtPerSec(), r.bytesPerSec(), 100*r.loss(), 100*r.cpuShare(), 1e6*r.cpuPerRT())
		}
		fmt.Printf("turn %s ratio ours/coturn=%.2f\n", c.name, best["ours"].rtPerSec()/best["coturn"].rtPerSec())
	}

	if only != "" && !slices.Contains(strings.Split(only, ","), "alloc") {
		return
	}
	bestAlloc := map[string]float64{}
	failures := map[string]int64{}
	allocCPU := map[string]float64{}
	for round := range rounds {
		order := kinds
		if round%2 == 1 {
			order = []string{kinds[1], kinds[0]}
		}
		for _, kind := range order {
			s := startServer(t, kind, serverCPU, "")
			cpu0, t0 := s.cpuSeconds(), time.Now()
			rate, failed, err := allocationsPerSecond(s, allocWorkers, time.Duration(allocSeconds)*time.Second)
			share := (s.cpuSeconds() - cpu0) / time.Since(t0).Seconds()
			s.stop()
			progress("alloc %s round %d: %.0f allocations/s, %d failed, server CPU %.0f%%", kind, round+1, rate, failed, 100*share)
			if err != nil {
				progress("alloc %s round %d: first failure: %v", kind, round+1, err)
			}
			if rate > bestAlloc[kind] {
				bestAlloc[kind], failures[kind], allocCPU[kind] = rate, failed, share
			}
		}
	}
	for _, kind := range kinds {
		fmt.Printf("turn alloc %s allocs_per_s=%.0f failed=%d server_cpu=%.0f%%\n", kind, bestAlloc[kind], failures[kind], 100*allocCPU[kind])
	}
	fmt.Printf("turn alloc ratio ours/coturn=%.2f\n", bestAlloc["ours"]/bestAlloc["coturn"])
}

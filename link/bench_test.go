package link_test

// BenchmarkLinkReport prints the Link figures of docs/BENCHMARKS.md in one run
// (make bench-link). Three processes, as in a deployment: the client (the
// benchmark process), the relay, and the sink, the far end: an agent logged in
// to the relay, a direct QUIC listener and a TCP listener. The relay and the
// sink are this test binary re-executed as TestLinkBenchChild, so that each
// process's CPU time and memory are its own and the relayed path (client →
// relay → sink, the client over QUIC or over the TCP carrier) is compared
// with direct paths between the same two processes (client → sink): bare
// quic-go streams, the same spliced to the sink's TCP service as an agent
// splices a session (the hop every Link session has, without the
// end-to-end TLS), and Link's own direct path. The idle agents of the memory figures log in
// from the benchmark process. Everything is on 127.0.0.1.

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/connlimit"
	"github.com/nasreach/nasreach/link"
	"github.com/nasreach/nasreach/linkserver"
	"github.com/nasreach/nasreach/store"
	"github.com/quic-go/quic-go"
	"github.com/rs/zerolog"
)

// Environment of TestLinkBenchChild.
const (
	childEnv       = "NASREACH_LINK_BENCH_CHILD"       // "relay" or "sink"
	childDirEnv    = "NASREACH_LINK_BENCH_DIR"         // relay: the store directory
	childRelayEnv  = "NASREACH_LINK_BENCH_RELAY"       // sink: relay address and fingerprint
	childDeviceEnv = "NASREACH_LINK_BENCH_DEVICE"      // sink: device and token of the byte sink
	childTTFBEnv   = "NASREACH_LINK_BENCH_TTFB_DEVICE" // sink: device and token of the real agent
	childPinEnv    = "NASREACH_LINK_RELAY_CPU"         // taskset CPU list for the relay, optional
	profileEnv     = "NASREACH_LINK_PPROF"             // directory for CPU and heap profiles, optional
	noIdleEnv      = "NASREACH_LINK_BENCH_NO_IDLE"     // skip the idle-agent memory figures
)

// childOK is a child's answer to a command that succeeded.
const childOK = "<nil>"

// TestLinkBenchChild is a child process of BenchmarkLinkReport, the relay or
// the sink; it does nothing in a normal test run. It prints one line of
// addresses, then answers each line on stdin with one line, and exits when
// stdin closes:
//
//	cpu          CPU_NS (relay), CPU_NS AGENT_PACKETS_IN AGENT_BYTES_IN (sink)
//	stats        CPU_NS HEAP+STACK_INUSE RSS AGENTS STACK_INUSE GOROUTINES (relay)
//	pprof FILE   starts a CPU profile: the error or <nil>
//	pprof-stop   stops it: <nil>
//	heap FILE    writes a heap profile: the error or <nil>
func TestLinkBenchChild(t *testing.T) {
	switch os.Getenv(childEnv) {
	case "relay":
		relayChild(t)
	case "sink":
		sinkChild(t)
	default:
		t.Skip("only as a child process of BenchmarkLinkReport")
	}
}

// relayChild serves the store in $NASREACH_LINK_BENCH_DIR and prints
// "ADDR FINGERPRINT RCVBUF SNDBUF".
func relayChild(t *testing.T) {
	dir := os.Getenv(childDirEnv)
	st, err := store.Open(store.Config{Dir: dir, SweepEvery: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	cert, fp, err := linkserver.LoadCert(dir)
	if err != nil {
		t.Fatal(err)
	}
	// The relay's socket is opened here so that the buffer sizes quic-go
	// obtained for it can be reported.
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	r, err := linkserver.New(linkserver.Config{
		PacketConn: pc, TCPAddr: "127.0.0.1:0", Certificate: cert, Store: st, Logger: zerolog.Nop(),
		MaxAgents: 20000, MaxStreamsPerDevice: 1000, StreamRate: 1e6, StreamBurst: 1e6,
		// Every benchmark agent and client comes from 127.0.0.1.
		Conns:    connlimit.Config{Max: 1 << 16, MaxPerSource: 1 << 16},
		TCPConns: connlimit.Config{Max: 1 << 10, MaxPerSource: 1 << 10},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Shutdown(context.Background())
	rcv, snd := socketBuffers(pc)
	fmt.Printf("%s %s %d %d %s\n", r.Addr(), fp, rcv, snd, r.TCPAddr())
	serveCommands(func(cmd string) string {
		switch cmd {
		case "cpu":
			return fmt.Sprint(link.SelfCPU().Nanoseconds())
		case "stats":
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			return fmt.Sprintf("%d %d %d %d %d %d", link.SelfCPU().Nanoseconds(), ms.HeapInuse+ms.StackInuse, rssBytes(), r.Agents(),
				ms.StackInuse, runtime.NumGoroutine())
		}
		return "unknown command"
	})
}

// sinkChild logs in to the relay as the byte-sink agent and as a real agent
// (for the time to first byte), serves a direct QUIC listener and a TCP
// listener, and prints "AGENT_PORT DIRECT_ADDR DIRECT_FINGERPRINT TCP_ADDR".
func sinkChild(t *testing.T) {
	ctx := context.Background()
	server, relayFP, _ := strings.Cut(os.Getenv(childRelayEnv), " ")
	device, token, _ := strings.Cut(os.Getenv(childDeviceEnv), " ")
	ttfbDevice, ttfbToken, _ := strings.Cut(os.Getenv(childTTFBEnv), " ")

	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: udp}
	defer tr.Close()
	agent, err := benchAgent(ctx, tr, server, relayFP, device, token, true)
	if err != nil {
		t.Fatal(err)
	}

	key, _, err := link.LoadOrCreateKey(filepath.Join(t.TempDir(), "direct.key"))
	if err != nil {
		t.Fatal(err)
	}
	cert, err := link.SelfSignedCert(key, "direct")
	if err != nil {
		t.Fatal(err)
	}
	// The direct QUIC listener: ALPN "bench" streams go to a byte sink;
	// "bench-tcp" streams are spliced to the TCP byte sink as an agent
	// splices a session, without the end-to-end TLS.
	dln, err := quic.ListenAddr("127.0.0.1:0", &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{"bench", "bench-tcp"}, Certificates: []tls.Certificate{cert}},
		&quic.Config{MaxIncomingStreams: 1000})
	if err != nil {
		t.Fatal(err)
	}
	defer dln.Close()
	tcpAddr := tcpServer(t, func(c net.Conn) { link.SinkServe(c) })
	go func() {
		for {
			c, err := dln.Accept(ctx)
			if err != nil {
				return
			}
			hop := c.ConnectionState().TLS.NegotiatedProtocol == "bench-tcp"
			go func() {
				for {
					s, err := c.AcceptStream(ctx)
					if err != nil {
						return
					}
					if !hop {
						go func() { link.SinkServe(s); s.Close() }()
						continue
					}
					go func() {
						local, err := net.Dial("tcp", tcpAddr)
						if err != nil {
							s.CancelRead(0)
							s.CancelWrite(0)
							return
						}
						defer local.Close()
						link.SpliceStream(local, s, c)
					}()
				}
			}()
		}
	}()

	// A real agent with end-to-end TLS, serving one byte on port 22 and a
	// byte sink on port 9 (for Link's own direct path).
	oneByte := tcpServer(t, func(c net.Conn) { c.Write([]byte{1}) })
	ttfbAgent, err := link.NewAgent(link.AgentConfig{Server: server, RelayFingerprint: relayFP, Device: ttfbDevice, Token: ttfbToken,
		Expose: map[uint16]string{22: oneByte, 9: tcpAddr}, StateDir: t.TempDir(), Logger: zerolog.Nop(), Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer ttfbAgent.Close()
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := ttfbAgent.WaitOnline(wctx); err != nil {
		t.Fatal(err)
	}

	fmt.Printf("%d %s %s %s\n", udp.LocalAddr().(*net.UDPAddr).Port, dln.Addr(), link.Fingerprint(cert.Leaf.RawSubjectPublicKeyInfo), tcpAddr)
	serveCommands(func(cmd string) string {
		if cmd != "cpu" {
			return "unknown command"
		}
		s := agent.ConnectionStats()
		return fmt.Sprintf("%d %d %d", link.SelfCPU().Nanoseconds(), s.PacketsReceived, s.BytesReceived)
	})
}

// serveCommands answers the lines on stdin until it closes: the profile
// commands itself, any other with answer.
func serveCommands(answer func(cmd string) string) {
	var prof *os.File
	stopProfile := func() {
		if prof != nil {
			pprof.StopCPUProfile()
			prof.Close()
			prof = nil
		}
	}
	defer stopProfile()
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		cmd, arg, _ := strings.Cut(sc.Text(), " ")
		switch cmd {
		case "pprof":
			f, err := os.Create(arg)
			if err == nil {
				if err = pprof.StartCPUProfile(f); err != nil {
					f.Close()
				} else {
					prof = f
				}
			}
			fmt.Println(errString(err))
		case "pprof-stop":
			stopProfile()
			fmt.Println(childOK)
		case "heap":
			f, err := os.Create(arg)
			if err == nil {
				runtime.GC()
				err = errors.Join(pprof.Lookup("heap").WriteTo(f, 0), f.Close())
			}
			fmt.Println(errString(err))
		default:
			fmt.Println(answer(cmd))
		}
	}
}

func errString(err error) string {
	if err == nil {
		return childOK
	}
	return strings.ReplaceAll(err.Error(), "\n", " ")
}

// socketBuffers returns the receive and send buffer sizes the kernel reports
// for c (on Linux twice what was granted, the share for its bookkeeping
// included), or -1 when it cannot tell.
func socketBuffers(c *net.UDPConn) (rcv, snd int) {
	rcv, snd = -1, -1
	if rc, err := c.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			if v, err := syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF); err == nil {
				rcv = v
			}
			if v, err := syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF); err == nil {
				snd = v
			}
		})
	}
	return rcv, snd
}

func rssBytes() uint64 {
	b, _ := os.ReadFile("/proc/self/status")
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// child is a running TestLinkBenchChild.
type child struct {
	name  string
	cmd   *exec.Cmd
	in    io.WriteCloser
	out   *bufio.Scanner
	first []string // the fields of its first line
}

// startChild starts TestLinkBenchChild as role with env and reads its first
// line, of fields fields. The child ends when its stdin closes (at the end of
// the benchmark); it is killed if it does not within 15 s, and its own test
// timeout bounds it should this process die without closing it.
func startChild(b *testing.B, role string, fields int, env ...string) *child {
	args := []string{os.Args[0], "-test.run=^TestLinkBenchChild$", "-test.count=1", "-test.timeout=15m"}
	if cpu := os.Getenv(childPinEnv); cpu != "" && role == "relay" { // pin the relay, as if on a machine of its own
		args = append([]string{"taskset", "-c", cpu}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(append(os.Environ(), childEnv+"="+role), env...)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	outp, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	c := &child{name: role, cmd: cmd, in: in, out: bufio.NewScanner(outp)}
	b.Cleanup(func() {
		in.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	if !c.out.Scan() {
		b.Fatalf("%s process printed nothing", role)
	}
	if c.first = strings.Fields(c.out.Text()); len(c.first) != fields {
		b.Fatalf("%s process said %q", role, c.out.Text())
	}
	return c
}

// ask sends one command line to the child and returns its answer.
func (c *child) ask(b *testing.B, cmd string) string {
	io.WriteString(c.in, cmd+"\n")
	if !c.out.Scan() {
		b.Fatalf("%s process ended", c.name)
	}
	return c.out.Text()
}

// ints asks cmd and parses the answer's integer fields.
func (c *child) ints(b *testing.B, cmd string) []int64 {
	ans := c.ask(b, cmd)
	var out []int64
	for f := range strings.FieldsSeq(ans) {
		v, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			b.Fatalf("%s process answered %q to %s", c.name, ans, cmd)
		}
		out = append(out, v)
	}
	return out
}

type relayStats struct {
	cpu                time.Duration
	mem, rss, stack    int64 // mem is heap and stacks in use
	agents, goroutines int64
}

func relayStatsOf(b *testing.B, relay *child) relayStats {
	v := relay.ints(b, "stats")
	if len(v) != 6 {
		b.Fatalf("relay stats: %v", v)
	}
	return relayStats{cpu: time.Duration(v[0]), mem: v[1], rss: v[2], agents: v[3], stack: v[4], goroutines: v[5]}
}

// profile starts CPU profiles of the children and of this process into
// dir/NAME-LOAD.pprof when dir is set; the returned func stops them.
func profile(b *testing.B, dir, load string, children ...*child) (stop func()) {
	if dir == "" {
		return func() {}
	}
	for _, c := range children {
		if ans := c.ask(b, "pprof "+filepath.Join(dir, c.name+"-"+load+".pprof")); ans != childOK {
			b.Fatalf("%s profile: %s", c.name, ans)
		}
	}
	f, err := os.Create(filepath.Join(dir, "client-"+load+".pprof"))
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		b.Fatal(err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
		for _, c := range children {
			c.ask(b, "pprof-stop")
		}
	}
}

// udpDrops is the sum of the drop counters (datagrams discarded because the
// receive buffer was full) of the UDP sockets bound to ports, from
// /proc/net/udp and /proc/net/udp6; -1 when they cannot be read.
func udpDrops(ports ...int) int64 {
	want := map[string]bool{}
	for _, p := range ports {
		want[fmt.Sprintf("%04X", p)] = true
	}
	sum := int64(-1)
	for _, file := range []string{"/proc/net/udp", "/proc/net/udp6"} {
		b, err := os.ReadFile(file)
		if err != nil {
			continue
		}
		sum = max(sum, 0)
		for line := range strings.SplitSeq(string(b), "\n") {
			f := strings.Fields(line) // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
			if len(f) < 13 {
				continue
			}
			if _, port, _ := strings.Cut(f[1], ":"); want[port] {
				n, _ := strconv.ParseInt(f[12], 10, 64)
				sum += n
			}
		}
	}
	return sum
}

func portOf(b *testing.B, addr string) int {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		b.Fatal(err)
	}
	return int(ap.Port())
}

func pinnedClientTLS(fp, alpn string) *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{alpn}, InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if link.Fingerprint(cs.PeerCertificates[0].RawSubjectPublicKeyInfo) != fp {
				return fmt.Errorf("peer key mismatch")
			}
			return nil
		}}
}

// benchAgent logs in as device over QUIC and, when serve is set, answers
// every Open with OK and a byte sink: the carrier without the end-to-end TLS,
// to compare with a direct QUIC stream.
func benchAgent(ctx context.Context, tr *quic.Transport, server, fp, device, token string, serve bool) (*quic.Conn, error) {
	addr, err := net.ResolveUDPAddr("udp", server)
	if err != nil {
		return nil, err
	}
	c, err := tr.Dial(ctx, addr, pinnedClientTLS(fp, link.ALPN), &quic.Config{HandshakeIdleTimeout: link.DefaultHandshakeTimeout,
		KeepAlivePeriod: link.DefaultKeepAlive, MaxIdleTimeout: link.DefaultIdleTimeout, MaxIncomingStreams: 1000})
	if err != nil {
		return nil, fmt.Errorf("agent %s: %w", device, err)
	}
	s, err := c.OpenStreamSync(ctx)
	if err != nil {
		return nil, err
	}
	if err := link.WriteFrame(s, link.Hello{Device: device, Token: token}); err != nil {
		return nil, err
	}
	if fr, err := link.ReadFrame(s, 0); err != nil || fr.(link.Result).Status != link.StatusOK {
		c.CloseWithError(0, "")
		return nil, fmt.Errorf("agent %s login: %v %v", device, fr, err)
	}
	// The Info stream a link.Agent holds open (the relay's STUN server and
	// direct-path switch), so that the relay's memory per agent counts it.
	info, err := c.OpenStreamSync(ctx)
	if err != nil {
		return nil, err
	}
	if err := link.WriteFrame(info, link.Info{}); err != nil {
		return nil, err
	}
	if _, err := link.ReadFrame(info, 0); err != nil {
		return nil, fmt.Errorf("agent %s info: %w", device, err)
	}
	if serve {
		go func() {
			for {
				st, err := c.AcceptStream(context.Background())
				if err != nil {
					return
				}
				go func() {
					if _, err := link.ReadFrame(st, 0); err != nil {
						return
					}
					link.WriteFrame(st, link.Result{Status: link.StatusOK})
					link.SinkServe(st)
					st.Close()
				}()
			}
		}()
	}
	return c, nil
}

// send moves total bytes over streams parallel streams from open and returns
// how long it took.
func send(b *testing.B, streams int, total int64, open func() (io.ReadWriter, func() error, error)) time.Duration {
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	start := time.Now()
	for range streams {
		wg.Go(func() {
			c, cw, err := open()
			if err == nil {
				err = link.SinkSend(c, cw, total/int64(streams))
				if nc, ok := c.(net.Conn); ok {
					nc.Close()
				}
			}
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	return el
}

// pathRun adds up the rounds of one path.
type pathRun struct {
	elapsed  time.Duration
	relayCPU time.Duration // the relay process
	endsCPU  time.Duration // the client and the sink process
	drops    int64         // UDP datagrams dropped on the path's sockets
	// QUIC packets and bytes toward the sink on the path's last hop.
	packets, bytes int64
}

func BenchmarkLinkReport(b *testing.B) {
	if b.N > 1 {
		b.Skip("run with -benchtime 1x")
	}
	ctx := context.Background()
	const idleLarge = 10000
	// The store: dev0 for the real agent, dev1…dev10000 for the idle agents,
	// dev10001 for the byte sink; created in parallel so that bbolt batches
	// the commits.
	dir := b.TempDir()
	st, err := store.Open(store.Config{Dir: dir, SweepEvery: -1, MaxBatchDelay: 10 * time.Millisecond})
	if err != nil {
		b.Fatal(err)
	}
	tokens := make([]string, idleLarge+2)
	var wg sync.WaitGroup
	work := make(chan int)
	for range 64 {
		wg.Go(func() {
			for i := range work {
				_, tok, err := st.Create(ctx, fmt.Sprintf("dev%d", i), store.CreateOptions{})
				if err != nil {
					b.Error(err)
				}
				tokens[i] = tok
			}
		})
	}
	for i := range tokens {
		work <- i
	}
	close(work)
	wg.Wait()
	st.Close()

	relayP := startChild(b, "relay", 5, childDirEnv+"="+dir)
	server, relayFP, relayTCP := relayP.first[0], relayP.first[1], relayP.first[4]
	sinkDev := fmt.Sprintf("dev%d", len(tokens)-1)
	sinkP := startChild(b, "sink", 4,
		childRelayEnv+"="+server+" "+relayFP,
		childDeviceEnv+"="+sinkDev+" "+tokens[len(tokens)-1],
		childTTFBEnv+"=dev0 "+tokens[0])
	sinkAgentPort, directAddr, directFP, tcpAddr := sinkP.first[0], sinkP.first[1], sinkP.first[2], sinkP.first[3]

	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	tr := &quic.Transport{Conn: udp}
	defer tr.Close()
	directUDP, err := net.ResolveUDPAddr("udp", directAddr)
	if err != nil {
		b.Fatal(err)
	}
	direct, err := tr.Dial(ctx, directUDP, pinnedClientTLS(directFP, "bench"), &quic.Config{})
	if err != nil {
		b.Fatal(err)
	}
	// The same, its streams spliced to the sink's TCP service: the hop to
	// the local service every Link session has, without the inner TLS.
	directHop, err := tr.Dial(ctx, directUDP, pinnedClientTLS(directFP, "bench-tcp"), &quic.Config{})
	if err != nil {
		b.Fatal(err)
	}
	// d measures the relay: it never goes direct. dl is a client as
	// connect runs it, whose sessions move to Link's direct path.
	relayDialer := func() *link.Dialer {
		d, err := link.NewDialer(link.DialerConfig{Server: server, RelayFingerprint: relayFP, KnownDevices: "-",
			Listen: "127.0.0.1:0", DisableDirect: true})
		if err != nil {
			b.Fatal(err)
		}
		return d
	}
	d := relayDialer()
	defer d.Close()
	// dt is a client whose UDP is blocked: QUIC goes to a socket that never
	// answers, and it reaches the relay over TCP after the head start.
	blackHole, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	defer blackHole.Close()
	tcpDialer := func() *link.Dialer {
		d, err := link.NewDialer(link.DialerConfig{Server: blackHole.LocalAddr().String(), ServerTCP: relayTCP, RelayFingerprint: relayFP,
			KnownDevices: "-", Listen: "127.0.0.1:0", DisableDirect: true})
		if err != nil {
			b.Fatal(err)
		}
		return d
	}
	dt := tcpDialer()
	defer dt.Close()
	dl, err := link.NewDialer(link.DialerConfig{Server: server, RelayFingerprint: relayFP, KnownDevices: "-", Listen: "127.0.0.1:0"})
	if err != nil {
		b.Fatal(err)
	}
	defer dl.Close()
	directStart := time.Now()
	if c, err := dl.Dial(ctx, "dev0", 22); err != nil { // through the relay: punching starts
		b.Fatal(err)
	} else {
		c.Close()
	}
	for !dl.PathTo("dev0").Direct {
		if time.Since(directStart) > 30*time.Second {
			b.Fatal("no direct path to the real agent within 30s")
		}
		time.Sleep(time.Millisecond)
	}
	timeToDirect := time.Since(directStart)

	const total = 512 << 20
	openRelay := func() (io.ReadWriter, func() error, error) {
		c, err := d.DialCarrier(ctx, sinkDev, 1)
		if err != nil {
			return nil, nil, err
		}
		return c, c.(interface{ CloseWrite() error }).CloseWrite, nil
	}
	openRelayTCP := func() (io.ReadWriter, func() error, error) {
		c, err := dt.DialCarrier(ctx, sinkDev, 1)
		if err != nil {
			return nil, nil, err
		}
		return c, c.(interface{ CloseWrite() error }).CloseWrite, nil
	}
	openDirect := func() (io.ReadWriter, func() error, error) {
		s, err := direct.OpenStreamSync(ctx)
		if err != nil {
			return nil, nil, err
		}
		return s, s.Close, nil
	}
	openDirectHop := func() (io.ReadWriter, func() error, error) {
		s, err := directHop.OpenStreamSync(ctx)
		if err != nil {
			return nil, nil, err
		}
		return s, s.Close, nil
	}
	openLinkDirect := func() (io.ReadWriter, func() error, error) {
		c, err := dl.Dial(ctx, "dev0", 9)
		if err != nil {
			return nil, nil, err
		}
		if !link.PathOf(c).Direct {
			c.Close()
			return nil, nil, errors.New("a Link session took the relay")
		}
		return c, c.(interface{ CloseWrite() error }).CloseWrite, nil
	}
	openTCP := func() (io.ReadWriter, func() error, error) {
		c, err := net.Dial("tcp", tcpAddr)
		if err != nil {
			return nil, nil, err
		}
		return c, c.(*net.TCPConn).CloseWrite, nil
	}
	send(b, 1, 32<<20, openRelay) // warm up connections and windows
	send(b, 1, 32<<20, openRelayTCP)
	send(b, 1, 32<<20, openDirect)
	send(b, 1, 32<<20, openDirectHop)
	send(b, 1, 32<<20, openLinkDirect)
	// The UDP sockets of each path, for their drop counters.
	sinkAgent, _ := strconv.Atoi(sinkAgentPort)
	relayedPorts := []int{portOf(b, server), sinkAgent}
	if c, _, err := openRelay(); err == nil {
		relayedPorts = append(relayedPorts, c.(net.Conn).LocalAddr().(*net.UDPAddr).Port) // the dialer's
		c.(net.Conn).Close()
	}
	directPorts := []int{udp.LocalAddr().(*net.UDPAddr).Port, portOf(b, directAddr)}

	line := func(name string, v float64, unit string) {
		format := "%-56s %10.1f %s\n"
		if unit == "x" || unit == "cores" {
			format = "%-56s %10.2f %s\n"
		}
		fmt.Printf(format, name, v, unit)
		b.ReportMetric(v, strings.ReplaceAll(name, " ", "_")+"_"+unit)
	}
	line("CPU cores of this machine", float64(runtime.NumCPU()), "cores")
	rcvbuf, _ := strconv.Atoi(relayP.first[2])
	sndbuf, _ := strconv.Atoi(relayP.first[3])
	line("relay UDP receive buffer (as the kernel reports it)", float64(rcvbuf)/1024, "KiB")
	line("relay UDP send buffer (as the kernel reports it)", float64(sndbuf)/1024, "KiB")

	// Goodput of each path, then what it costs in CPU: the relay process's,
	// and the two ends' (client and sink processes). The paths take turns
	// in rounds so that a change in the machine's other load touches them
	// alike. When the busy processes outnumber the cores, the relayed path
	// (three processes, twice the QUIC work) is CPU-bound and the wall-clock
	// ratio measures the machine as much as the relay; goodput per
	// CPU-second does not.
	prof := os.Getenv(profileEnv)
	sinkCPU := func() (cpu time.Duration, packets, bytes int64) {
		v := sinkP.ints(b, "cpu")
		if len(v) != 3 {
			b.Fatalf("sink cpu: %v", v)
		}
		return time.Duration(v[0]), v[1], v[2]
	}
	relayCPU := func() time.Duration { return time.Duration(relayP.ints(b, "cpu")[0]) }
	const rounds = 4
	for _, n := range []int{1, 8} {
		stop := profile(b, prof, fmt.Sprintf("%dstreams", n), relayP, sinkP)
		var rel, relTCP, dir, hop, tcp, ld pathRun
		for range rounds {
			r0, c0, dr0 := relayCPU(), link.SelfCPU(), udpDrops(relayedPorts...)
			s0, p0, b0 := sinkCPU()
			rel.elapsed += send(b, n, total/rounds, openRelay)
			r1, c1, dr1 := relayCPU(), link.SelfCPU(), udpDrops(relayedPorts...)
			s1, p1, b1 := sinkCPU()
			rel.relayCPU += r1 - r0
			rel.endsCPU += c1 - c0 + s1 - s0
			rel.drops += dr1 - dr0
			rel.packets, rel.bytes = rel.packets+p1-p0, rel.bytes+b1-b0

			r5 := relayCPU()
			relTCP.elapsed += send(b, n, total/rounds, openRelayTCP)
			relTCP.relayCPU += relayCPU() - r5
			c1 = link.SelfCPU() // the direct path's ends start here
			s1, _, _ = sinkCPU()

			q0, dd0 := direct.ConnectionStats(), udpDrops(directPorts...)
			dir.elapsed += send(b, n, total/rounds, openDirect)
			c2, q1, dd1 := link.SelfCPU(), direct.ConnectionStats(), udpDrops(directPorts...)
			s2, _, _ := sinkCPU()
			dir.endsCPU += c2 - c1 + s2 - s1
			dir.drops += dd1 - dd0
			dir.packets += int64(q1.PacketsSent - q0.PacketsSent)
			dir.bytes += int64(q1.BytesSent - q0.BytesSent)

			tcp.elapsed += send(b, n, total/rounds, openTCP)

			c5 := link.SelfCPU()
			s5, _, _ := sinkCPU()
			hop.elapsed += send(b, n, total/rounds, openDirectHop)
			c6 := link.SelfCPU()
			s6, _, _ := sinkCPU()
			hop.endsCPU += c6 - c5 + s6 - s5

			r3, c3 := relayCPU(), link.SelfCPU()
			s3, _, _ := sinkCPU()
			ld.elapsed += send(b, n, total/rounds, openLinkDirect)
			r4, c4 := relayCPU(), link.SelfCPU()
			s4, _, _ := sinkCPU()
			ld.relayCPU += r4 - r3
			ld.endsCPU += c4 - c3 + s4 - s3
		}
		stop()
		mib, gb := float64(total)/(1<<20), float64(total)/1e9
		r, q, t := mib/rel.elapsed.Seconds(), mib/dir.elapsed.Seconds(), mib/tcp.elapsed.Seconds()
		line(fmt.Sprintf("goodput %d stream(s) relayed", n), r, "MiB/s")
		line(fmt.Sprintf("goodput %d stream(s) direct QUIC", n), q, "MiB/s")
		line(fmt.Sprintf("goodput %d stream(s) loopback TCP", n), t, "MiB/s")
		line(fmt.Sprintf("ratio %d stream(s) relayed/direct", n), r/q, "x")
		rt := mib / relTCP.elapsed.Seconds()
		line(fmt.Sprintf("goodput %d stream(s) relayed, client over TCP", n), rt, "MiB/s")
		line(fmt.Sprintf("ratio %d stream(s) relayed client over TCP/over QUIC", n), rt/r, "x")
		line(fmt.Sprintf("relay CPU per GB relayed, client over TCP, %d stream(s)", n), relTCP.relayCPU.Seconds()/gb, "s/GB")
		relCPU := rel.relayCPU + rel.endsCPU
		line(fmt.Sprintf("relay CPU per GB relayed, %d stream(s)", n), rel.relayCPU.Seconds()/gb, "s/GB")
		line(fmt.Sprintf("client+sink CPU per GB relayed, %d stream(s)", n), rel.endsCPU.Seconds()/gb, "s/GB")
		line(fmt.Sprintf("client+sink CPU per GB direct QUIC, %d stream(s)", n), dir.endsCPU.Seconds()/gb, "s/GB")
		line(fmt.Sprintf("relay CPU / direct client+sink CPU, %d stream(s)", n), rel.relayCPU.Seconds()/dir.endsCPU.Seconds(), "x")
		line(fmt.Sprintf("cores busy relayed (3 processes), %d stream(s)", n), relCPU.Seconds()/rel.elapsed.Seconds(), "cores")
		line(fmt.Sprintf("cores busy direct QUIC (2 processes), %d stream(s)", n), dir.endsCPU.Seconds()/dir.elapsed.Seconds(), "cores")
		perCPURelayed, perCPUDirect := mib/relCPU.Seconds(), mib/dir.endsCPU.Seconds()
		line(fmt.Sprintf("goodput per CPU-second relayed, %d stream(s)", n), perCPURelayed, "MiB/CPU-s")
		line(fmt.Sprintf("goodput per CPU-second direct QUIC, %d stream(s)", n), perCPUDirect, "MiB/CPU-s")
		line(fmt.Sprintf("ratio per CPU-second relayed/direct, %d stream(s)", n), perCPURelayed/perCPUDirect, "x")
		line(fmt.Sprintf("UDP drops (receive buffer full) relayed, %d stream(s)", n), float64(rel.drops), "datagrams")
		line(fmt.Sprintf("UDP drops (receive buffer full) direct, %d stream(s)", n), float64(dir.drops), "datagrams")
		line(fmt.Sprintf("mean QUIC packet relay->sink, %d stream(s)", n), float64(rel.bytes)/float64(rel.packets), "B")
		line(fmt.Sprintf("mean QUIC packet client->sink direct, %d stream(s)", n), float64(dir.bytes)/float64(dir.packets), "B")
		l := mib / ld.elapsed.Seconds()
		line(fmt.Sprintf("goodput %d stream(s) Link direct (e2e TLS, agent, TCP)", n), l, "MiB/s")
		line(fmt.Sprintf("ratio %d stream(s) Link direct/direct QUIC", n), l/q, "x")
		h := mib / hop.elapsed.Seconds()
		line(fmt.Sprintf("goodput %d stream(s) direct QUIC + TCP hop (no e2e TLS)", n), h, "MiB/s")
		line(fmt.Sprintf("ratio %d stream(s) Link direct/direct QUIC + TCP hop", n), l/h, "x")
		line(fmt.Sprintf("client+sink CPU per GB direct QUIC + TCP hop, %d stream(s)", n), hop.endsCPU.Seconds()/gb, "s/GB")
		line(fmt.Sprintf("ratio %d stream(s) Link direct/relayed", n), l/r, "x")
		line(fmt.Sprintf("client+sink CPU per GB Link direct, %d stream(s)", n), ld.endsCPU.Seconds()/gb, "s/GB")
		line(fmt.Sprintf("relay CPU during Link direct, %d stream(s)", n), ld.relayCPU.Seconds()*1000, "ms")
	}

	// Time to first byte of a new relayed connection, end-to-end TLS
	// included, against the sink process's real agent and its local TCP
	// service: with the client's connection to the relay already open, and
	// with a new one (QUIC handshake to the relay first).
	ttfb := func(dd *link.Dialer) time.Duration {
		start := time.Now()
		c, err := dd.Dial(ctx, "dev0", 22)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	ttfb(d)
	const tries = 21
	var warm, cold, direct1, warmTCP, coldTCP []time.Duration
	for range tries {
		warm = append(warm, ttfb(d))
		dd := relayDialer()
		cold = append(cold, ttfb(dd))
		dd.Close()
		direct1 = append(direct1, ttfb(dl))
		warmTCP = append(warmTCP, ttfb(dt))
		dd = tcpDialer()
		coldTCP = append(coldTCP, ttfb(dd))
		dd.Close()
	}
	if !dl.PathTo("dev0").Direct {
		b.Fatal("the direct path went away during the measurements")
	}
	median := func(ds []time.Duration) float64 {
		slices.Sort(ds)
		return float64(ds[len(ds)/2].Microseconds()) / 1000
	}
	line("time to first byte, relay connection open (median)", median(warm), "ms")
	line("time to first byte, new relay connection (median)", median(cold), "ms")
	line("time to first byte, Link direct path up (median)", median(direct1), "ms")
	line("time to first byte over TCP, relay connection open (median)", median(warmTCP), "ms")
	line("time to first byte over TCP, UDP blocked, new relay connection (median)", median(coldTCP), "ms")
	line("time from the first session to the direct path", float64(timeToDirect.Microseconds())/1000, "ms")

	// Memory of the relay with idle agents.
	if os.Getenv(noIdleEnv) != "" {
		return
	}
	base := relayStatsOf(b, relayP)
	idlePorts := []int{portOf(b, server), udp.LocalAddr().(*net.UDPAddr).Port}
	var conns []*quic.Conn
	defer func() {
		for _, c := range conns {
			c.CloseWithError(0, "")
		}
	}()
	var retried atomic.Int64
	login := func(upto int) {
		work := make(chan int)
		var mu sync.Mutex
		var wg sync.WaitGroup
		for range 32 {
			wg.Go(func() {
				for i := range work {
					// A login can time out when this busy machine starves a
					// process; a bounded retry keeps the figures about memory.
					var c *quic.Conn
					var err error
					for attempt := range 3 {
						if attempt > 0 {
							retried.Add(1)
						}
						if c, err = benchAgent(ctx, tr, server, relayFP, fmt.Sprintf("dev%d", i), tokens[i], false); err == nil {
							break
						}
					}
					if err != nil {
						b.Error(err)
						continue
					}
					mu.Lock()
					conns = append(conns, c)
					mu.Unlock()
				}
			})
		}
		for i := len(conns) + 1; i <= upto; i++ {
			work <- i
		}
		close(work)
		wg.Wait()
	}
	for _, n := range []int{1000, idleLarge} {
		prev, start, drops0 := len(conns), time.Now(), udpDrops(idlePorts...)
		login(n)
		rate := float64(len(conns)-prev) / time.Since(start).Seconds()
		drops := udpDrops(idlePorts...) - drops0
		time.Sleep(time.Second)
		s := relayStatsOf(b, relayP)
		held := s.agents - base.agents
		if held < int64(n)*99/100 {
			b.Fatalf("relay holds %d idle agents, want %d", held, n)
		}
		line(fmt.Sprintf("relay Go memory (heap+stacks) with %d idle agents", n), float64(s.mem)/(1<<20), "MiB")
		line(fmt.Sprintf("relay RSS with %d idle agents", n), float64(s.rss)/(1<<20), "MiB")
		line(fmt.Sprintf("relay memory per idle agent (%d)", n), float64(s.mem-base.mem)/float64(held)/1024, "KiB")
		line(fmt.Sprintf("relay stacks per idle agent (%d)", n), float64(s.stack-base.stack)/float64(held)/1024, "KiB")
		line(fmt.Sprintf("relay goroutines per idle agent (%d)", n), float64(s.goroutines-base.goroutines)/float64(held), "goroutines")
		line(fmt.Sprintf("agent logins per second (up to %d)", n), rate, "1/s")
		line(fmt.Sprintf("agent logins retried (up to %d)", n), float64(retried.Swap(0)), "logins")
		line(fmt.Sprintf("UDP drops during logins (up to %d)", n), float64(drops), "datagrams")
		if prof != "" {
			if ans := relayP.ask(b, fmt.Sprintf("heap %s", filepath.Join(prof, fmt.Sprintf("relay-heap-%dagents.pprof", n)))); ans != childOK {
				b.Fatalf("relay heap profile: %s", ans)
			}
		}
	}
}

package link_test

// BenchmarkLinkReport prints the Link figures of docs/BENCHMARKS-link.md in
// one run (make bench-link). The relay runs in a child process (this test
// binary re-executed as TestRelayProcess) so that its CPU time and memory are
// its own; the client, the agents and the direct QUIC and TCP peers run in
// the benchmark process. Everything is on 127.0.0.1.

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nasreach/nasreach/link"
	"github.com/nasreach/nasreach/relay"
	"github.com/nasreach/nasreach/store"
	"github.com/quic-go/quic-go"
	"github.com/rs/zerolog"
)

const relayProcessEnv = "NASREACH_LINK_RELAY_PROCESS"

// TestRelayProcess is the relay child of BenchmarkLinkReport; it does nothing
// in a normal test run. It serves the store in $NASREACH_LINK_RELAY_PROCESS,
// prints "ADDR FINGERPRINT", answers "stats" lines on stdin with
// "CPU_NS HEAP_INUSE RSS AGENTS" and exits when stdin closes.
func TestRelayProcess(t *testing.T) {
	dir := os.Getenv(relayProcessEnv)
	if dir == "" {
		t.Skip("only as BenchmarkLinkReport's relay process")
	}
	st, err := store.Open(store.Config{Dir: dir, SweepEvery: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	cert, fp, err := relay.LoadLinkCert(dir, "", "")
	if err != nil {
		t.Fatal(err)
	}
	r, err := relay.NewLink(relay.LinkConfig{
		Addr: "127.0.0.1:0", Certificate: cert, Store: st, Logger: zerolog.Nop(),
		MaxAgents: 20000, MaxStreamsPerDevice: 1000, StreamRate: 1e6, StreamBurst: 1e6,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if prof := os.Getenv(relayProcessEnv + "_PPROF"); prof != "" { // CPU profile of the relay
		f, err := os.Create(prof)
		if err != nil {
			t.Fatal(err)
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	fmt.Printf("%s %s\n", r.Addr(), fp)
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if sc.Text() != "stats" {
			continue
		}
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		fmt.Printf("%d %d %d %d\n", cpu.Nanoseconds(), ms.HeapInuse+ms.StackInuse, rssBytes(), r.Agents())
	}
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

type relayProc struct {
	cmd    *exec.Cmd
	in     io.WriteCloser
	out    *bufio.Scanner
	server string
	fp     string
}

type relayStats struct {
	cpu       time.Duration
	mem, rss  uint64
	agents    int
	collected time.Time
}

func startRelayProcess(b *testing.B, dir string) *relayProc {
	args := []string{os.Args[0], "-test.run=^TestRelayProcess$", "-test.count=1"}
	if cpu := os.Getenv("NASREACH_LINK_RELAY_CPU"); cpu != "" { // pin the relay, as if on a machine of its own
		args = append([]string{"taskset", "-c", cpu}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), relayProcessEnv+"="+dir)
	cmd.Stderr = os.Stderr
	in, _ := cmd.StdinPipe()
	outp, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	p := &relayProc{cmd: cmd, in: in, out: bufio.NewScanner(outp)}
	b.Cleanup(func() { in.Close(); cmd.Wait() })
	if !p.out.Scan() {
		b.Fatal("relay process printed no address")
	}
	f := strings.Fields(p.out.Text())
	if len(f) != 2 {
		b.Fatalf("relay process said %q", p.out.Text())
	}
	p.server, p.fp = f[0], f[1]
	return p
}

func (p *relayProc) stats(b *testing.B) relayStats {
	io.WriteString(p.in, "stats\n")
	if !p.out.Scan() {
		b.Fatal("relay process ended")
	}
	var s relayStats
	var cpu int64
	fmt.Sscan(p.out.Text(), &cpu, &s.mem, &s.rss, &s.agents)
	s.cpu, s.collected = time.Duration(cpu), time.Now()
	return s
}

// sinkConn sends n bytes on a stream or connection, half-closes, and waits
// for the far end's 8-byte count of what it received.
func sinkSend(c io.ReadWriter, closeWrite func() error, n int64) error {
	buf := make([]byte, 64<<10)
	for sent := int64(0); sent < n; {
		k := min(int64(len(buf)), n-sent)
		if _, err := c.Write(buf[:k]); err != nil {
			return err
		}
		sent += k
	}
	if err := closeWrite(); err != nil {
		return err
	}
	var got [8]byte
	if _, err := io.ReadFull(c, got[:]); err != nil {
		return err
	}
	if m := int64(binary.BigEndian.Uint64(got[:])); m != n {
		return fmt.Errorf("far end received %d of %d bytes", m, n)
	}
	return nil
}

// sinkServe is the receiving end: count, then answer the count.
func sinkServe(rw io.ReadWriter) {
	n, _ := io.Copy(io.Discard, rw)
	var out [8]byte
	binary.BigEndian.PutUint64(out[:], uint64(n))
	rw.Write(out[:])
}

func pinnedClientTLS(fp, alpn string) *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{alpn}, InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if link.Fingerprint(cs.PeerCertificates[0].RawSubjectPublicKeyInfo) != fp {
				return fmt.Errorf("relay key mismatch")
			}
			return nil
		}}
}

// benchAgent logs in as device over QUIC and answers every Open with OK and a
// byte sink: the carrier without the end-to-end TLS, to compare with a direct
// QUIC stream.
func benchAgent(ctx context.Context, tr *quic.Transport, server, fp, device, token string, serve bool) (*quic.Conn, error) {
	addr, _ := net.ResolveUDPAddr("udp", server)
	c, err := tr.Dial(ctx, addr, pinnedClientTLS(fp, link.ALPN), &quic.Config{KeepAlivePeriod: 10 * time.Second, MaxIdleTimeout: 30 * time.Second, MaxIncomingStreams: 1000})
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
		return nil, fmt.Errorf("agent %s login: %v %v", device, fr, err)
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
					sinkServe(st)
					st.Close()
				}()
			}
		}()
	}
	return c, nil
}

func goodput(b *testing.B, streams int, total int64, open func() (io.ReadWriter, func() error, error)) float64 {
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	start := time.Now()
	for range streams {
		wg.Go(func() {
			c, cw, err := open()
			if err == nil {
				err = sinkSend(c, cw, total/int64(streams))
			}
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	return float64(total) / time.Since(start).Seconds() / (1 << 20)
}

func BenchmarkLinkReport(b *testing.B) {
	if b.N > 1 {
		b.Skip("run with -benchtime 1x")
	}
	ctx := context.Background()
	const idleLarge = 10000
	// The store: two benchmark devices plus the idle agents' devices, created
	// in parallel so that bbolt batches the commits.
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
	p := startRelayProcess(b, dir)

	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	tr := &quic.Transport{Conn: udp}
	defer tr.Close()
	sinkDev := len(tokens) - 1
	if _, err := benchAgent(ctx, tr, p.server, p.fp, fmt.Sprintf("dev%d", sinkDev), tokens[sinkDev], true); err != nil {
		b.Fatal(err)
	}

	// Peers without the relay: a direct QUIC listener and plain TCP.
	key, _, _ := link.LoadOrCreateKey(dir + "/direct.key")
	cert, _ := link.SelfSignedCert(key, "direct")
	dln, err := quic.ListenAddr("127.0.0.1:0", &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{"bench"}, Certificates: []tls.Certificate{cert}},
		&quic.Config{MaxIncomingStreams: 1000})
	if err != nil {
		b.Fatal(err)
	}
	defer dln.Close()
	go func() {
		for {
			c, err := dln.Accept(ctx)
			if err != nil {
				return
			}
			go func() {
				for {
					s, err := c.AcceptStream(ctx)
					if err != nil {
						return
					}
					go func() { sinkServe(s); s.Close() }()
				}
			}()
		}
	}()
	tln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer tln.Close()
	go func() {
		for {
			c, err := tln.Accept()
			if err != nil {
				return
			}
			go func() { sinkServe(c); c.Close() }()
		}
	}()
	direct, err := tr.Dial(ctx, dln.Addr(), pinnedClientTLS(link.Fingerprint(cert.Leaf.RawSubjectPublicKeyInfo), "bench"), &quic.Config{})
	if err != nil {
		b.Fatal(err)
	}
	d, err := link.NewDialer(link.DialerConfig{Server: p.server, RelayFingerprint: p.fp, KnownDevices: "-"})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()

	const total = 512 << 20
	openRelay := func() (io.ReadWriter, func() error, error) {
		c, err := d.DialCarrier(ctx, fmt.Sprintf("dev%d", sinkDev), 1)
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
	openTCP := func() (io.ReadWriter, func() error, error) {
		c, err := net.Dial("tcp", tln.Addr().String())
		if err != nil {
			return nil, nil, err
		}
		return c, c.(*net.TCPConn).CloseWrite, nil
	}
	goodput(b, 1, 32<<20, openRelay) // warm up connections and windows
	goodput(b, 1, 32<<20, openDirect)
	line := func(name string, v float64, unit string) {
		fmt.Printf("%-48s %10.1f %s\n", name, v, unit)
		b.ReportMetric(v, strings.ReplaceAll(name, " ", "_")+"_"+unit)
	}
	var relayed [2]float64
	var relayBytes int64
	before := p.stats(b)
	for i, n := range []int{1, 8} {
		r := goodput(b, n, total, openRelay)
		relayBytes += total
		q := goodput(b, n, total, openDirect)
		t := goodput(b, n, total, openTCP)
		relayed[i] = r
		line(fmt.Sprintf("goodput %d stream(s) relayed", n), r, "MiB/s")
		line(fmt.Sprintf("goodput %d stream(s) direct QUIC", n), q, "MiB/s")
		line(fmt.Sprintf("goodput %d stream(s) loopback TCP", n), t, "MiB/s")
		line(fmt.Sprintf("ratio %d stream(s) relayed/direct", n), r/q, "x")
	}
	after := p.stats(b)
	line("relay CPU per GB relayed", (after.cpu-before.cpu).Seconds()/(float64(relayBytes)/1e9), "s/GB")

	// Time to first byte of a new relayed connection, end-to-end TLS
	// included, against a real agent serving a local TCP service.
	echoAddr := tcpServerB(b, func(c net.Conn) { c.Write([]byte{1}) })
	agent, err := link.NewAgent(link.AgentConfig{Server: p.server, RelayFingerprint: p.fp, Device: "dev0", Token: tokens[0],
		Expose: map[uint16]string{22: echoAddr}, StateDir: b.TempDir(), Logger: zerolog.Nop()})
	if err != nil {
		b.Fatal(err)
	}
	defer agent.Close()
	if err := agent.WaitOnline(ctx); err != nil {
		b.Fatal(err)
	}
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
	var warm, cold time.Duration
	const tries = 20
	for range tries {
		warm += ttfb(d)
		dd, _ := link.NewDialer(link.DialerConfig{Server: p.server, RelayFingerprint: p.fp, KnownDevices: "-"})
		cold += ttfb(dd)
		dd.Close()
	}
	line("time to first byte, relay connection open", float64(warm.Microseconds())/tries/1000, "ms")
	line("time to first byte, new relay connection", float64(cold.Microseconds())/tries/1000, "ms")
	agent.Close()

	// Memory of the relay with idle agents.
	if os.Getenv("NASREACH_LINK_BENCH_NO_IDLE") != "" {
		return
	}
	base := p.stats(b)
	var conns []*quic.Conn
	login := func(upto int) {
		work := make(chan int)
		var mu sync.Mutex
		var wg sync.WaitGroup
		for range 32 {
			wg.Go(func() {
				for i := range work {
					c, err := benchAgent(ctx, tr, p.server, p.fp, fmt.Sprintf("dev%d", i), tokens[i], false)
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
		prev, start := len(conns), time.Now()
		login(n)
		rate := float64(len(conns)-prev) / time.Since(start).Seconds()
		time.Sleep(time.Second)
		s := p.stats(b)
		if s.agents < n {
			b.Fatalf("relay holds %d agents, want %d", s.agents, n)
		}
		line(fmt.Sprintf("relay Go memory with %d idle agents", n), float64(s.mem)/(1<<20), "MiB")
		line(fmt.Sprintf("relay RSS with %d idle agents", n), float64(s.rss)/(1<<20), "MiB")
		line(fmt.Sprintf("relay memory per idle agent (%d)", n), float64(s.mem-base.mem)/float64(n)/1024, "KiB")
		line(fmt.Sprintf("agent logins per second (up to %d)", n), rate, "1/s")
	}
	for _, c := range conns {
		c.CloseWithError(0, "")
	}
}

func tcpServerB(b *testing.B, serve func(net.Conn)) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { serve(c); c.Close() }()
		}
	}()
	return ln.Addr().String()
}

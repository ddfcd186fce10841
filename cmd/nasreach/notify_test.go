package main

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/daemon"
	"github.com/nasreach/nasreach/internal/testutil"
)

// These tests run the real binary with a NOTIFY_SOCKET the test binds, the
// way systemd runs a Type=notify unit, and check what systemd would see.

// buildNasreach compiles the daemon into a temporary directory.
func buildNasreach(t *testing.T) string {
	t.Helper()
	return testutil.BuildNasreach(t)
}

// shortTempDir is a temporary directory with a path short enough for a unix
// socket address (108 bytes), which t.TempDir under a long test name is not.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "nr")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// notifySocket stands in for systemd's end of NOTIFY_SOCKET. Like systemd it
// asks the kernel for the sender's credentials, which is how NotifyAccess=main
// tells the main process's messages from others.
type notifySocket struct {
	t    *testing.T
	conn *net.UnixConn
	Path string
}

// notifyMsg is one datagram: its assignments and the process that sent it.
type notifyMsg struct {
	Raw    string
	Fields map[string]string
	PID    int
}

func newNotifySocket(t *testing.T) *notifySocket {
	t.Helper()
	path := filepath.Join(shortTempDir(t), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatalf("bind notify socket: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	raw, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_PASSCRED, 1)
	}); err != nil || serr != nil {
		t.Fatalf("SO_PASSCRED on notify socket: %v %v", err, serr)
	}
	return &notifySocket{t: t, conn: conn, Path: path}
}

// next returns the next datagram, or false when none arrives in time.
func (s *notifySocket) next(timeout time.Duration) (notifyMsg, bool) {
	s.t.Helper()
	buf := make([]byte, 4096)
	oob := make([]byte, syscall.CmsgSpace(syscall.SizeofUcred))
	_ = s.conn.SetReadDeadline(time.Now().Add(timeout))
	n, oobn, _, _, err := s.conn.ReadMsgUnix(buf, oob)
	if err != nil {
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			s.t.Errorf("read notify socket: %v", err)
		}
		return notifyMsg{}, false
	}
	m := notifyMsg{Raw: string(buf[:n]), Fields: map[string]string{}}
	for line := range strings.SplitSeq(m.Raw, "\n") {
		k, v, _ := strings.Cut(line, "=")
		m.Fields[k] = v
	}
	if cmsgs, err := syscall.ParseSocketControlMessage(oob[:oobn]); err == nil && len(cmsgs) > 0 {
		if cred, err := syscall.ParseUnixCredentials(&cmsgs[0]); err == nil {
			m.PID = int(cred.Pid)
		}
	}
	return m, true
}

// waitFor reads datagrams until one assigns key=value and returns it; it
// fails the test after timeout.
func (s *notifySocket) waitFor(key, value string, timeout time.Duration) notifyMsg {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	var seen []string
	for time.Now().Before(deadline) {
		m, ok := s.next(time.Until(deadline))
		if !ok {
			break
		}
		if m.Fields[key] == value {
			return m
		}
		seen = append(seen, m.Raw)
	}
	s.t.Fatalf("no %s=%s on the notify socket within %v; got %q", key, value, timeout, seen)
	return notifyMsg{}
}

// nasreachProcess is the daemon running as a child process.
type nasreachProcess struct {
	cmd     *exec.Cmd
	stderr  *testutil.Buffer // the child's log, read while it runs
	exited  chan struct{}    // closed when the process has exited
	exitErr error            // what Wait returned; read after exited
}

// systemdEnv lists the variables systemd hands a service; the child gets only
// those the test sets.
var systemdEnv = []string{"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
	"CREDENTIALS_DIRECTORY", "STATE_DIRECTORY", "LOGS_DIRECTORY", "CONFIGURATION_DIRECTORY"}

// startNasreach runs `bin serve` on loopback with port 0 everywhere, data in a
// temporary directory, and env added to a cleaned copy of the environment. It
// is killed when the test ends if it is still running.
func startNasreach(t *testing.T, bin string, env ...string) *nasreachProcess {
	t.Helper()
	cmd := exec.Command(bin, "serve", "--data", filepath.Join(t.TempDir(), "data"),
		"--dns", "127.0.0.1:0", "--http", "127.0.0.1:0", "--metrics", "127.0.0.1:0",
		"--stun", "127.0.0.1:0", "--link", "127.0.0.1:0", "--link-tcp", "127.0.0.1:0", "--log-format", "json")
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "NASREACH_") || contains(systemdEnv, k) {
			continue
		}
		cmd.Env = append(cmd.Env, kv)
	}
	cmd.Env = append(cmd.Env, env...)
	p := &nasreachProcess{cmd: cmd, stderr: &testutil.Buffer{}, exited: make(chan struct{})}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	go func() { p.exitErr = cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("daemon log:\n%s", p.stderr)
		}
	})
	return p
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// statusAddrs reads the addresses from the STATUS= line the daemon sends with
// READY=1 ("serving ZONE: dns ADDR, http ADDR"), the line `systemctl status`
// shows.
var statusAddrs = regexp.MustCompile(`^serving (\S+): dns (\S+), http (\S+)$`)

func TestReadyIsSentOnlyOnceDNSAnswers(t *testing.T) {
	bin := buildNasreach(t)
	sock := newNotifySocket(t)
	p := startNasreach(t, bin, "NOTIFY_SOCKET="+sock.Path)

	first, ok := sock.next(30 * time.Second)
	if !ok {
		t.Fatal("no message from the daemon on NOTIFY_SOCKET: systemd would time out the start")
	}
	if first.Fields["READY"] != "1" {
		t.Fatalf("first message is %q, want READY=1", first.Raw)
	}
	// Query at once, no retry: with READY=1 systemd starts whatever waits for
	// the nameserver, and those must find it answering.
	status := statusAddrs.FindStringSubmatch(first.Fields["STATUS"])
	if status == nil {
		t.Fatalf("STATUS=%q does not say where the daemon listens", first.Fields["STATUS"])
	}
	for _, transport := range []string{"udp", "tcp"} {
		q := new(dns.Msg).SetQuestion(dns.Fqdn(status[1]), dns.TypeSOA)
		r, _, err := (&dns.Client{Net: transport, Timeout: 2 * time.Second}).Exchange(q, status[2])
		if err != nil {
			t.Fatalf("DNS over %s right after READY=1: %v", transport, err)
		}
		if r.Rcode != dns.RcodeSuccess || !r.Authoritative || len(r.Answer) != 1 {
			t.Fatalf("DNS over %s right after READY=1: %s, aa=%v, %d answers; want the zone's SOA", transport, dns.RcodeToString[r.Rcode], r.Authoritative, len(r.Answer))
		}
	}
	// NotifyAccess=main: systemd only believes the main process.
	if first.PID != p.cmd.Process.Pid {
		t.Fatalf("READY=1 came from pid %d, want the daemon's own pid %d", first.PID, p.cmd.Process.Pid)
	}
	if m, ok := sock.next(200 * time.Millisecond); ok {
		t.Fatalf("unexpected message while idle without a watchdog: %q", m.Raw)
	}
}

func TestStoppingIsSentOnSIGTERM(t *testing.T) {
	bin := buildNasreach(t)
	sock := newNotifySocket(t)
	p := startNasreach(t, bin, "NOTIFY_SOCKET="+sock.Path)
	sock.waitFor("READY", "1", 30*time.Second)

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	m := sock.waitFor("STOPPING", "1", 10*time.Second)
	if m.PID != p.cmd.Process.Pid {
		t.Fatalf("STOPPING=1 came from pid %d, want the daemon's pid %d", m.PID, p.cmd.Process.Pid)
	}
	select {
	case <-p.exited:
		if p.exitErr != nil {
			t.Fatalf("daemon exited with %v after SIGTERM, want a clean exit (systemd would mark the unit failed)", p.exitErr)
		}
	case <-time.After(daemon.ShutdownTimeout + 5*time.Second):
		t.Fatal("daemon still running after STOPPING=1")
	}
}

func TestWatchdogIsPingedPeriodically(t *testing.T) {
	bin := buildNasreach(t)
	sock := newNotifySocket(t)
	// WatchdogSec=300ms: systemd wants a ping more often than that, and
	// sd_watchdog_enabled(3) advises every half interval.
	startNasreach(t, bin, "NOTIFY_SOCKET="+sock.Path, "WATCHDOG_USEC=300000")
	sock.waitFor("READY", "1", 30*time.Second)

	const pings = 6
	start := time.Now()
	last := start
	for i := range pings {
		sock.waitFor("WATCHDOG", "1", 2*time.Second)
		if gap := time.Since(last); gap > 300*time.Millisecond {
			t.Fatalf("ping %d came %v after the previous one: systemd would have killed the daemon at 300ms", i, gap)
		}
		last = time.Now()
	}
	t.Logf("%d pings in %v", pings, time.Since(start).Round(time.Millisecond))
}

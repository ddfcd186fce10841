package link_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nasreach/nasreach/connlog"
	"github.com/nasreach/nasreach/internal/listen"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/link"
	"github.com/nasreach/nasreach/linkserver"
	"github.com/nasreach/nasreach/store"
	"github.com/nasreach/nasreach/stun"
	"github.com/quic-go/quic-go"
	"github.com/rs/zerolog"
)

// env is a relay on 127.0.0.1 with a real store, plus helpers for agents and
// clients.
type env struct {
	t  *testing.T
	st *store.Store
	// sock and tcp are the relay's UDP socket and its TCP carrier's
	// listener on the same port, held by the test for its whole run: each
	// relay started serves descriptors of its own for them.
	sock   *net.UDPConn
	tcp    *net.TCPListener
	relay  *linkserver.Server
	cfg    linkserver.Config
	fp     string
	server string
	events *eventLog
}

type eventLog struct {
	mu sync.Mutex
	ev []connlog.Event
}

func (l *eventLog) Log(e connlog.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ev = append(l.ev, e)
}

func (l *eventLog) sessions() []connlog.Event { return l.kind("session") }

// kind returns the events of one kind.
func (l *eventLog) kind(k string) []connlog.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []connlog.Event
	for _, e := range l.ev {
		if e.Kind == k {
			out = append(out, e)
		}
	}
	return out
}

func testLogger(t *testing.T) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
}

func newEnv(t *testing.T, mods ...func(*linkserver.Config)) *env {
	t.Helper()
	st, err := store.Open(store.Config{Dir: t.TempDir(), SweepEvery: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cert, fp, err := linkserver.LoadCert(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	socks, err := listen.Bind(listen.Config{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { socks.Close() })
	sock, tcp := socks.UDP[0].(*net.UDPConn), socks.TCP[0].(*net.TCPListener)
	// The daemon's STUN server, on every address as in production: the
	// relay tells agents and clients its port, and they ask it at the
	// relay's address.
	ss, err := stun.New(stun.Config{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ss.Shutdown(context.Background()) })
	e := &env{t: t, st: st, sock: sock, tcp: tcp, fp: fp, events: &eventLog{}}
	e.cfg = linkserver.Config{Certificate: cert, Store: st, Events: e.events.Log, Logger: testLogger(t),
		STUN: netip.AddrPortFrom(netip.IPv4Unspecified(), ss.Addr().Port())}
	for _, m := range mods {
		m(&e.cfg)
	}
	e.start()
	t.Cleanup(func() { e.relay.Shutdown(context.Background()) })
	return e
}

// start starts a relay on new descriptors of e.sock and e.tcp, as systemd's socket
// activation would: the relay closes its descriptor at Shutdown, the socket
// stays bound, and a restarted relay serves the same port without another
// program being able to take it in between.
func (e *env) start() {
	e.t.Helper()
	f, err := e.sock.File()
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	if e.cfg.PacketConn, err = net.FilePacketConn(f); err != nil {
		e.t.Fatal(err)
	}
	tf, err := e.tcp.File()
	if err != nil {
		e.t.Fatal(err)
	}
	defer tf.Close()
	if e.cfg.TCPListener, err = net.FileListener(tf); err != nil {
		e.t.Fatal(err)
	}
	r, err := linkserver.New(e.cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.relay, e.server = r, r.Addr().String()
}

func (e *env) addDevice(name string) string {
	e.t.Helper()
	_, tok, err := e.st.Create(context.Background(), name, store.CreateOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

func (e *env) agentConfig(device, token, stateDir string, expose map[uint16]string) link.AgentConfig {
	return link.AgentConfig{
		Server: e.server, RelayFingerprint: e.fp, Device: device, Token: token, Expose: expose,
		StateDir: stateDir, MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second, Logger: testLogger(e.t),
		Listen: "127.0.0.1:0",
	}
}

// agent starts an agent and waits until the relay has it.
func (e *env) agent(device, token string, expose map[uint16]string) *link.Agent {
	e.t.Helper()
	return e.startAgent(e.agentConfig(device, token, e.t.TempDir(), expose))
}

func (e *env) startAgent(cfg link.AgentConfig) *link.Agent {
	e.t.Helper()
	a, err := link.NewAgent(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { a.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.WaitOnline(ctx); err != nil {
		e.t.Fatal(err)
	}
	return a
}

func (e *env) dialer(mods ...func(*link.DialerConfig)) *link.Dialer {
	e.t.Helper()
	cfg := link.DialerConfig{
		Server: e.server, RelayFingerprint: e.fp, KnownDevices: filepath.Join(e.t.TempDir(), "known_devices"), Listen: "127.0.0.1:0",
		Logger: testLogger(e.t),
	}
	for _, m := range mods {
		m(&cfg)
	}
	d, err := link.NewDialer(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { d.Close() })
	return d
}

// relayOnly keeps a dialer's sessions on the relay (--direct never), for
// tests of the relay itself.
func relayOnly(c *link.DialerConfig) { c.DisableDirect = true }

// forward runs d.Serve on a loopback listener and returns its address.
func forward(t *testing.T, d *link.Dialer, device string, port uint16) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx, ln, device, port) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return ln.Addr().String()
}

const secretBody = "the-response-body-nobody-else-may-read"

func httpBackend(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s for %s", secretBody, r.URL.Path)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func get(t *testing.T, url string) string {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// openStreams dials n streams to device's port; they close when the test ends.
func openStreams(t *testing.T, d *link.Dialer, device string, port uint16, n int) []net.Conn {
	t.Helper()
	var open []net.Conn
	for range n {
		c, err := d.Dial(ctx10(t), device, port)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		open = append(open, c)
	}
	return open
}

// echoByte sends one byte over c to an echo service and reads it back.
func echoByte(c net.Conn) error {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("x")); err != nil {
		return err
	}
	_, err := io.ReadFull(c, make([]byte, 1))
	return err
}

func ctx10(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestHTTPGetThroughTunnelIsEncryptedEndToEnd(t *testing.T) {
	var seen testutil.Buffer
	e := newEnv(t, func(c *linkserver.Config) {
		c.Tap = func(_ string, _ bool, p []byte) { seen.Write(p) }
	})
	tok := e.addDevice("nas1")
	e.agent("nas1", tok, map[uint16]string{443: httpBackend(t)})
	addr := forward(t, e.dialer(), "nas1", 443)

	const path = "/secret-request-path-zz9"
	if got := get(t, "http://"+addr+path); got != secretBody+" for "+path {
		t.Fatalf("body = %q", got)
	}
	forwarded := seen.Bytes()
	if len(forwarded) < 100 {
		t.Fatalf("tap saw only %d bytes; is it wired?", len(forwarded))
	}
	for _, plain := range []string{path, secretBody, "HTTP/1.1", "Host:"} {
		if bytes.Contains(forwarded, []byte(plain)) {
			t.Errorf("the relay forwarded %q in plaintext", plain)
		}
	}
	var evs []connlog.Event
	for deadline := time.Now().Add(5 * time.Second); len(evs) == 0 && time.Now().Before(deadline); evs = e.events.sessions() {
		time.Sleep(10 * time.Millisecond) // the record is written when the relay sees both ends close
	}
	if len(evs) != 1 || evs[0].Outcome != "ok" || evs[0].Device != "nas1" || evs[0].Port != 443 ||
		evs[0].BytesIn == 0 || evs[0].BytesOut == 0 || !evs[0].Client.IsLoopback() || evs[0].Start.IsZero() {
		t.Errorf("session records = %+v", evs)
	}
}

func TestHundredConcurrentStreams(t *testing.T) {
	for i, name := range []string{link.TransportQUIC, link.TransportTCP} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			cr := e.carriers()[i]
			e.agentVia(cr, "nas1", e.addDevice("nas1"), map[uint16]string{443: echoServer(t)})
			hundredStreams(t, e.dialer(cr.dialer))
		})
	}
}

// hundredStreams echoes 100 messages over as many concurrent sessions.
func hundredStreams(t *testing.T, d *link.Dialer) {
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 100 {
		wg.Go(func() {
			c, err := d.Dial(ctx10(t), "nas1", 443)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			msg := bytes.Repeat([]byte{byte(i)}, 1000+i)
			if _, err := c.Write(msg); err != nil {
				errs <- err
				return
			}
			c.(interface{ CloseWrite() error }).CloseWrite()
			got, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(got, msg) {
				errs <- fmt.Errorf("stream %d: echo of %d bytes came back as %d: %v", i, len(msg), len(got), err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// echoServer echoes each connection and half-closes after the client does.
func echoServer(t *testing.T) string {
	t.Helper()
	return tcpServer(t, func(c net.Conn) {
		io.Copy(c, c)
		c.(*net.TCPConn).CloseWrite()
	})
}

// hashServer reads everything and answers the hex SHA-256 of it.
func hashServer(t *testing.T) string {
	return tcpServer(t, func(c net.Conn) {
		h := sha256.New()
		io.Copy(h, c)
		io.WriteString(c, hex.EncodeToString(h.Sum(nil)))
	})
}

func tcpServer(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testutil.Serve(t, ln, serve)
	return ln.Addr().String()
}

// transfer sends n pseudo-random bytes through the tunnel and checks the
// SHA-256 the far end computed.
func transfer(t *testing.T, n int64) {
	e := newEnv(t)
	tok := e.addDevice("nas1")
	e.agent("nas1", tok, map[uint16]string{9: hashServer(t)})
	sendHashed(t, e.dialer(), "nas1", n)
}

// sendHashed sends n pseudo-random bytes to device's port 9, a
// hashServer, and checks the SHA-256 it answers.
func sendHashed(t *testing.T, d *link.Dialer, device string, n int64) net.Conn {
	t.Helper()
	c, err := d.Dial(ctx10(t), device, 9)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	h := sha256.New()
	src := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{1}), n), h)
	start := time.Now()
	if _, err := io.Copy(c, src); err != nil {
		t.Fatalf("send: %v", err)
	}
	c.(interface{ CloseWrite() error }).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read hash: %v", err)
	}
	if want := hex.EncodeToString(h.Sum(nil)); string(got) != want {
		t.Fatalf("far end got SHA-256 %s, sent %s", got, want)
	}
	el := time.Since(start)
	t.Logf("%d MiB in %v (%.0f MiB/s) over %s", n>>20, el.Round(time.Millisecond), float64(n>>20)/el.Seconds(), link.TransportOf(c))
	return c
}

func TestTransfer64MiBArrivesIntact(t *testing.T) { transfer(t, 64<<20) }

func TestAgentRestartServesAgainWithinSeconds(t *testing.T) {
	e := newEnv(t)
	tok := e.addDevice("nas1")
	state := t.TempDir()
	backend := echoServer(t)
	cfg := e.agentConfig("nas1", tok, state, map[uint16]string{22: backend})
	a := e.startAgent(cfg)
	d := e.dialer()
	echo(t, d, "nas1", 22)

	a.Close()
	if _, err := d.Dial(ctx10(t), "nas1", 22); !errors.Is(err, link.ErrOffline) {
		t.Fatalf("with the agent stopped: %v, want ErrOffline", err)
	}
	start := time.Now()
	e.startAgent(cfg) // same state dir: same key, the client's pin holds
	echo(t, d, "nas1", 22)
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("back after %v", el)
	}

	// And a relay restart: the agent reconnects by itself.
	if err := e.relay.Shutdown(ctx10(t)); err != nil {
		t.Fatal(err)
	}
	e.start()
	deadline := time.Now().Add(10 * time.Second)
	start = time.Now()
	for e.relay.Agents() == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if e.relay.Agents() == 0 {
		t.Fatal("the agent did not come back within 10s of a relay restart")
	}
	t.Logf("agent back %v after the relay restart", time.Since(start).Round(time.Millisecond))
	echo(t, d, "nas1", 22)
}

// echo checks one round trip through the tunnel.
func echo(t *testing.T, d *link.Dialer, device string, port uint16) {
	t.Helper()
	c, err := d.Dial(ctx10(t), device, port)
	if err != nil {
		t.Fatalf("dial %s:%d: %v", device, port, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo: %q %v", buf, err)
	}
}

// Link switched off resets a relayed session's stream with
// StreamLinkDisabled (a session on a direct path sees its connection closed
// instead: TestLinkSwitchedOffEndsDirectSessions), and new ones are refused.
func TestLinkSwitchedOffClosesSessionAndRefusesNew(t *testing.T) {
	e := newEnv(t)
	tok := e.addDevice("nas1")
	e.agent("nas1", tok, map[uint16]string{22: echoServer(t)})
	d := e.dialer(relayOnly) // or the session may have moved to a direct path
	c, err := d.Dial(ctx10(t), "nas1", 22)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	off := false
	if _, err := e.st.Update(context.Background(), "nas1", store.Patch{Link: &off}); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = c.Read(make([]byte, 1))
	var se *quic.StreamError
	if !errors.As(err, &se) || se.ErrorCode != link.StreamLinkDisabled {
		t.Errorf("open session after link off: read error %v, want a stream reset with code %d", err, link.StreamLinkDisabled)
	}
	if _, err := d.Dial(ctx10(t), "nas1", 22); !errors.Is(err, link.ErrLinkDisabled) {
		t.Errorf("new session after link off: %v, want ErrLinkDisabled", err)
	}
}

func TestRefusalsAreDistinct(t *testing.T) {
	e := newEnv(t)
	tok := e.addDevice("nas1")
	e.agent("nas1", tok, map[uint16]string{22: echoServer(t)})
	e.addDevice("sleepy") // no agent
	ptok := e.addDevice("private")
	e.agent("private", ptok, map[uint16]string{22: echoServer(t)})
	tokenAccess := store.AccessToken
	if _, err := e.st.Update(context.Background(), "private", store.Patch{Access: &tokenAccess}); err != nil {
		t.Fatal(err)
	}
	_, code, err := e.st.AddAccessCode(context.Background(), "private")
	if err != nil {
		t.Fatal(err)
	}
	e.addDevice("dark")
	off := false
	e.st.Update(context.Background(), "dark", store.Patch{Link: &off})

	plain := e.dialer()
	wrong := e.dialer(func(c *link.DialerConfig) { c.AccessCode = "not-the-code" })
	right := e.dialer(func(c *link.DialerConfig) { c.AccessCode = code })
	for _, tc := range []struct {
		name   string
		d      *link.Dialer
		device string
		port   uint16
		want   error
	}{
		{"unknown device", plain, "nobody", 22, link.ErrUnknownDevice},
		{"offline device", plain, "sleepy", 22, link.ErrOffline},
		{"link off", plain, "dark", 22, link.ErrLinkDisabled},
		{"no access code", plain, "private", 22, link.ErrAccessDenied},
		{"wrong access code", wrong, "private", 22, link.ErrAccessDenied},
		{"unexposed port", plain, "nas1", 8080, link.ErrPortNotExposed},
		{"right access code", right, "private", 22, nil},
		{"public device", plain, "nas1", 22, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tc.d.Dial(ctx10(t), tc.device, tc.port)
			if c != nil {
				c.Close()
			}
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("Dial(%s:%d) = %v, want %v", tc.device, tc.port, err, tc.want)
			}
			if err != nil && !strings.Contains(err.Error(), tc.device) {
				t.Errorf("error %q does not name the device", err)
			}
		})
	}

	// A wrong token never gets the agent online.
	a, err := link.NewAgent(e.agentConfig("nas1", "wrong-token", t.TempDir(), map[uint16]string{22: "127.0.0.1:1"}))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := a.WaitOnline(ctx); err == nil {
		t.Error("an agent with a wrong token came online")
	}
	if err := a.LastError(); !errors.Is(err, link.ErrBadCredentials) {
		t.Errorf("agent with a wrong token: %v, want ErrBadCredentials", err)
	}
	echo(t, plain, "nas1", 22) // and did not displace the real agent
}

func TestChangedDeviceKeyIsRefused(t *testing.T) {
	e := newEnv(t)
	tok := e.addDevice("nas1")
	backend := echoServer(t)
	a := e.agent("nas1", tok, map[uint16]string{22: backend})
	known := filepath.Join(t.TempDir(), "known_devices")
	d := e.dialer(func(c *link.DialerConfig) { c.KnownDevices = known })
	echo(t, d, "nas1", 22) // first contact records the key
	b, _ := os.ReadFile(known)
	if !strings.Contains(string(b), a.Fingerprint()) {
		t.Fatalf("known_devices = %q, want the agent's %s", b, a.Fingerprint())
	}
	a.Close()
	e.agent("nas1", tok, map[uint16]string{22: backend}) // a new state dir: a new key
	_, err := d.Dial(ctx10(t), "nas1", 22)
	if !errors.Is(err, link.ErrKeyChanged) {
		t.Fatalf("dial after key change: %v, want ErrKeyChanged", err)
	}
	if !strings.Contains(err.Error(), known) {
		t.Errorf("error %q does not say which file pins the key", err)
	}
	// A pin given explicitly wins over the file and is checked too.
	pinned := e.dialer(func(c *link.DialerConfig) { c.Fingerprints = map[string]string{"nas1": a.Fingerprint()} })
	if _, err := pinned.Dial(ctx10(t), "nas1", 22); !errors.Is(err, link.ErrKeyChanged) {
		t.Fatalf("dial with the old --fingerprint: %v, want ErrKeyChanged", err)
	}
}

func TestNewestAgentWins(t *testing.T) {
	e := newEnv(t)
	tok := e.addDevice("nas1")
	state := t.TempDir()
	first := e.startAgent(e.agentConfig("nas1", tok, state, map[uint16]string{22: tcpServer(t, func(c net.Conn) { io.WriteString(c, "first") })}))
	_ = first
	e.startAgent(e.agentConfig("nas1", tok, state, map[uint16]string{22: tcpServer(t, func(c net.Conn) { io.WriteString(c, "second") })}))
	first.Close() // or it would take its place back on reconnect
	d := e.dialer()
	c, err := d.Dial(ctx10(t), "nas1", 22)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	got, _ := io.ReadAll(c)
	if string(got) != "second" {
		t.Fatalf("served by %q, want the newest agent", got)
	}
	if n := e.relay.Agents(); n != 1 {
		t.Errorf("relay holds %d agents for one device", n)
	}
}

func TestLimitsCloseOnlyTheOffendingStream(t *testing.T) {
	e := newEnv(t, func(c *linkserver.Config) { c.MaxStreamsPerDevice = 2; c.StreamBurst = 5; c.StreamRate = 0.001 })
	tok := e.addDevice("nas1")
	e.agent("nas1", tok, map[uint16]string{22: echoServer(t)})
	d := e.dialer(relayOnly) // the relay's limits bound relayed sessions
	open := openStreams(t, d, "nas1", 22, 2)
	if _, err := d.Dial(ctx10(t), "nas1", 22); !errors.Is(err, link.ErrTooManyStreams) {
		t.Errorf("third concurrent stream: %v, want ErrTooManyStreams", err)
	}
	for _, c := range open { // the first two still work
		if err := echoByte(c); err != nil {
			t.Fatalf("an admitted stream broke: %v", err)
		}
		c.Close()
	}
	// The relay ends a session when it sees the client's stream close, a
	// moment after Close returns here: wait, so that the dials below meet
	// the rate limit and not the two sessions just closed.
	for deadline := time.Now().Add(5 * time.Second); e.relay.Sessions() > 0 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	var err error
	for range 20 { // the burst of 5 is spent within 5 dials; every dial takes a token
		var c net.Conn
		if c, err = d.Dial(ctx10(t), "nas1", 22); err == nil {
			c.Close()
			continue
		}
		if !errors.Is(err, link.ErrTooManyStreams) { // a just-closed session may still count
			break
		}
	}
	if !errors.Is(err, link.ErrRateLimited) {
		t.Errorf("after the burst: %v, want ErrRateLimited", err)
	}
}

func TestShutdownStopsEveryGoroutine(t *testing.T) {
	for _, transport := range []string{link.TransportQUIC, link.TransportTCP} {
		t.Run(transport, func(t *testing.T) { shutdownStopsEveryGoroutine(t, transport) })
	}
}

// shutdownStopsEveryGoroutine runs a relay, an agent and a client with a
// session open over transport, then stops them all and counts goroutines.
func shutdownStopsEveryGoroutine(t *testing.T, transport string) {
	before := runtime.NumGoroutine()
	func() {
		st, err := store.Open(store.Config{Dir: t.TempDir(), SweepEvery: -1})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		cert, fp, _ := linkserver.LoadCert(t.TempDir())
		r, err := linkserver.New(linkserver.Config{Addr: "127.0.0.1:0", TCPAddr: "127.0.0.1:0", Certificate: cert, Store: st, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Shutdown(context.Background())
		server, serverTCP := r.Addr().String(), r.TCPAddr().String()
		if transport == link.TransportTCP { // UDP to a socket that never answers
			blackHole, err := net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer blackHole.Close()
			server = blackHole.LocalAddr().String()
		}
		_, tok, _ := st.Create(context.Background(), "nas1", store.CreateOptions{})
		backend, stopBackend := loopbackEcho(t)
		defer stopBackend()
		a, err := link.NewAgent(link.AgentConfig{Server: server, ServerTCP: serverTCP, RelayFingerprint: fp, Device: "nas1", Token: tok,
			Expose: map[uint16]string{22: backend}, StateDir: t.TempDir(), Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		if err := a.WaitOnline(ctx10(t)); err != nil {
			t.Fatal(err)
		}
		d, _ := link.NewDialer(link.DialerConfig{Server: server, ServerTCP: serverTCP, RelayFingerprint: fp, KnownDevices: "-"})
		defer d.Close()
		c, err := d.Dial(ctx10(t), "nas1", 22)
		if err != nil {
			t.Fatal(err)
		}
		if tr := link.TransportOf(c); tr != transport {
			t.Fatalf("session over %s, want %s", tr, transport)
		}
		c.Write([]byte("hi"))
		io.ReadFull(c, make([]byte, 2))
		// Leave the session open: Shutdown must end it.
	}()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines before, %d after Shutdown:\n%s", before, n, buf[:runtime.Stack(buf, true)])
	}
}

// loopbackEcho is echoServer with an explicit stop, for goroutine counting.
func loopbackEcho(t *testing.T) (string, func()) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { io.Copy(c, c); c.Close() })
		}
	})
	return ln.Addr().String(), func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}
}

// rawConn is a bare QUIC connection to the relay, for speaking the wire
// format directly.
func (e *env) rawConn(t *testing.T) *quic.Conn {
	t.Helper()
	c, err := quic.DialAddr(ctx10(t), e.server, &tls.Config{
		MinVersion: tls.VersionTLS13, NextProtos: []string{link.ALPN}, InsecureSkipVerify: true,
	}, &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.CloseWithError(0, "") })
	return c
}

func TestOversizedHeaderIsRefusedWithAReason(t *testing.T) {
	e := newEnv(t, func(c *linkserver.Config) { c.MaxHeaderBytes = 64 })
	c := e.rawConn(t)
	s, err := c.OpenStreamSync(ctx10(t))
	if err != nil {
		t.Fatal(err)
	}
	// A Connect whose access code makes the body 70 bytes.
	if err := link.WriteFrame(s, link.Connect{Device: "nas1", Port: 22, AccessCode: strings.Repeat("c", 62)}); err != nil {
		t.Fatal(err)
	}
	s.SetReadDeadline(time.Now().Add(5 * time.Second))
	fr, err := link.ReadFrame(s, 0)
	if res, ok := fr.(link.Result); err != nil || !ok || res.Status != link.StatusBadRequest || !strings.Contains(res.Message, "limit of 64") {
		t.Fatalf("answer = %#v, %v; want a bad-request result naming the limit", fr, err)
	}
	select {
	case <-c.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the relay kept the connection after a malformed first frame")
	}
}

func TestSilentConnectionIsClosedAfterTheHandshakeTimeout(t *testing.T) {
	e := newEnv(t, func(c *linkserver.Config) { c.HandshakeTimeout = 200 * time.Millisecond })
	c := e.rawConn(t)
	select {
	case <-c.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a connection that never sent a frame is still open")
	}
	var ae *quic.ApplicationError
	if err := context.Cause(c.Context()); !errors.As(err, &ae) || ae.ErrorCode != link.CloseIdle {
		t.Errorf("closed with %v, want application error %d", err, link.CloseIdle)
	}
}

func TestMaxAgentsRefusesTheExtraAgentOnly(t *testing.T) {
	e := newEnv(t, func(c *linkserver.Config) { c.MaxAgents = 1 })
	tok1, tok2 := e.addDevice("nas1"), e.addDevice("nas2")
	backend := echoServer(t)
	e.agent("nas1", tok1, map[uint16]string{22: backend})
	a2, err := link.NewAgent(e.agentConfig("nas2", tok2, t.TempDir(), map[uint16]string{22: backend}))
	if err != nil {
		t.Fatal(err)
	}
	defer a2.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := a2.WaitOnline(ctx); err == nil {
		t.Fatal("a second agent came online beyond MaxAgents=1")
	}
	if err := a2.LastError(); !errors.Is(err, link.ErrTooManyAgents) {
		t.Errorf("extra agent: %v, want ErrTooManyAgents", err)
	}
	echo(t, e.dialer(), "nas1", 22) // the admitted one still serves
}

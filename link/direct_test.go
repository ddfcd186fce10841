package link_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/link"
	"github.com/nasreach/nasreach/linkserver"
	"github.com/nasreach/nasreach/store"
	"github.com/quic-go/quic-go"
)

// waitDirect waits until new sessions from d to device take a direct path.
func waitDirect(t *testing.T, d *link.Dialer, device string) link.Path {
	t.Helper()
	testutil.WaitFor(t, 10*time.Second, "a direct path to "+device, func() bool { return d.PathTo(device).Direct })
	return d.PathTo(device)
}

// goDirect opens a first session to device's port (through the relay),
// waits for the direct path and returns a session on it.
func goDirect(t *testing.T, d *link.Dialer, device string, port uint16) net.Conn {
	t.Helper()
	dialPath(t, d, device, port, false)
	waitDirect(t, d, device)
	return dialPath(t, d, device, port, true)
}

// echoDevice is a relay, an agent for nas1 exposing an echo service as port
// 22 and a dialer.
func echoDevice(t *testing.T) (*env, *link.Agent, *link.Dialer) {
	e := newEnv(t)
	tok := e.addDevice("nas1")
	a := e.agent("nas1", tok, map[uint16]string{22: echoServer(t)})
	return e, a, e.dialer()
}

// waitEvent waits for connection-log events of kind with outcome and
// returns their details.
func (e *env) waitEvent(kind, outcome string) []string {
	e.t.Helper()
	var details []string
	testutil.WaitFor(e.t, 10*time.Second, "a "+kind+" event with outcome "+outcome, func() bool {
		details = nil
		for _, ev := range e.events.kind(kind) {
			if ev.Outcome == outcome {
				details = append(details, ev.Detail)
			}
		}
		return len(details) > 0
	})
	return details
}

// dialPath dials device:port and fails the test unless the session takes
// the wanted path and echoes.
func dialPath(t *testing.T, d *link.Dialer, device string, port uint16, direct bool) net.Conn {
	t.Helper()
	c, err := d.Dial(ctx10(t), device, port)
	if err != nil {
		t.Fatalf("dial %s:%d: %v", device, port, err)
	}
	t.Cleanup(func() { c.Close() })
	if got := link.PathOf(c); got.Direct != direct {
		t.Fatalf("session took path %v, want direct=%v", got, direct)
	}
	if err := echoByte(c); err != nil {
		t.Fatalf("echo on the %v path: %v", link.PathOf(c), err)
	}
	return c
}

// A client and an agent on one machine: the first session goes through the
// relay at once, the next ones straight to the agent, and the relay
// forwards none of their bytes.
func TestSessionsMoveToADirectPath(t *testing.T) {
	var tapped atomic.Int64
	e := newEnv(t, func(c *linkserver.Config) {
		c.Tap = func(_ string, _ bool, p []byte) { tapped.Add(int64(len(p))) }
	})
	tok := e.addDevice("nas1")
	a := e.agent("nas1", tok, map[uint16]string{22: echoServer(t), 9: hashServer(t)})
	d := e.dialer()
	first := dialPath(t, d, "nas1", 22, false)
	p := waitDirect(t, d, "nas1")
	if p.Local != link.CandidateHost || p.Remote != link.CandidateHost {
		t.Errorf("pair %v>%v, want host>host on one machine", p.Local, p.Remote)
	}
	// The relayed session's last records (acknowledgments, its end) are
	// through once the relay logs it.
	first.Close()
	testutil.WaitFor(t, 5*time.Second, "the relayed session's record", func() bool { return len(e.events.sessions()) == 1 })
	relayed := tapped.Load()
	dialPath(t, d, "nas1", 22, true)
	// The agent's refusals come back as they do through the relay.
	if c, err := d.Dial(ctx10(t), "nas1", 8080); c != nil || !errors.Is(err, link.ErrPortNotExposed) {
		t.Errorf("unexposed port on the direct path: %v, %v; want no conn and ErrPortNotExposed", c, err)
	}
	if !d.PathTo("nas1").Direct {
		t.Error("a refusal from the agent gave up the direct path")
	}

	c, err := d.Dial(ctx10(t), "nas1", 9)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const n = 16 << 20
	h := sha256.New()
	if _, err := io.Copy(c, io.TeeReader(io.LimitReader(mrand.NewChaCha8([32]byte{2}), n), h)); err != nil {
		t.Fatal(err)
	}
	c.(interface{ CloseWrite() error }).CloseWrite()
	got, err := io.ReadAll(c)
	if want := hex.EncodeToString(h.Sum(nil)); err != nil || string(got) != want {
		t.Fatalf("far end got SHA-256 %s (%v), sent %s", got, err, want)
	}
	if now := tapped.Load(); now != relayed {
		t.Errorf("the relay forwarded %d bytes of direct sessions", now-relayed)
	}

	// The exchange is in the connection log, its addresses masked; the
	// client reported how it ended.
	details := e.waitEvent("exchange", "ok")
	sock := link.AgentSocket(a).Addr().String()
	if !strings.Contains(details[0], "host 127.0.0.0") || strings.Contains(details[0], sock) {
		t.Errorf("exchange logged as %q: want masked host candidates", details[0])
	}
	if got := e.waitEvent("punch", "direct"); got[0] != "host>host" {
		t.Errorf("punch reported as %q, want host>host", got[0])
	}
}

// --direct never on either end, and the operator's switch, keep sessions
// on the relay; a refusal is logged as such.
func TestDirectPathsCanBeTurnedOff(t *testing.T) {
	for _, tc := range []struct {
		name    string
		relay   func(*linkserver.Config)
		agent   func(*link.AgentConfig)
		dialer  func(*link.DialerConfig)
		refusal bool // the relay logs a refused exchange
	}{
		{"client --direct never", nil, nil, func(c *link.DialerConfig) { c.DisableDirect = true }, false},
		{"agent --direct never", nil, func(c *link.AgentConfig) { c.DisableDirect = true }, nil, true},
		{"operator", func(c *linkserver.Config) { c.DisableDirect = true }, nil, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mods []func(*linkserver.Config)
			if tc.relay != nil {
				mods = append(mods, tc.relay)
			}
			e := newEnv(t, mods...)
			tok := e.addDevice("nas1")
			cfg := e.agentConfig("nas1", tok, t.TempDir(), map[uint16]string{22: echoServer(t)})
			if tc.agent != nil {
				tc.agent(&cfg)
			}
			e.startAgent(cfg)
			var dmods []func(*link.DialerConfig)
			if tc.dialer != nil {
				dmods = append(dmods, tc.dialer)
			}
			d := e.dialer(dmods...)
			dialPath(t, d, "nas1", 22, false)
			if tc.refusal {
				if got := e.waitEvent("exchange", "refused"); got[0] != "no direct paths" {
					t.Errorf("refusal logged as %q", got[0])
				}
			} else {
				time.Sleep(500 * time.Millisecond) // what an attempt would take on loopback, many times over
			}
			dialPath(t, d, "nas1", 22, false)
			if n := len(e.events.kind("punch")); n != 0 {
				t.Errorf("%d punch reports, want none", n)
			}
		})
	}
}

// The operator turning direct paths off while they run: agents and
// clients hear it on their Info streams and close them; sessions in
// flight resume through the relay, new ones start there. Turned on again,
// they come back.
func TestOperatorTurningDirectOffMovesSessionsToTheRelay(t *testing.T) {
	e, _, d := echoDevice(t)
	c := goDirect(t, d, "nas1", 22)
	e.relay.SetDirect(false)
	testutil.WaitFor(t, 5*time.Second, "the direct path to close", func() bool { return !d.PathTo("nas1").Direct })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := echoByte(c); err != nil {
		t.Errorf("the direct session in flight when the operator switched direct paths off: %v", err)
	}
	if link.PathOf(c).Direct {
		t.Errorf("the session in flight is still direct after the operator's switch")
	}
	dialPath(t, d, "nas1", 22, false)

	// Turned on again, the next session starts punching at once.
	e.relay.SetDirect(true)
	testutil.WaitFor(t, 5*time.Second, "a direct path again", func() bool {
		c, err := d.Dial(ctx10(t), "nas1", 22)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		return d.PathTo("nas1").Direct
	})
}

// Switching Link off ends direct sessions as it ends relayed ones, and new
// sessions are refused.
func TestLinkSwitchedOffEndsDirectSessions(t *testing.T) {
	e, _, d := echoDevice(t)
	c := goDirect(t, d, "nas1", 22)
	off := false
	if _, err := e.st.Update(context.Background(), "nas1", store.Patch{Link: &off}); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := c.Read(make([]byte, 1))
	var ae *quic.ApplicationError
	if !errors.As(err, &ae) || ae.ErrorCode != link.CloseLinkDisabled {
		t.Errorf("direct session after link off: read error %v, want the connection closed with code %d", err, link.CloseLinkDisabled)
	}
	if _, err := d.Dial(ctx10(t), "nas1", 22); !errors.Is(err, link.ErrLinkDisabled) {
		t.Errorf("new session after link off: %v, want ErrLinkDisabled", err)
	}
}

// A direct path that dies sends the next sessions through the relay, with
// no error for the application, and the relay hears that it was lost.
func TestDeadDirectPathFallsBackToTheRelay(t *testing.T) {
	e, a, d := echoDevice(t)
	goDirect(t, d, "nas1", 22)
	link.CloseAgentDirect(a)
	for range 3 {
		c, err := d.Dial(ctx10(t), "nas1", 22)
		if err != nil {
			t.Fatalf("dial after the direct path died: %v", err)
		}
		if err := echoByte(c); err != nil {
			t.Fatalf("echo on the %v path after the direct path died: %v", link.PathOf(c), err)
		}
		c.Close()
	}
	e.waitEvent("punch", "lost")
	if d.PathTo("nas1").Direct {
		t.Error("the dead path is still in use")
	}
}

// A direct path's authorization expires; the client renews it through the
// relay, which checks the access code again (the session still goes
// direct).
func TestDirectAuthorizationIsRenewedThroughTheRelay(t *testing.T) {
	e := newEnv(t)
	tok := e.addDevice("nas1")
	code := e.tokenAccess("nas1")
	cfg := e.agentConfig("nas1", tok, t.TempDir(), map[uint16]string{22: echoServer(t)})
	const lifetime = 300 * time.Millisecond
	cfg.DirectLifetime = lifetime
	e.startAgent(cfg)
	d := e.dialer(func(c *link.DialerConfig) { c.AccessCode = code })
	goDirect(t, d, "nas1", 22)

	time.Sleep(lifetime) // the authorization runs out
	dialPath(t, d, "nas1", 22, true)
	e.waitEvent("renew", "ok")
}

// tokenAccess makes device require an access code and returns a new one.
func (e *env) tokenAccess(device string) string {
	e.t.Helper()
	tokenAccess := store.AccessToken
	if _, err := e.st.Update(context.Background(), device, store.Patch{Access: &tokenAccess}); err != nil {
		e.t.Fatal(err)
	}
	return e.accessCode(device)
}

func (e *env) accessCode(device string) string {
	e.t.Helper()
	_, code, err := e.st.AddAccessCode(context.Background(), device)
	if err != nil {
		e.t.Fatal(err)
	}
	return code
}

// Revoking an access code ends, at once, the direct sessions of the
// clients that presented it (the relay tells the agent over its control
// stream), not only at their next renewal ten minutes on; new sessions
// are refused. A client with another code keeps its direct path.
func TestRevokedAccessCodeEndsDirectSessionsAtOnce(t *testing.T) {
	e := newEnv(t)
	tok := e.addDevice("nas1")
	code := e.tokenAccess("nas1")
	e.startAgent(e.agentConfig("nas1", tok, t.TempDir(), map[uint16]string{22: echoServer(t)}))
	d := e.dialer(func(c *link.DialerConfig) { c.AccessCode = code })
	c := goDirect(t, d, "nas1", 22)
	other := e.dialer(func(c *link.DialerConfig) { c.AccessCode = e.accessCode("nas1") })
	kept := goDirect(t, other, "nas1", 22)

	codes, err := e.st.AccessCodes("nas1")
	if err != nil {
		t.Fatal(err)
	}
	revokedAt := time.Now()
	if err := e.st.RevokeAccessCode(context.Background(), "nas1", codes[0].ID); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = c.Read(make([]byte, 1))
	var ae *quic.ApplicationError
	if !errors.As(err, &ae) || ae.ErrorCode != link.CloseRevoked {
		t.Fatalf("direct session after its access code was revoked: read error %v, want the connection closed with code %d", err, link.CloseRevoked)
	}
	t.Logf("direct session ended %v after the revocation", time.Since(revokedAt).Round(time.Millisecond))
	if _, err := d.Dial(ctx10(t), "nas1", 22); !errors.Is(err, link.ErrAccessDenied) {
		t.Errorf("dial with a revoked code: %v, want ErrAccessDenied", err)
	}
	if !other.PathTo("nas1").Direct {
		t.Error("the direct path of a client with a valid code ended too")
	}
	if err := echoByte(kept); err != nil {
		t.Errorf("the direct session of a client with a valid code: %v", err)
	}
}

// directPeer is a hand-made client: a QUIC transport whose socket also
// sends and reads probes.
type directPeer struct {
	tr   *quic.Transport
	addr netip.AddrPort
}

func newDirectPeer(t *testing.T) *directPeer {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: conn}
	t.Cleanup(func() { tr.Close(); conn.Close() })
	return &directPeer{tr: tr, addr: conn.LocalAddr().(*net.UDPAddr).AddrPort()}
}

// ping sends a ping for exchange id with key to the agent and waits for its
// pong (ok false when none comes within wait).
func (p *directPeer) ping(t *testing.T, to netip.AddrPort, id [link.ExchangeIDLen]byte, key *[link.KeyLen]byte, sender byte, wait time.Duration) (link.Probe, bool) {
	t.Helper()
	pr := link.Probe{Type: link.ProbePing, Sender: sender, Exchange: id}
	rand.Read(pr.Tx[:])
	if _, err := p.tr.WriteTo(link.AppendProbe(nil, pr, key), net.UDPAddrFromAddrPort(to)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	buf := make([]byte, 1500)
	for {
		n, _, err := p.tr.ReadNonQUICPacket(ctx, buf)
		if err != nil {
			return link.Probe{}, false
		}
		got, err := link.ParseProbe(buf[:n])
		if err == nil && got.Type == link.ProbePong && got.Tx == pr.Tx && link.VerifyProbe(buf[:n], key) {
			return got, true
		}
	}
}

func (p *directPeer) dial(t *testing.T, to netip.AddrPort) (*quic.Conn, error) {
	t.Helper()
	return p.tr.Dial(ctx10(t), net.UDPAddrFromAddrPort(to), &tls.Config{
		MinVersion: tls.VersionTLS13, NextProtos: []string{link.DirectALPN}, InsecureSkipVerify: true,
	}, &quic.Config{})
}

func streamRequest(t *testing.T, c *quic.Conn, f link.Frame) link.Result {
	t.Helper()
	s, err := c.OpenStreamSync(ctx10(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.SetDeadline(time.Now().Add(5 * time.Second))
	if err := link.WriteFrame(s, f); err != nil {
		t.Fatal(err)
	}
	fr, err := link.ReadFrame(s, 0)
	res, ok := fr.(link.Result)
	if err != nil || !ok {
		t.Fatalf("answer to %T: %#v, %v", f, fr, err)
	}
	return res
}

// The agent's socket is no open door: a handshake needs a valid ping
// first, a probe forged without the exchange's key (or reflected back to
// the agent) gets no answer, and sessions need a DirectHello with the
// proof of an exchange the relay introduced.
func TestOnlyAuthorizedPeersGetADirectConnection(t *testing.T) {
	e := newEnv(t)
	tok := e.addDevice("nas1")
	a := e.agent("nas1", tok, map[uint16]string{22: echoServer(t)})
	agentAddr := link.AgentSocket(a)
	peer := newDirectPeer(t)

	if c, err := peer.dial(t, agentAddr); err == nil {
		c.CloseWithError(0, "")
		t.Fatal("the agent accepted a direct handshake from an address no exchange named")
	}

	// An exchange through the relay, as the Dialer makes it.
	var id [link.ExchangeIDLen]byte
	var key [link.KeyLen]byte
	rand.Read(id[:])
	rand.Read(key[:])
	rc := e.rawConn(t)
	s, err := rc.OpenStreamSync(ctx10(t))
	if err != nil {
		t.Fatal(err)
	}
	s.SetDeadline(time.Now().Add(5 * time.Second))
	link.WriteFrame(s, link.Direct{Device: "nas1", Exchange: id, Key: key,
		Candidates: []link.Candidate{{Kind: link.CandidateHost, Addr: peer.addr}}})
	if fr, err := link.ReadFrame(s, 0); err != nil {
		t.Fatal(err)
	} else if _, ok := fr.(link.Candidates); !ok {
		t.Fatalf("relay answered %#v", fr)
	}

	var wrong [link.KeyLen]byte
	rand.Read(wrong[:])
	if _, ok := peer.ping(t, agentAddr, id, &wrong, link.ProbeFromClient, 300*time.Millisecond); ok {
		t.Error("the agent answered a ping forged without the exchange's key")
	}
	if _, ok := peer.ping(t, agentAddr, id, &key, link.ProbeFromAgent, 300*time.Millisecond); ok {
		t.Error("the agent answered a ping that claims to come from an agent")
	}
	if c, err := peer.dial(t, agentAddr); err == nil {
		c.CloseWithError(0, "")
		t.Fatal("a forged ping opened the agent's socket")
	}
	pong, ok := peer.ping(t, agentAddr, id, &key, link.ProbeFromClient, 2*time.Second)
	if !ok {
		t.Fatal("no pong to a valid ping")
	}
	if pong.Observed != peer.addr {
		t.Errorf("pong observed %v, the ping came from %v", pong.Observed, peer.addr)
	}
	c, err := peer.dial(t, agentAddr)
	if err != nil {
		t.Fatalf("direct handshake after a valid ping: %v", err)
	}
	defer c.CloseWithError(0, "")
	if res := streamRequest(t, c, link.Open{Port: 22}); res.Status != link.StatusAccessDenied {
		t.Errorf("open before a hello: %v, want access denied", res.Status)
	}
	if res := streamRequest(t, c, link.DirectHello{Exchange: id, Proof: link.DirectProof(id, &wrong)}); res.Status != link.StatusAccessDenied {
		t.Errorf("hello with a wrong proof: %v, want access denied", res.Status)
	}
	if res := streamRequest(t, c, link.DirectHello{Exchange: id, Proof: link.DirectProof(id, &key)}); res.Status != link.StatusOK {
		t.Fatalf("hello with the right proof: %v %s", res.Status, res.Message)
	}
	if res := streamRequest(t, c, link.Open{Port: 22}); res.Status != link.StatusOK {
		t.Errorf("open after the hello: %v %s", res.Status, res.Message)
	}
	if res := streamRequest(t, c, link.DirectHello{Exchange: id, Proof: link.DirectProof(id, &key)}); res.Status != link.StatusAccessDenied {
		t.Errorf("the same hello again: %v, want access denied (an exchange is used once)", res.Status)
	}
}

// The agent asks the STUN server the relay names through its one socket:
// the mapping it learns is that socket's (on loopback, its very address).
func TestAgentLearnsItsMappingThroughItsOwnSocket(t *testing.T) {
	_, a, _ := echoDevice(t)
	testutil.WaitFor(t, 10*time.Second, "the agent's socket address from STUN", func() bool { return link.AgentSrflx(a) == link.AgentSocket(a) })
}

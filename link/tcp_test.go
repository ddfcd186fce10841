package link_test

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/link"
	"github.com/nasreach/nasreach/linkserver"
	"github.com/nasreach/nasreach/store"
	"github.com/quic-go/quic-go"
)

// udpGate stands between agents or clients and the relay's UDP port as a
// firewall would: closed, it drops every datagram (UDP blocked); open, it
// forwards both ways, from a socket of its own per peer.
type udpGate struct {
	pc   *net.UDPConn
	to   *net.UDPAddr
	open atomic.Bool

	mu     sync.Mutex
	peers  map[netip.AddrPort]*net.UDPConn
	closed bool
	wg     sync.WaitGroup
}

// udpGate returns a closed gate to the relay's UDP port, removed when the
// test ends.
func (e *env) udpGate() *udpGate {
	e.t.Helper()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		e.t.Fatal(err)
	}
	g := &udpGate{pc: pc, to: e.sock.LocalAddr().(*net.UDPAddr), peers: map[netip.AddrPort]*net.UDPConn{}}
	e.t.Cleanup(func() {
		g.mu.Lock()
		g.closed = true
		for _, c := range g.peers {
			c.Close()
		}
		g.mu.Unlock()
		pc.Close()
		g.wg.Wait()
	})
	g.wg.Go(g.run)
	return g
}

func (g *udpGate) addr() string { return g.pc.LocalAddr().String() }

func (g *udpGate) run() {
	buf := make([]byte, 2048)
	for {
		n, from, err := g.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		if !g.open.Load() {
			continue
		}
		if up := g.upstream(from); up != nil {
			up.Write(buf[:n])
		}
	}
}

// upstream is the gate's socket to the relay for peer from.
func (g *udpGate) upstream(from netip.AddrPort) *net.UDPConn {
	g.mu.Lock()
	defer g.mu.Unlock()
	if c, ok := g.peers[from]; ok || g.closed {
		return c
	}
	c, err := net.DialUDP("udp", nil, g.to)
	if err != nil {
		return nil
	}
	g.peers[from] = c
	g.wg.Go(func() {
		buf := make([]byte, 2048)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			if g.open.Load() {
				g.pc.WriteToUDPAddrPort(buf[:n], from)
			}
		}
	})
	return c
}

// carrier is a way for agents and clients to reach the relay in a test.
type carrier struct {
	name   string
	agent  func(*link.AgentConfig)
	dialer func(*link.DialerConfig)
}

// carriers are QUIC, and TCP with UDP blocked: QUIC goes to a closed
// udpGate, TCP to the relay's TCP port.
func (e *env) carriers() []carrier {
	return []carrier{{name: link.TransportQUIC, agent: func(*link.AgentConfig) {}, dialer: func(*link.DialerConfig) {}}, e.overTCP(e.udpGate())}
}

// overTCP is the carrier of an agent or client whose UDP to the relay goes
// to the gate g.
func (e *env) overTCP(g *udpGate) carrier {
	tcp := e.tcp.Addr().String()
	return carrier{
		name:   link.TransportTCP,
		agent:  func(c *link.AgentConfig) { c.Server, c.ServerTCP = g.addr(), tcp },
		dialer: func(c *link.DialerConfig) { c.Server, c.ServerTCP = g.addr(), tcp },
	}
}

// agentVia starts an agent for device that reaches the relay by c.
func (e *env) agentVia(c carrier, device, token string, expose map[uint16]string, mods ...func(*link.AgentConfig)) *link.Agent {
	e.t.Helper()
	cfg := e.agentConfig(device, token, e.t.TempDir(), expose)
	c.agent(&cfg)
	for _, m := range mods {
		m(&cfg)
	}
	return e.startAgent(cfg)
}

func TestUDPBlockedAgentAndClientFallBackToTCP(t *testing.T) {
	e := newEnv(t)
	tok := e.addDevice("nas1")
	tcp := e.overTCP(e.udpGate())
	start := time.Now()
	e.agentVia(tcp, "nas1", tok, map[uint16]string{9: hashServer(t)})
	bound := link.DefaultQUICHeadStart + 2*time.Second
	if el := time.Since(start); el > bound {
		t.Errorf("the agent came online over TCP after %v, want within %v", el, bound)
	}
	if n := e.relay.Carriers(); n[link.TransportTCP] != 1 || n[link.TransportQUIC] != 0 {
		t.Errorf("relay carriers %v, want the agent's over TCP", n)
	}
	d := e.dialer(tcp.dialer)
	start = time.Now()
	c := sendHashed(t, d, "nas1", 16<<20)
	if tr, p := link.TransportOf(c), link.PathOf(c); tr != link.TransportTCP || p.Direct {
		t.Errorf("session over %s, path %s; want tcp through the relay", tr, p)
	}
	if d.PathTo("nas1").Direct {
		t.Error("a client on TCP went for a direct path")
	}
	testutil.WaitFor(t, 5*time.Second, "the session's record", func() bool { return len(e.events.sessions()) == 1 })
	if ev := e.events.sessions()[0]; ev.Outcome != "ok" || ev.BytesIn < 16<<20 || ev.Detail != "over tcp" {
		t.Errorf("session record %+v, want ok, 16 MiB in, over tcp", ev)
	}
	if evs := e.events.kind("agent"); len(evs) == 0 || evs[0].Detail != "connected over tcp" {
		t.Errorf("agent records %+v, want connected over tcp", evs)
	}
}

// An agent on QUIC serves a client on TCP, and the other way round.
func TestMixedTransportsMeetAtTheRelay(t *testing.T) {
	e := newEnv(t)
	quicWay, tcpWay := e.carriers()[0], e.overTCP(e.udpGate())
	e.agentVia(quicWay, "nas1", e.addDevice("nas1"), map[uint16]string{22: echoServer(t)})
	e.agentVia(tcpWay, "nas2", e.addDevice("nas2"), map[uint16]string{22: echoServer(t)})
	for _, tc := range []struct {
		device string
		client carrier
	}{{"nas1", tcpWay}, {"nas2", quicWay}} {
		d := e.dialer(tc.client.dialer)
		echo(t, d, tc.device, 22)
	}
}

// On both carriers a FIN is passed on as a FIN (the echo comes back whole
// after the client half-closes), a client that closes its end while the
// device still sends ends the session at the relay, and Link switched off
// resets the open session with its code and closes the agent's
// connection with its own.
func TestCarriersKeepHalfCloseAndReset(t *testing.T) {
	for i, name := range []string{link.TransportQUIC, link.TransportTCP} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			cr := e.carriers()[i]
			tok := e.addDevice("nas1")
			flood := tcpServer(t, func(c net.Conn) {
				buf := make([]byte, 32<<10)
				for {
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			})
			// A slow reconnect keeps the reason the relay gave in LastError.
			a := e.agentVia(cr, "nas1", tok, map[uint16]string{22: echoServer(t), 23: flood},
				func(c *link.AgentConfig) { c.MinBackoff, c.MaxBackoff = 10*time.Second, 10*time.Second })
			d := e.dialer(relayOnly, cr.dialer)

			c, err := d.Dial(ctx10(t), "nas1", 22)
			if err != nil {
				t.Fatal(err)
			}
			msg := strings.Repeat("half-close ", 1000)
			c.SetDeadline(time.Now().Add(10 * time.Second))
			io.WriteString(c, msg)
			c.(interface{ CloseWrite() error }).CloseWrite()
			if got, err := io.ReadAll(c); err != nil || string(got) != msg {
				t.Fatalf("echo after half-close: %d bytes, %v; want %d bytes and EOF", len(got), err, len(msg))
			}
			c.Close()

			fc, err := d.Dial(ctx10(t), "nas1", 23)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(fc, make([]byte, 1<<20)); err != nil {
				t.Fatal(err)
			}
			fc.Close()
			testutil.WaitFor(t, 5*time.Second, "the relay to end the sessions", func() bool { return e.relay.Sessions() == 0 })

			open, err := d.Dial(ctx10(t), "nas1", 22)
			if err != nil {
				t.Fatal(err)
			}
			defer open.Close()
			off := false
			if _, err := e.st.Update(ctx10(t), "nas1", store.Patch{Link: &off}); err != nil {
				t.Fatal(err)
			}
			open.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = open.Read(make([]byte, 1))
			var se *quic.StreamError
			if !errors.As(err, &se) || se.ErrorCode != link.StreamLinkDisabled {
				t.Errorf("open session after link off: %v, want a reset with code %d", err, link.StreamLinkDisabled)
			}
			testutil.WaitFor(t, 5*time.Second, "the agent's connection closed", func() bool { return e.relay.Agents() == 0 && a.LastError() != nil })
			var ae *quic.ApplicationError
			if err := a.LastError(); !errors.As(err, &ae) || ae.ErrorCode != link.CloseLinkDisabled || !ae.Remote {
				t.Errorf("agent's connection ended with %v, want the relay's close code %d", err, link.CloseLinkDisabled)
			}
		})
	}
}

// The relay's limits bound sessions over TCP as over QUIC.
func TestLimitsHoldOverTCP(t *testing.T) {
	e := newEnv(t, func(c *linkserver.Config) { c.MaxStreamsPerDevice = 2 })
	tcp := e.overTCP(e.udpGate())
	e.agentVia(tcp, "nas1", e.addDevice("nas1"), map[uint16]string{22: echoServer(t)})
	d := e.dialer(tcp.dialer)
	open := openStreams(t, d, "nas1", 22, 2)
	if _, err := d.Dial(ctx10(t), "nas1", 22); !errors.Is(err, link.ErrTooManyStreams) {
		t.Errorf("third concurrent stream over TCP: %v, want ErrTooManyStreams", err)
	}
	for _, c := range open {
		if err := echoByte(c); err != nil {
			t.Fatalf("an admitted stream broke: %v", err)
		}
	}
	testutil.WaitFor(t, 5*time.Second, "the refusal's record", func() bool {
		for _, ev := range e.events.sessions() {
			if ev.Outcome == "refused" && ev.Detail == "too many streams over tcp" {
				return true
			}
		}
		return false
	})
}

// An agent and a client on TCP probe QUIC and move back to it once it
// answers: the agent when no session is open, the client at its next
// session.
func TestTCPMovesBackToQUICWhenUDPReturns(t *testing.T) {
	e := newEnv(t)
	g := e.udpGate()
	tcp := e.overTCP(g)
	const retry = 200 * time.Millisecond
	e.agentVia(tcp, "nas1", e.addDevice("nas1"), map[uint16]string{22: echoServer(t)}, func(c *link.AgentConfig) { c.QUICRetry = retry })
	d := e.dialer(tcp.dialer, func(c *link.DialerConfig) { c.QUICRetry = retry })
	held, err := d.Dial(ctx10(t), "nas1", 22)
	if err != nil {
		t.Fatal(err)
	}
	if tr := link.TransportOf(held); tr != link.TransportTCP {
		t.Fatalf("with UDP blocked the session went over %s", tr)
	}

	g.open.Store(true)
	time.Sleep(10 * retry)
	if n := e.relay.Carriers(); n[link.TransportTCP] != 2 {
		t.Fatalf("relay carriers %v while a session is open, want the agent and the client still on TCP", n)
	}
	if err := echoByte(held); err != nil {
		t.Fatalf("the open session broke: %v", err)
	}
	held.Close()
	testutil.WaitFor(t, 5*time.Second, "agent and client back on QUIC", func() bool {
		n := e.relay.Carriers()
		return n[link.TransportTCP] == 0 && e.relay.Agents() == 1
	})
	c, err := d.Dial(ctx10(t), "nas1", 22)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if tr := link.TransportOf(c); tr != link.TransportQUIC {
		t.Errorf("after UDP returned the session went over %s", tr)
	}
	if err := echoByte(c); err != nil {
		t.Fatal(err)
	}
}

package link

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/nasreach/nasreach/internal/netaddr"
	"github.com/nasreach/nasreach/stun"
	"github.com/quic-go/quic-go"
	"github.com/rs/zerolog"
)

// endpoint is the one UDP socket of an agent or a client. QUIC (to the
// relay, and between client and agent), STUN and probes share it, so that
// the address STUN reports is the NAT mapping QUIC and the probes use.
// quic-go's Transport reads the socket and hands every datagram whose first
// byte has the top two bits clear to ReadNonQUICPacket; the endpoint's
// reader sorts those into STUN answers and probes.
type endpoint struct {
	conn  *net.UDPConn
	tr    *quic.Transport
	local netip.AddrPort
	log   zerolog.Logger

	stunIn chan stunPacket // STUN datagrams for the one Discover in progress
	stunMu sync.Mutex      // one Discover at a time: they share stunIn

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // closed when the reader has returned

	mu        sync.Mutex
	exchanges map[[ExchangeIDLen]byte]*exchange
}

type stunPacket struct {
	b    []byte
	from net.Addr
}

// stunQueue bounds the STUN datagrams waiting for a Discover; more are
// dropped, as a full socket buffer would.
const stunQueue = 8

// DefaultListen is where an agent's or client's socket binds by default:
// every interface, a port of the system's choosing, as quic.DialAddr does.
// Every interface, so that a client on the NAS's own network reaches it on
// one of its addresses.
const DefaultListen = ":0"

// newEndpoint binds listen with open (nil: net.ListenUDP) and starts
// reading. accept, when not nil, makes the endpoint able to listen for
// direct connections: it is asked about each new connection's source
// address before any handshake work.
func newEndpoint(listen string, open listenUDP, accept func(netip.AddrPort) bool, log zerolog.Logger) (*endpoint, error) {
	ua, err := net.ResolveUDPAddr("udp", cmpStr(listen, DefaultListen))
	if err != nil {
		return nil, fmt.Errorf("link socket %q: %w", listen, err)
	}
	if open == nil {
		open = net.ListenUDP
	}
	conn, err := open("udp", ua)
	if err != nil {
		return nil, fmt.Errorf("link socket %s: %w", listen, err)
	}
	return endpointOn(conn, accept, log), nil
}

// endpointOn is an endpoint on a socket already open: newEndpoint's, or
// one of birthday probing's that won.
func endpointOn(conn *net.UDPConn, accept func(netip.AddrPort) bool, log zerolog.Logger) *endpoint {
	e := &endpoint{
		conn: conn, local: netaddr.AddrPort(conn.LocalAddr()), log: log,
		stunIn: make(chan stunPacket, stunQueue), done: make(chan struct{}),
		exchanges: map[[ExchangeIDLen]byte]*exchange{},
	}
	e.tr = &quic.Transport{Conn: conn}
	if accept != nil {
		e.tr.ConnContext = func(ctx context.Context, ci *quic.ClientInfo) (context.Context, error) {
			if !accept(netaddr.AddrPort(ci.RemoteAddr)) {
				return ctx, errors.New("no exchange authorizes this address")
			}
			return ctx, nil
		}
	}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	go e.read()
	return e
}

func cmpStr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// read sorts the datagrams quic-go did not take until the endpoint closes.
func (e *endpoint) read() {
	defer close(e.done)
	buf := make([]byte, 1500)
	for {
		n, from, err := e.tr.ReadNonQUICPacket(e.ctx, buf)
		if err != nil {
			return
		}
		b := buf[:n]
		switch {
		case IsProbe(b):
			e.onProbe(b, netaddr.AddrPort(from))
		case stun.IsMessage(b):
			select {
			case e.stunIn <- stunPacket{b: slices.Clone(b), from: from}:
			default:
			}
		}
	}
}

// onProbe hands a probe to the exchange it names, if that exchange is ours.
func (e *endpoint) onProbe(b []byte, from netip.AddrPort) {
	p, err := ParseProbe(b)
	if err != nil {
		return
	}
	e.mu.Lock()
	x := e.exchanges[p.Exchange]
	e.mu.Unlock()
	if x != nil {
		x.onProbe(p, b, from, e)
	}
}

// register routes the probes of x to it until unregister.
func (e *endpoint) register(x *exchange) {
	e.mu.Lock()
	e.exchanges[x.id] = x
	e.mu.Unlock()
}

func (e *endpoint) unregister(x *exchange) {
	e.mu.Lock()
	if e.exchanges[x.id] == x {
		delete(e.exchanges, x.id)
	}
	e.mu.Unlock()
}

// writeTo sends one datagram beside QUIC's.
func (e *endpoint) writeTo(b []byte, to netip.AddrPort) error {
	_, err := e.tr.WriteTo(b, net.UDPAddrFromAddrPort(to))
	return err
}

// dial opens a QUIC connection from the socket to addr, HOST:PORT,
// resolved now (a relay's name may move), and returns the address dialed.
func (e *endpoint) dial(ctx context.Context, addr string, tc *tls.Config, qc *quic.Config) (*quic.Conn, netip.AddrPort, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	to := netaddr.AddrPort(ua)
	c, err := e.tr.Dial(ctx, net.UDPAddrFromAddrPort(to), tc, qc)
	return c, to, err
}

// discover asks the STUN server at server for the socket's mapped address.
func (e *endpoint) discover(ctx context.Context, server netip.AddrPort, timeout time.Duration) (netip.AddrPort, error) {
	e.stunMu.Lock()
	defer e.stunMu.Unlock()
	for len(e.stunIn) > 0 { // answers to an earlier, abandoned Discover
		<-e.stunIn
	}
	c, err := stun.NewClient(stun.ClientConfig{RTO: 250 * time.Millisecond, Rc: 4, Rm: 4})
	if err != nil {
		return netip.AddrPort{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return c.Discover(ctx, &stunConn{e: e, wake: make(chan struct{}, 1)}, server)
}

// close closes the transport (every connection on it ends abruptly: close
// them first to tell the peers) and the socket, and waits for the reader.
func (e *endpoint) close() error {
	e.cancel()
	err := e.tr.Close()
	if cerr := e.conn.Close(); cerr != nil && !errors.Is(cerr, net.ErrClosed) {
		err = errors.Join(err, cerr)
	}
	<-e.done
	return err
}

// stunConn is the endpoint as the net.PacketConn stun.Client.Discover reads
// and writes: reads come from the STUN datagrams the endpoint sorted out.
type stunConn struct {
	e *endpoint

	mu       sync.Mutex
	deadline time.Time
	wake     chan struct{} // a new deadline
}

func (c *stunConn) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		c.mu.Lock()
		dl := c.deadline
		c.mu.Unlock()
		wait := time.Hour
		if !dl.IsZero() {
			if wait = time.Until(dl); wait <= 0 {
				return 0, nil, os.ErrDeadlineExceeded
			}
		}
		t := time.NewTimer(wait)
		select {
		case p := <-c.e.stunIn:
			t.Stop()
			return copy(b, p.b), p.from, nil
		case <-t.C:
		case <-c.wake:
			t.Stop()
		case <-c.e.ctx.Done():
			t.Stop()
			return 0, nil, net.ErrClosed
		}
	}
}

func (c *stunConn) WriteTo(b []byte, to net.Addr) (int, error) { return c.e.tr.WriteTo(b, to) }
func (c *stunConn) Close() error                               { return nil }
func (c *stunConn) LocalAddr() net.Addr                        { return c.e.conn.LocalAddr() }
func (c *stunConn) SetDeadline(t time.Time) error              { return c.SetReadDeadline(t) }
func (c *stunConn) SetWriteDeadline(time.Time) error           { return nil }

func (c *stunConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return nil
}

package link

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/libp2p/go-yamux/v5"
	"github.com/quic-go/quic-go"
)

// The TCP carrier (wire.go, "Over TCP"): TLS 1.3 over TCP, then yamux
// (libp2p's go-yamux: hashicorp's protocol plus stream resets and close
// codes) multiplexing streams with QUIC's semantics. Errors are reported as
// quic-go's error types with the same codes, so that session code and its
// callers tell a reset or a close reason apart the same way on both
// transports.

// TCPALPN is the application protocol of the TLS connection of the TCP
// carrier: yamux streams carrying the frames of ALPN's protocol.
const TCPALPN = "nasreach-link-tcp/1"

// tcpStreamWindow is a TCP carrier stream's receive window, fixed: yamux's
// own 256 KiB, the least it allows. yamux (go-yamux v5.1.0) can grow a
// window as its reader keeps up, but its sendWindowUpdate loses the update
// it was about to send whenever it grows the window (the second GrowTo's
// delta replaces the first's, which the receive buffer has already
// counted as granted); after two growths the receiver believes it granted
// more than half the window that the sender never got, and the stream
// stalls for good. Growth happens when a window is read within four of
// the round trips yamux measured at the session's start, so a session
// begun on a busy machine stalled (the NAT lab's matrix met it, 16 MiB
// stopping after 6 to 13 MiB); on an idle loopback it never grew at all.
// With the maximum equal to the initial window it never grows. A stream
// then carries at most 256 KiB per round trip (5 MiB/s at 50 ms), and
// one connection holds at most its streams times 256 KiB unread.
const (
	tcpStreamWindow = 256 << 10
	// tcpCloseCodeBase is added to a Close* code in yamux's GoAway, whose
	// codes 0 to 2 are yamux's own (normal, protocol error, internal
	// error).
	tcpCloseCodeBase = 0x100
)

// errCarrierLost means a TCP carrier ended without a close code: the
// connection broke.
var errCarrierLost = errors.New("connection to the relay lost")

// TCPCarrierConfig configures the yamux session of a TCP carrier.
type TCPCarrierConfig struct {
	// Server is true at the relay.
	Server bool
	// KeepAlive is how often an idle connection is pinged; a ping not
	// answered within 10 s ends it. Zero sends none.
	KeepAlive time.Duration
	// MaxIncomingStreams bounds the streams the peer may have open at
	// once; one more is reset. Zero refuses every stream.
	MaxIncomingStreams int
}

// NewTCPCarrier runs yamux on conn, a TLS connection whose handshake has
// completed with TCPALPN. The carrier owns conn.
func NewTCPCarrier(conn net.Conn, cfg TCPCarrierConfig) (Carrier, error) {
	yc := yamux.DefaultConfig()
	yc.LogOutput = io.Discard
	yc.EnableKeepAlive = cfg.KeepAlive > 0
	if yc.EnableKeepAlive {
		yc.KeepAliveInterval = cfg.KeepAlive
	}
	yc.MaxIncomingStreams = uint32(max(cfg.MaxIncomingStreams, 0))
	// yamux's AcceptBacklog (256) also bounds the streams this end opens
	// that the peer has not acknowledged yet: kept, so that concurrent
	// sessions do not wait a round trip each.
	yc.InitialStreamWindowSize, yc.MaxStreamWindowSize = tcpStreamWindow, tcpStreamWindow
	var sess *yamux.Session
	var err error
	if cfg.Server {
		sess, err = yamux.Server(conn, yc, nil)
	} else {
		sess, err = yamux.Client(conn, yc, nil)
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("yamux: %w", err)
	}
	c := &tcpCarrier{sess: sess, conn: conn, accepted: make(chan *yamux.Stream)}
	c.ctx, c.cancel = context.WithCancelCause(context.Background())
	go c.pump()
	return c, nil
}

// dialTCP opens a TCP carrier to addr, HOST:PORT, over a connection from
// dial (nil: a net.Dialer) with the relay's TLS configuration tc (its ALPN
// replaced by TCPALPN), taking up to maxIncoming streams from the relay at
// once.
func dialTCP(ctx context.Context, dial func(ctx context.Context, network, addr string) (net.Conn, error), addr string, tc *tls.Config, keepAlive time.Duration, maxIncoming int) (Carrier, error) {
	tc = tc.Clone()
	tc.NextProtos = []string{TCPALPN}
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	raw, err := dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	conn := tls.Client(raw, tc)
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, err
	}
	if p := conn.ConnectionState().NegotiatedProtocol; p != TCPALPN {
		conn.Close()
		return nil, fmt.Errorf("%s does not speak %s (ALPN %q)", addr, TCPALPN, p)
	}
	return NewTCPCarrier(conn, TCPCarrierConfig{KeepAlive: keepAlive, MaxIncomingStreams: maxIncoming})
}

// tcpCarrier is a yamux session over TLS over TCP as a Carrier.
type tcpCarrier struct {
	sess     *yamux.Session
	conn     net.Conn
	accepted chan *yamux.Stream
	ctx      context.Context
	cancel   context.CancelCauseFunc
}

// pump hands the peer's streams to AcceptStream until the session ends,
// then ends the carrier's context with the reason.
func (c *tcpCarrier) pump() {
	for {
		s, err := c.sess.AcceptStream()
		if err != nil {
			break
		}
		select {
		case c.accepted <- s:
		case <-c.sess.CloseChan():
			s.Reset()
		}
	}
	<-c.sess.CloseChan()
	_, err := c.sess.OpenStream(context.Background()) // a closed session answers its reason
	c.cancel(tcpErr(err))
}

func (c *tcpCarrier) OpenStreamSync(ctx context.Context) (Stream, error) {
	s, err := c.sess.OpenStream(ctx)
	if err != nil {
		return nil, tcpErr(err)
	}
	return &tcpStream{s: s}, nil
}

func (c *tcpCarrier) AcceptStream(ctx context.Context) (Stream, error) {
	select {
	case s := <-c.accepted:
		return &tcpStream{s: s}, nil
	case <-c.ctx.Done():
		return nil, context.Cause(c.ctx)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// CloseWithError sends the code in a GoAway and closes the connection. A
// carrier closed by its peer or by a broken connection keeps that reason.
func (c *tcpCarrier) CloseWithError(code quic.ApplicationErrorCode, _ string) error {
	return c.sess.CloseWithError(uint32(code) + tcpCloseCodeBase)
}

func (c *tcpCarrier) Context() context.Context { return c.ctx }
func (c *tcpCarrier) LocalAddr() net.Addr      { return c.conn.LocalAddr() }
func (c *tcpCarrier) RemoteAddr() net.Addr     { return c.conn.RemoteAddr() }
func (c *tcpCarrier) Transport() string        { return TransportTCP }

// tcpStream is a yamux stream with QUIC's stream semantics (Stream).
type tcpStream struct {
	s *yamux.Stream

	mu sync.Mutex
	// stopped is CancelRead's code while the write direction is open:
	// yamux has no STOP_SENDING, so the peer is told with a reset after
	// the FIN, when Close sends it.
	stopped   *quic.StreamErrorCode
	writeDone bool
}

func (t *tcpStream) Read(b []byte) (int, error) {
	t.mu.Lock()
	stopped := t.stopped
	t.mu.Unlock()
	if stopped != nil {
		return 0, &quic.StreamError{StreamID: quic.StreamID(t.s.StreamID()), ErrorCode: *stopped}
	}
	n, err := t.s.Read(b)
	return n, tcpErr(err)
}

func (t *tcpStream) Write(b []byte) (int, error) {
	n, err := t.s.Write(b)
	return n, tcpErr(err)
}

// Close sends a FIN after the bytes written, and the reset CancelRead put
// off, if any.
func (t *tcpStream) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.writeDone {
		return nil
	}
	t.writeDone = true
	err := t.s.CloseWrite()
	if t.stopped != nil {
		t.s.ResetWithError(uint32(*t.stopped))
	}
	return tcpErr(err)
}

// CancelRead stops reading: at once with a reset once the FIN is sent,
// else with the FIN.
func (t *tcpStream) CancelRead(code quic.StreamErrorCode) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped != nil {
		return
	}
	t.stopped = &code
	if t.writeDone {
		t.s.ResetWithError(uint32(code))
	}
}

// CancelWrite resets the stream, both directions.
func (t *tcpStream) CancelWrite(code quic.StreamErrorCode) {
	t.mu.Lock()
	t.writeDone = true
	t.mu.Unlock()
	t.s.ResetWithError(uint32(code))
}

func (t *tcpStream) SetDeadline(d time.Time) error      { return t.s.SetDeadline(d) }
func (t *tcpStream) SetReadDeadline(d time.Time) error  { return t.s.SetReadDeadline(d) }
func (t *tcpStream) SetWriteDeadline(d time.Time) error { return t.s.SetWriteDeadline(d) }

// tcpErr reports yamux's errors as quic-go's: a stream reset as a
// *quic.StreamError, a close code as a *quic.ApplicationError, a missed
// keep-alive as a *quic.IdleTimeoutError, a deadline as
// os.ErrDeadlineExceeded. A connection that broke without a code wraps
// errCarrierLost.
func tcpErr(err error) error {
	if err == nil || errors.Is(err, io.EOF) {
		return err
	}
	var se *yamux.StreamError
	var ga *yamux.GoAwayError
	switch {
	case errors.As(err, &se):
		return &quic.StreamError{ErrorCode: quic.StreamErrorCode(se.ErrorCode), Remote: se.Remote}
	case errors.As(err, &ga):
		code := quic.ApplicationErrorCode(CloseProtocol)
		switch {
		case ga.ErrorCode >= tcpCloseCodeBase:
			code = quic.ApplicationErrorCode(ga.ErrorCode - tcpCloseCodeBase)
		case ga.ErrorCode == 0:
			code = CloseNormal
		}
		return &quic.ApplicationError{Remote: ga.Remote, ErrorCode: code}
	case errors.Is(err, yamux.ErrKeepAliveTimeout):
		return &quic.IdleTimeoutError{}
	case errors.Is(err, yamux.ErrTimeout):
		return os.ErrDeadlineExceeded
	case errors.Is(err, yamux.ErrStreamReset):
		return &quic.StreamError{Remote: true}
	}
	return fmt.Errorf("%w: %w", errCarrierLost, err)
}

package link

import (
	"context"
	"io"
	"net"
	"time"

	"github.com/quic-go/quic-go"
)

// A carrier is the connection between an agent or a client and the relay:
// QUIC, or, where UDP is blocked, TLS over TCP with yamux streams inside
// (carrier_tcp.go). Hello, Connect, Open, Result and the rest, the splice
// and the end-to-end TLS are the same on both: session code speaks to a
// Carrier and its Streams and never asks which one it has, except to skip
// direct paths (they need UDP).

// Transports a Carrier runs on, as logs and metrics name them.
const (
	TransportQUIC = "quic"
	TransportTCP  = "tcp"
)

// Carrier is one connection to or from the relay carrying streams.
// Closing it, or the peer closing it, ends every stream at once; Context
// ends then, and its cause is the error the streams see (a
// *quic.ApplicationError with the peer's close code, on either transport).
type Carrier interface {
	// OpenStreamSync opens a stream, waiting while the peer allows no more.
	OpenStreamSync(ctx context.Context) (Stream, error)
	// AcceptStream waits for the peer's next stream.
	AcceptStream(ctx context.Context) (Stream, error)
	// CloseWithError closes the connection with one of the Close* codes;
	// the peer sees the code (the message only over QUIC).
	CloseWithError(code quic.ApplicationErrorCode, msg string) error
	Context() context.Context
	LocalAddr() net.Addr
	RemoteAddr() net.Addr
	// Transport is TransportQUIC or TransportTCP.
	Transport() string
}

// Stream is a bidirectional stream of a Carrier with QUIC's semantics on
// both transports: Close ends the write direction with a FIN (the peer
// reads EOF after the last byte), CancelRead tells the peer to stop
// sending (its writes fail with a *quic.StreamError carrying the code),
// and CancelWrite resets the stream (the peer's reads fail so). Over TCP a
// reset ends both directions at once, yamux having no one-way reset; every
// caller cancels both anyway.
type Stream interface {
	io.Reader
	io.Writer
	Close() error
	CancelRead(code quic.StreamErrorCode)
	CancelWrite(code quic.StreamErrorCode)
	SetDeadline(t time.Time) error
	SetReadDeadline(t time.Time) error
	SetWriteDeadline(t time.Time) error
}

// QUICCarrier returns c as a Carrier.
func QUICCarrier(c *quic.Conn) Carrier { return quicCarrier{c} }

// quicCarrier is a QUIC connection as a Carrier.
type quicCarrier struct{ *quic.Conn }

func (c quicCarrier) OpenStreamSync(ctx context.Context) (Stream, error) {
	s, err := c.Conn.OpenStreamSync(ctx)
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (c quicCarrier) AcceptStream(ctx context.Context) (Stream, error) {
	s, err := c.Conn.AcceptStream(ctx)
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (quicCarrier) Transport() string { return TransportQUIC }

// TransportOf returns the transport of the carrier of a connection from
// Dialer.Dial: TransportQUIC on a direct path or over QUIC to the relay,
// TransportTCP over TCP to the relay.
func TransportOf(c net.Conn) string {
	if ec, ok := c.(*e2eConn); ok {
		if ec.s != nil {
			return ec.s.currentTransport()
		}
		return ec.sc.transport
	}
	return TransportQUIC
}

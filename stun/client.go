package stun

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/nasreach/nasreach/internal/netaddr"
	pion "github.com/pion/stun/v4"
)

// Client defaults, from RFC 8489 §6.2.1 and §6.2.2.
const (
	// DefaultRTO is the initial retransmission timeout over UDP.
	DefaultRTO = 500 * time.Millisecond
	// DefaultRc is how many times a request is sent over UDP.
	DefaultRc = 7
	// DefaultRm is the multiple of RTO waited after the last transmission.
	DefaultRm = 16
	// DefaultStreamTimeout is how long a request over TCP waits (Ti).
	DefaultStreamTimeout = 39500 * time.Millisecond
)

// ErrTimeout means the server did not answer within the retransmission
// schedule (or the context ended first).
var ErrTimeout = errors.New("stun: no answer from server")

// ClientConfig configures NewClient; the zero value follows RFC 8489.
type ClientConfig struct {
	// RTO is the first retransmission timeout over UDP; it doubles after
	// each transmission. Zero means DefaultRTO.
	RTO time.Duration
	// Rc is the number of transmissions over UDP; zero means DefaultRc.
	Rc int
	// Rm times RTO is the wait after the last transmission; zero means
	// DefaultRm. With the defaults a silent server is given up on after
	// 39.5 s, unless the context ends sooner.
	Rm int
	// StreamTimeout bounds a request over TCP or TLS, which is sent once;
	// zero means DefaultStreamTimeout.
	StreamTimeout time.Duration
}

// Client discovers the address a NAT maps a socket to, by asking a STUN
// server. It has no state and starts no goroutine; it is safe for concurrent
// use on different sockets.
type Client struct {
	cfg ClientConfig
}

// NewClient validates cfg and returns a Client.
func NewClient(cfg ClientConfig) (*Client, error) {
	if cfg.RTO < 0 || cfg.Rc < 0 || cfg.Rm < 0 || cfg.StreamTimeout < 0 {
		return nil, errors.New("stun: ClientConfig values must not be negative")
	}
	if cfg.RTO == 0 {
		cfg.RTO = DefaultRTO
	}
	if cfg.Rc == 0 {
		cfg.Rc = DefaultRc
	}
	if cfg.Rm == 0 {
		cfg.Rm = DefaultRm
	}
	if cfg.StreamTimeout == 0 {
		cfg.StreamTimeout = DefaultStreamTimeout
	}
	return &Client{cfg: cfg}, nil
}

// Discover sends a Binding request from conn to server over UDP, with
// retransmissions, and returns the mapped address the server saw. The caller
// must not read from conn during the call; the read deadline of conn is
// cleared when Discover returns. Packets that are not the answer (other
// senders, other transactions, malformed) are ignored.
func (c *Client) Discover(ctx context.Context, conn net.PacketConn, server netip.AddrPort) (netip.AddrPort, error) {
	req, err := pion.Build(pion.TransactionID, pion.BindingRequest, pion.Fingerprint)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("stun: build request: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) }) //nolint:errcheck // wakes the read below
	defer func() {
		stop()
		conn.SetReadDeadline(time.Time{}) //nolint:errcheck // best effort reset of the caller's socket
	}()
	dst := net.UDPAddrFromAddrPort(server)
	buf := make([]byte, 1500)
	rto := c.cfg.RTO
	for sent := 1; sent <= c.cfg.Rc; sent++ {
		if ctx.Err() != nil {
			break
		}
		if _, err := conn.WriteTo(req.Raw, dst); err != nil {
			return netip.AddrPort{}, fmt.Errorf("stun: send binding request to %s: %w", server, err)
		}
		wait := rto
		if sent == c.cfg.Rc {
			wait = time.Duration(c.cfg.Rm) * c.cfg.RTO
		}
		deadline := time.Now().Add(wait)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		if err := conn.SetReadDeadline(deadline); err != nil {
			return netip.AddrPort{}, fmt.Errorf("stun: set read deadline: %w", err)
		}
		for {
			if ctx.Err() != nil {
				return netip.AddrPort{}, fmt.Errorf("%w within the context: %w", ErrTimeout, ctx.Err())
			}
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					break // retransmit
				}
				return netip.AddrPort{}, fmt.Errorf("stun: read answer from %s: %w", server, err)
			}
			if netaddr.AddrPort(from) != netaddr.Unmap(server) {
				continue
			}
			mapped, done, err := parseAnswer(buf[:n], req.TransactionID)
			if done {
				return mapped, err
			}
		}
		rto *= 2
	}
	if ctx.Err() != nil {
		return netip.AddrPort{}, fmt.Errorf("%w within the context: %w", ErrTimeout, ctx.Err())
	}
	return netip.AddrPort{}, fmt.Errorf("%w: %s after %d transmissions", ErrTimeout, server, c.cfg.Rc)
}

// DiscoverStream sends one Binding request over a connected stream (TCP or
// TLS) and returns the mapped address. Streams are reliable, so nothing is
// retransmitted; the wait is bounded by StreamTimeout and ctx.
func (c *Client) DiscoverStream(ctx context.Context, conn net.Conn) (netip.AddrPort, error) {
	req, err := pion.Build(pion.TransactionID, pion.BindingRequest, pion.Fingerprint)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("stun: build request: %w", err)
	}
	deadline := time.Now().Add(c.cfg.StreamTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) }) //nolint:errcheck // wakes the I/O below
	defer func() {
		stop()
		conn.SetDeadline(time.Time{}) //nolint:errcheck // best effort reset of the caller's socket
	}()
	if err := conn.SetDeadline(deadline); err != nil {
		return netip.AddrPort{}, fmt.Errorf("stun: set deadline: %w", err)
	}
	if _, err := conn.Write(req.Raw); err != nil {
		return netip.AddrPort{}, c.streamErr(ctx, "send binding request", err)
	}
	buf := make([]byte, 1500)
	for {
		if _, err := io.ReadFull(conn, buf[:HeaderSize]); err != nil {
			return netip.AddrPort{}, c.streamErr(ctx, "read answer", err)
		}
		n := HeaderSize + int(binary.BigEndian.Uint16(buf[2:4]))
		if buf[0]&0xC0 != 0 || n > len(buf) {
			return netip.AddrPort{}, errors.New("stun: server sent a frame that is not STUN")
		}
		if _, err := io.ReadFull(conn, buf[HeaderSize:n]); err != nil {
			return netip.AddrPort{}, c.streamErr(ctx, "read answer", err)
		}
		if mapped, done, err := parseAnswer(buf[:n], req.TransactionID); done {
			return mapped, err
		}
	}
}

func (c *Client) streamErr(ctx context.Context, what string, err error) error {
	var ne net.Error
	if ctx.Err() != nil || (errors.As(err, &ne) && ne.Timeout()) {
		return fmt.Errorf("%w: %s: %w", ErrTimeout, what, err)
	}
	return fmt.Errorf("stun: %s: %w", what, err)
}

// parseAnswer reads a Binding answer to transaction id. done is false when b
// is not that answer and should be ignored.
func parseAnswer(b []byte, id [pion.TransactionIDSize]byte) (mapped netip.AddrPort, done bool, err error) {
	m := &pion.Message{Raw: append([]byte(nil), b...)}
	if m.Decode() != nil || m.TransactionID != id || m.Type.Method != pion.MethodBinding {
		return mapped, false, nil
	}
	if m.Contains(pion.AttrFingerprint) && pion.Fingerprint.Check(m) != nil {
		return mapped, false, nil
	}
	switch m.Type.Class {
	case pion.ClassErrorResponse:
		var code pion.ErrorCodeAttribute
		if code.GetFrom(m) != nil {
			return mapped, true, errors.New("stun: server refused the request without an error code")
		}
		return mapped, true, fmt.Errorf("stun: server refused the request: %d %s", code.Code, code.Reason)
	case pion.ClassSuccessResponse:
		var xa pion.XORMappedAddress
		if xa.GetFrom(m) == nil {
			return toAddrPort(xa.IP, xa.Port)
		}
		var ma pion.MappedAddress
		if ma.GetFrom(m) == nil {
			return toAddrPort(ma.IP, ma.Port)
		}
		return mapped, true, errors.New("stun: server answered without a mapped address")
	}
	return mapped, false, nil
}

func toAddrPort(ip net.IP, port int) (netip.AddrPort, bool, error) {
	a, ok := netip.AddrFromSlice(ip)
	if !ok || port < 0 || port > 0xffff {
		return netip.AddrPort{}, true, errors.New("stun: server answered with an invalid mapped address")
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(port)), true, nil
}

package link

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/nasreach/nasreach/internal/netaddr"
	"github.com/quic-go/quic-go"
	"github.com/rs/zerolog"
)

// Where UDP is blocked (some corporate, hotel and mobile networks), agents
// and clients reach the relay over TCP instead (wire.go, "Over TCP"). They
// try QUIC first; when it has not answered within the head start they dial
// TCP beside it, and the first carrier up wins (Happy Eyeballs, with QUIC
// preferred). A client or agent whose QUIC got no answer dials TCP first,
// QUIC after the head start, for QUICRetry; an agent or client on TCP
// meanwhile probes QUIC every QUICRetry and moves back to it at the first
// probe that answers while it has no session open.

// Fallback defaults.
const (
	// DefaultQUICHeadStart is how long QUIC has to answer before TCP is
	// tried beside it: a QUIC handshake takes one round trip and quic-go
	// resends a lost first packet well within it.
	DefaultQUICHeadStart = time.Second
	// DefaultQUICRetry is how long the choice of TCP is remembered and how
	// often QUIC is probed while on TCP.
	DefaultQUICRetry = 5 * time.Minute
	// quicProbeTimeout bounds one probe of QUIC.
	quicProbeTimeout = 3 * time.Second
)

// relayDialer dials the relay: QUIC on the endpoint's socket, or TCP.
type relayDialer struct {
	server    string // UDP, HOST:PORT
	serverTCP string // TCP, HOST:PORT; empty: no TCP
	quicTLS   *tls.Config
	tcpTLS    *tls.Config
	keepAlive time.Duration
	// dialTCP opens the TCP connection; nil means a net.Dialer.
	dialTCP   func(ctx context.Context, network, addr string) (net.Conn, error)
	headStart time.Duration
	retry     time.Duration
	log       zerolog.Logger

	mu       sync.Mutex
	tcpUntil time.Time // QUIC got no answer: TCP first until then
}

// newRelayDialer checks the TCP address (serverTCP "" means server's, "-"
// none) and builds the TLS configurations.
func newRelayDialer(server, serverTCP, fingerprint string, keepAlive, headStart, retry time.Duration, log zerolog.Logger) (*relayDialer, error) {
	qt, err := relayTLS(server, fingerprint)
	if err != nil {
		return nil, err
	}
	r := &relayDialer{server: server, quicTLS: qt, keepAlive: keepAlive, headStart: headStart, retry: retry, log: log}
	switch serverTCP {
	case "-":
		return r, nil
	case "":
		serverTCP = server
	}
	if r.tcpTLS, err = relayTLS(serverTCP, fingerprint); err != nil {
		return nil, fmt.Errorf("relay TCP address: %w", err)
	}
	r.serverTCP = serverTCP
	return r, nil
}

// preferTCP reports whether QUIC got no answer lately.
func (r *relayDialer) preferTCP() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.serverTCP != "" && time.Now().Before(r.tcpUntil)
}

// remember records which transport won.
func (r *relayDialer) remember(transport string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if transport == TransportTCP {
		r.tcpUntil = time.Now().Add(r.retry)
	} else {
		r.tcpUntil = time.Time{}
	}
}

// dial returns a carrier to the relay and the address it reached: QUIC and
// TCP raced, the preferred one with a head start, the first up kept.
func (r *relayDialer) dial(ctx context.Context, ep *endpoint, qc *quic.Config) (Carrier, netip.AddrPort, error) {
	type attempt struct {
		c   Carrier
		to  netip.AddrPort
		err error
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make(chan attempt, 2)
	dialQUIC := func() {
		c, to, err := ep.dial(ctx, r.server, r.quicTLS, qc)
		if err != nil {
			results <- attempt{err: fmt.Errorf("QUIC to %s: %w", r.server, err)}
			return
		}
		results <- attempt{c: QUICCarrier(c), to: to}
	}
	dialTCP := func() {
		c, err := dialTCP(ctx, r.dialTCP, r.serverTCP, r.tcpTLS, r.keepAlive, int(max(qc.MaxIncomingStreams, 0)))
		if err != nil {
			results <- attempt{err: fmt.Errorf("TCP to %s: %w", r.serverTCP, err)}
			return
		}
		results <- attempt{c: c, to: netaddr.AddrPort(c.RemoteAddr())}
	}
	order := []func(){dialQUIC}
	if r.serverTCP != "" {
		order = append(order, dialTCP)
		if r.preferTCP() {
			order[0], order[1] = dialTCP, dialQUIC
		}
	}
	next := func() bool {
		if len(order) == 0 {
			return false
		}
		go order[0]()
		order = order[1:]
		return true
	}
	next()
	running := 1
	headStart := time.NewTimer(r.headStart)
	defer headStart.Stop()
	var errs []error
	var won attempt
	for running > 0 && won.c == nil {
		select {
		case <-headStart.C:
			if next() {
				running++
			}
		case a := <-results:
			running--
			if a.err != nil {
				errs = append(errs, a.err)
				if next() { // no need to wait out the head start
					running++
				}
				continue
			}
			won = a
		}
	}
	cancel()
	for ; running > 0; running-- { // the loser, cancelled
		if a := <-results; a.c != nil {
			a.c.CloseWithError(CloseNormal, "the other transport was first")
		}
	}
	if won.c == nil {
		return nil, netip.AddrPort{}, errors.Join(errs...)
	}
	was := r.preferTCP()
	r.remember(won.c.Transport())
	if won.c.Transport() == TransportTCP && !was {
		r.log.Info().Str("server", r.server).Str("server_tcp", r.serverTCP).Str("transport", TransportTCP).
			Msg("QUIC to the relay got no answer (UDP blocked?); using TCP, and trying QUIC again later")
	}
	return won.c, won.to, nil
}

// probeQUIC reports whether a QUIC handshake with the relay succeeds now;
// the probe connection is closed at once.
func (r *relayDialer) probeQUIC(ctx context.Context, ep *endpoint, qc *quic.Config) bool {
	ctx, cancel := context.WithTimeout(ctx, quicProbeTimeout)
	defer cancel()
	c, _, err := ep.dial(ctx, r.server, r.quicTLS, qc)
	if err != nil {
		r.remember(TransportTCP)
		return false
	}
	c.CloseWithError(CloseNormal, "probe")
	r.remember(TransportQUIC)
	return true
}

// returnToQUIC probes QUIC every QUICRetry while c, a TCP carrier, is up
// and ctx lasts; at the first probe that answers while idle reports no
// session on c, it closes c, and its owner reconnects over QUIC.
func (r *relayDialer) returnToQUIC(ctx context.Context, c Carrier, ep *endpoint, qc *quic.Config, idle func() bool) {
	t := time.NewTicker(r.retry)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.Context().Done():
			return
		case <-t.C:
		}
		if !idle() || !r.probeQUIC(ctx, ep, qc) || !idle() { // a session may have begun during the probe
			continue
		}
		r.log.Info().Str("server", r.server).Str("transport", TransportQUIC).Msg("QUIC to the relay answers again; moving back to it")
		c.CloseWithError(CloseNormal, "moving to QUIC")
		return
	}
}

// openStreams returns how many streams a TCP carrier has open, or -1 for
// QUIC, which does not say.
func openStreams(c Carrier) int {
	if tc, ok := c.(*tcpCarrier); ok {
		return tc.sess.NumStreams()
	}
	return -1
}

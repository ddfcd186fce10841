package stun

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/nasreach/nasreach/internal/connlimit"
	"github.com/nasreach/nasreach/internal/listen"
	"github.com/nasreach/nasreach/internal/netaddr"
	"github.com/nasreach/nasreach/internal/workgroup"
	"github.com/rs/zerolog"
)

// Defaults for Config.
const (
	// DefaultTCPIdleTimeout closes a TCP connection that sends no whole
	// request for this long.
	DefaultTCPIdleTimeout = 30 * time.Second
)

// ResponderConfig configures NewResponder.
type ResponderConfig struct {
	// Software, when not empty, is sent as the SOFTWARE attribute of every
	// RFC 8489 answer; at most MaxSoftwareLen bytes of UTF-8. Empty (the
	// default) sends none, so that the server does not advertise a version.
	Software string
}

// Responder turns Binding requests into answers. It keeps no state but two
// counters and is safe for concurrent use; the TURN relay embeds one to
// answer Binding on its port.
type Responder struct {
	software string
	answered atomic.Uint64
	dropped  atomic.Uint64
}

// Stats are the counters of a Responder: the only thing the STUN service
// records.
type Stats struct {
	// Answered counts Binding requests answered (including 420 answers).
	Answered uint64
	// Dropped counts packets dropped without an answer as malformed or not
	// a Binding request.
	Dropped uint64
}

// NewResponder validates cfg and returns a Responder.
func NewResponder(cfg ResponderConfig) (*Responder, error) {
	if len(cfg.Software) > MaxSoftwareLen || !utf8.ValidString(cfg.Software) {
		return nil, fmt.Errorf("stun: Software must be valid UTF-8 of at most %d bytes", MaxSoftwareLen)
	}
	return &Responder{software: cfg.Software}, nil
}

// Answer returns the answer to pkt, a whole message received from the client
// at from, or nil when pkt must be dropped without a reply.
func (r *Responder) Answer(pkt []byte, from netip.AddrPort) []byte {
	req, ok := parseRequest(pkt)
	if !ok || !from.IsValid() {
		r.dropped.Add(1)
		return nil
	}
	r.answered.Add(1)
	return appendResponse(make([]byte, 0, 64+len(r.software)), req, from, r.software)
}

// Stats returns the counters so far.
func (r *Responder) Stats() Stats {
	return Stats{Answered: r.answered.Load(), Dropped: r.dropped.Load()}
}

// Config configures New.
type Config struct {
	// Addr is the UDP and TCP address to listen on, such as
	// "127.0.0.1:13478" (development) or "0.0.0.0:3478". Port 0 picks a free
	// port, the same for both transports. Required unless PacketConn and
	// Listener are set.
	Addr string
	// PacketConn and Listener, when both are set, are served instead of
	// binding Addr (systemd socket activation, tests). They go together:
	// one without the other is an error. The server owns them from the
	// call to New on: it closes them at Shutdown, or before New returns an
	// error.
	PacketConn net.PacketConn
	Listener   net.Listener
	// Software is passed to the Responder; see ResponderConfig.
	Software string
	// TCPConns caps the TCP connections held at once, in total and per
	// source network; zero fields take connlimit's defaults. A connection
	// over a cap is closed before it is read.
	TCPConns connlimit.Config
	// TCPIdleTimeout closes a TCP connection that sends no whole request
	// for this long, however slowly its bytes come; zero means
	// DefaultTCPIdleTimeout.
	TCPIdleTimeout time.Duration
	// Logger receives start and stop records with the counters, never
	// anything about a client. The zero value logs nothing.
	Logger zerolog.Logger
}

// Server is a standalone STUN Binding server on UDP and TCP. When the TURN
// relay runs it answers Binding on its own sockets instead (it embeds a
// Responder), and no Server is started.
type Server struct {
	*Responder
	cfg  Config
	log  zerolog.Logger
	udp  net.PacketConn
	tcp  net.Listener // wrapped by conns
	addr netip.AddrPort
	// conns caps the TCP connections and counts them: the server
	// holds conns.Stats().Live of them.
	conns *connlimit.Limiter

	wg     sync.WaitGroup
	mu     sync.Mutex
	open   map[net.Conn]struct{} // the TCP connections to close at Shutdown
	closed bool                  // Shutdown has been called
}

// New validates cfg, binds UDP and TCP on one port (or takes Config's
// sockets) and answers in the background until Shutdown. On error nothing is
// left open, Config's sockets included.
func New(cfg Config) (*Server, error) {
	s, err := newServer(cfg)
	if err != nil {
		listen.CloseGiven(cfg.PacketConn, cfg.Listener)
		return nil, err
	}
	s.udp, s.tcp = cfg.PacketConn, cfg.Listener
	if s.udp == nil {
		socks, err := listen.Bind(listen.Config{Addr: cfg.Addr})
		if err != nil {
			return nil, fmt.Errorf("stun: %w", err)
		}
		s.udp, s.tcp = socks.UDP[0], socks.TCP[0]
	}
	s.tcp = s.conns.Listener(s.tcp)
	s.addr = netaddr.AddrPort(s.udp.LocalAddr())
	s.wg.Add(2)
	go s.serveUDP()
	go s.serveTCP()
	s.log.Info().Str("addr", s.addr.String()).Msg("stun listening on udp and tcp")
	return s, nil
}

// newServer validates cfg and fills in the defaults; it opens nothing.
func newServer(cfg Config) (*Server, error) {
	if (cfg.PacketConn == nil) != (cfg.Listener == nil) {
		return nil, errors.New("stun: Config.PacketConn and Config.Listener go together")
	}
	if cfg.Addr == "" && cfg.PacketConn == nil {
		return nil, errors.New("stun: Config.Addr (or PacketConn and Listener) is required")
	}
	if cfg.TCPIdleTimeout <= 0 {
		cfg.TCPIdleTimeout = DefaultTCPIdleTimeout
	}
	r, err := NewResponder(ResponderConfig{Software: cfg.Software})
	if err != nil {
		return nil, err
	}
	return &Server{Responder: r, cfg: cfg, log: cfg.Logger, open: map[net.Conn]struct{}{}, conns: connlimit.New(cfg.TCPConns)}, nil
}

// Addr returns the address both transports listen on.
func (s *Server) Addr() netip.AddrPort { return s.addr }

// TCPConnStats returns the TCP connections held now and those refused over
// a cap.
func (s *Server) TCPConnStats() connlimit.Stats { return s.conns.Stats() }

// Shutdown stops both listeners, closes open TCP connections (there is
// nothing to drain: every request is answered at once) and waits for every
// goroutine of the server to return, or for ctx to end: then it returns an
// error wrapping ctx.Err(), the goroutines having been told to stop. Calling
// it again waits for the same stop.
func (s *Server) Shutdown(ctx context.Context) error {
	first, err := s.stop()
	if werr := workgroup.WaitContext(ctx, s.wg.Wait); werr != nil {
		err = errors.Join(err, werr)
	}
	if first {
		st := s.Stats()
		s.log.Info().Uint64("answered", st.Answered).Uint64("dropped", st.Dropped).Msg("stun stopped")
	}
	if err != nil {
		return fmt.Errorf("stun shutdown: %w", err)
	}
	return nil
}

// stop closes the sockets and connections, which makes every goroutine of
// the server return; it reports whether this call did it.
func (s *Server) stop() (first bool, err error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return false, nil
	}
	s.closed = true
	for c := range s.open {
		c.Close()
	}
	s.mu.Unlock()
	return true, errors.Join(s.udp.Close(), s.tcp.Close())
}

func (s *Server) serveUDP() {
	defer s.wg.Done()
	buf := make([]byte, MaxRequestSize+1)
	for {
		n, from, err := s.udp.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // e.g. ICMP-induced errors on some systems
		}
		ua, ok := from.(*net.UDPAddr)
		if !ok {
			continue
		}
		if resp := s.Answer(buf[:n], ua.AddrPort()); resp != nil {
			s.udp.WriteTo(resp, from) //nolint:errcheck // best effort, like UDP itself
		}
	}
}

func (s *Server) serveTCP() {
	defer s.wg.Done()
	for {
		c, err := s.tcp.Accept()
		if err != nil {
			return // closed: the limiter's listener rides out every other error
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			continue
		}
		s.open[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(c)
	}
}

// serveConn answers requests framed back to back on a TCP connection. A
// malformed frame ends the connection: a stream cannot be resynchronised.
func (s *Server) serveConn(c net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.open, c)
		s.mu.Unlock()
		c.Close()
	}()
	from := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	buf := make([]byte, MaxRequestSize)
	for {
		c.SetReadDeadline(time.Now().Add(s.cfg.TCPIdleTimeout)) //nolint:errcheck // a failed deadline shows up as a read error
		if _, err := io.ReadFull(c, buf[:HeaderSize]); err != nil {
			return
		}
		n := HeaderSize + int(binary.BigEndian.Uint16(buf[2:4]))
		if buf[0]&0xC0 != 0 || n > len(buf) {
			s.dropped.Add(1)
			return
		}
		if _, err := io.ReadFull(c, buf[HeaderSize:n]); err != nil {
			return
		}
		resp := s.Answer(buf[:n], from)
		if resp == nil {
			return
		}
		c.SetWriteDeadline(time.Now().Add(s.cfg.TCPIdleTimeout)) //nolint:errcheck // see above
		if _, err := c.Write(resp); err != nil {
			return
		}
	}
}

package turnserver

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/nasreach/nasreach/internal/netaddr"
	pion "github.com/pion/stun/v4"
)

// The filter sits between the sockets and pion's TURN server, at the one
// place that sees every client message first. It exists because pion cannot be
// configured to answer some requests correctly:
//
//   - Binding requests are answered by Config.Binding (the stun package:
//     MAPPED-ADDRESS for RFC 3489 clients, SOFTWARE only if configured), not
//     by pion, which does neither.
//   - A ChannelBind toward a refused peer must be answered 403 Forbidden;
//     pion answers 401, which tells the client to retry with other
//     credentials. The filter checks the peer (address and port: only live
//     relay addresses on the server's own IP), and if refused and the request
//     carries valid MESSAGE-INTEGRITY, answers 403 itself, signed with the
//     same key pion would use. Unauthenticated requests go on to pion, which
//     challenges them (401 with NONCE and REALM).
//   - A CreatePermission naming a refused peer is answered 403 the same way.
//     pion v5 would answer 403 too, but only after its address family check,
//     so an IPv6 peer on an IPv4 allocation got 443 whether or not it was a
//     refused address; the policy goes first here. pion's permission
//     handler stays set on every listener as the backstop.
//   - An Allocate for a TCP relay (RFC 6062) is answered 442 Unsupported
//     Transport Protocol, authenticated the same way.
//
// Send indications and ChannelData are checked where they
// leave, in relayConn.WriteTo. Bad credentials are answered 401 by pion v5 and
// quota refusals 486 by pion's QuotaHandler. Every refusal, pion's or the
// filter's, is counted and logged as its answer leaves (refuse.go), which is
// why the filter notes who sent each request.
//
// Anything that is neither STUN nor ChannelData is dropped without a reply;
// over TCP it ends the connection, as the stream cannot be resynchronised.

// STUN methods, attributes and codes the filter reads (RFC 8489, RFC 8656).
const (
	magicCookie          = 0x2112A442
	methodBinding        = 0x0001
	methodAllocate       = 0x0003
	methodCreatePerm     = 0x0008
	methodChannelBind    = 0x0009
	attrRequestedTransp  = 0x0019
	protoTCP             = 6
	codeForbidden        = 403
	codeUnsupportedTrans = 442
)

// inboundMTU is pion's read buffer: a frame this large or larger is dropped.
const inboundMTU = 1600

// stunMethodClass splits a message type into method and class (RFC 8489 §5).
func stunMethodClass(typ uint16) (method uint16, class uint16) {
	method = typ&0x000F | (typ&0x00E0)>>1 | (typ&0x3E00)>>2
	class = (typ&0x0010)>>4 | (typ&0x0100)>>7
	return method, class
}

// inspect decides the fate of one message from a client before pion sees it:
// true passes it to pion; false means the filter answered it (through reply)
// or dropped it.
func (t *Server) inspect(b []byte, from netip.AddrPort, reply func([]byte)) bool {
	if len(b) >= 4 && b[0]&0xC0 == 0x40 {
		if 4+int(binary.BigEndian.Uint16(b[2:4])) > len(b) {
			t.stats.malformed.Add(1)
			return false
		}
		return true // ChannelData: the channel's peer was checked at ChannelBind
	}
	if len(b) < 20 || b[0]&0xC0 != 0 {
		t.stats.malformed.Add(1)
		return false
	}
	method, class := stunMethodClass(binary.BigEndian.Uint16(b[0:2]))
	if method == methodBinding {
		if class != classRequest { // indications (keepalives) and stray responses
			return false
		}
		if t.cfg.Binding == nil {
			return true // pion answers with XOR-MAPPED-ADDRESS
		}
		if r := t.cfg.Binding(b, from); r != nil {
			reply(r)
		}
		return false
	}
	if binary.BigEndian.Uint32(b[4:8]) != magicCookie {
		t.stats.malformed.Add(1)
		return false
	}
	if class != classRequest {
		return true // Send indications are checked where they leave
	}
	m := &pion.Message{Raw: append([]byte(nil), b...)}
	if m.Decode() != nil {
		return true // pion drops it
	}
	t.asked.note(m)
	switch method {
	case methodChannelBind:
		return t.filterChannelBind(m, reply)
	case methodCreatePerm:
		return t.filterCreatePermission(m, reply)
	case methodAllocate:
		return t.filterAllocate(m, reply)
	}
	return true
}

func (t *Server) filterChannelBind(m *pion.Message, reply func([]byte)) bool {
	var peer pion.XORMappedAddress
	if peer.GetFromAs(m, pion.AttrXORPeerAddress) != nil {
		return true // pion answers 400
	}
	ip, ok := netip.AddrFromSlice(peer.IP)
	if !ok || peer.Port < 0 || peer.Port > 0xffff {
		return true
	}
	if t.policy.Check(netip.AddrPortFrom(ip, uint16(peer.Port))).OK() {
		return true
	}
	key, ok := t.authenticated(m)
	if !ok {
		return true // pion challenges; its permission handler refuses later
	}
	t.answerError(m, key, codeForbidden, "Forbidden", "channel to a peer the policy refuses", reply)
	return false
}

func (t *Server) filterCreatePermission(m *pion.Message, reply func([]byte)) bool {
	refused := false
	m.ForEach(pion.AttrXORPeerAddress, func(m *pion.Message) error { //nolint:errcheck // the callback never fails
		var peer pion.XORMappedAddress
		if peer.GetFromAs(m, pion.AttrXORPeerAddress) != nil {
			return nil // pion answers 400
		}
		if ip, ok := netip.AddrFromSlice(peer.IP); ok && !t.policy.CheckIP(ip).OK() {
			refused = true
		}
		return nil
	})
	if !refused {
		return true
	}
	key, ok := t.authenticated(m)
	if !ok {
		return true
	}
	t.answerError(m, key, codeForbidden, "Forbidden", "permission for a peer the policy refuses", reply)
	return false
}

func (t *Server) filterAllocate(m *pion.Message, reply func([]byte)) bool {
	v, err := m.Get(attrRequestedTransp)
	if err != nil || len(v) < 1 || v[0] != protoTCP {
		return true
	}
	key, ok := t.authenticated(m)
	if !ok {
		return true
	}
	t.answerError(m, key, codeUnsupportedTrans, "Unsupported Transport Protocol", "relaying over TCP (RFC 6062) is not supported", reply)
	return false
}

// authenticated checks MESSAGE-INTEGRITY against the credentials pion uses
// and returns the key. The nonce is not checked: the filter only ever refuses.
func (t *Server) authenticated(m *pion.Message) ([]byte, bool) {
	if !m.Contains(pion.AttrMessageIntegrity) {
		return nil, false
	}
	var user pion.Username
	var realm pion.Realm
	if user.GetFrom(m) != nil || realm.GetFrom(m) != nil {
		return nil, false
	}
	_, key, err := t.creds.lookup(user.String(), realm.String())
	if err != nil || pion.MessageIntegrity(key).Check(m) != nil {
		return nil, false
	}
	return key, true
}

// answerError answers req with an error signed with key; detail is the
// log's reason for the refusal.
func (t *Server) answerError(req *pion.Message, key []byte, code pion.ErrorCode, reason, detail string, reply func([]byte)) {
	t.asked.explain(req.TransactionID, detail)
	resp, err := pion.Build(
		&pion.Message{TransactionID: req.TransactionID},
		pion.NewType(req.Type.Method, pion.ClassErrorResponse),
		&pion.ErrorCodeAttribute{Code: code, Reason: []byte(reason)},
		pion.MessageIntegrity(key),
	)
	if err == nil {
		reply(resp.Raw)
	}
}

// udpFilter is a listening UDP socket as pion sees it.
type udpFilter struct {
	net.PacketConn
	t     *Server
	once  sync.Once
	reads int // datagrams read since the last yield; only pion's one reader touches it
}

// udpYieldEvery is how many datagrams the listening socket's reader handles
// before it lets other goroutines run. Under a flood that reader never blocks
// and would keep the CPU for whole time slices (10 ms) while the relay
// sockets' readers wait and their buffers overflow: the relay would forward
// datagrams whose answers it then drops. 32 datagrams are some 150 us of work.
const udpYieldEvery = 32

// ReadFrom returns the next message pion should handle. Only a closed socket
// is reported as an error: pion stops serving a socket on any read error.
func (f *udpFilter) ReadFrom(p []byte) (int, net.Addr, error) {
	if f.reads++; f.reads >= udpYieldEvery {
		f.reads = 0
		runtime.Gosched()
	}
	for {
		n, addr, err := f.PacketConn.ReadFrom(p)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				f.once.Do(f.t.readers.Done)
				return n, addr, err
			}
			continue
		}
		from := netaddr.AddrPort(addr)
		if !from.IsValid() {
			continue
		}
		if f.t.inspect(p[:n], from, func(b []byte) {
			f.WriteTo(b, addr) //nolint:errcheck // UDP: best effort
		}) {
			return n, addr, nil
		}
	}
}

// WriteTo sends b to a client: pion's answers, Data indications and
// ChannelData, and the filter's answers. Responses are looked at on their
// way (observeAnswer).
func (f *udpFilter) WriteTo(b []byte, addr net.Addr) (int, error) {
	if wantsLook(b) {
		f.t.observeAnswer(b, netaddr.AddrPort(addr), "udp")
	}
	return f.PacketConn.WriteTo(b, addr)
}

// streamListener hands pion filtered TCP (or TLS) connections.
type streamListener struct {
	net.Listener
	t         *Server
	transport string      // "tcp" or "tls"
	tls       *tls.Config // nil for plain TCP
	once      sync.Once
}

// Accept returns the next connection. Only a closed listener is reported as
// an error: pion stops accepting for good on any Accept error.
func (l *streamListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				l.once.Do(l.t.readers.Done)
				return nil, err
			}
			time.Sleep(20 * time.Millisecond) // out of file descriptors and the like
			continue
		}
		if l.tls != nil {
			c = tls.Server(c, l.tls)
		}
		sf := &streamFilter{Conn: c, t: l.t, from: netaddr.AddrPort(c.RemoteAddr()), transport: l.transport, w: newFrameWriter(c)}
		if !l.t.trackConn(sf) {
			c.Close()
			continue
		}
		return sf, nil
	}
}

// Stream timeouts.
const (
	// firstFrameTimeout bounds the TLS handshake and the first message.
	firstFrameTimeout = 10 * time.Second
	// streamWriteTimeout bounds one write to a client that does not read.
	streamWriteTimeout = 10 * time.Second
	// maxStreamFrame bounds one frame: a STUN header and a 16-bit length.
	maxStreamFrame = 20 + 0xFFFF
)

// streamFilter frames a TCP or TLS byte stream into STUN messages and
// ChannelData (padded to 4 bytes over streams, RFC 8656 §12.5), passes the
// frames the filter allows to pion unchanged, and writes whole frames through
// a frameWriter, so that the filter's own answers never interleave with
// pion's and frames queued together leave in one write.
type streamFilter struct {
	net.Conn
	t         *Server
	from      netip.AddrPort
	transport string

	// buf holds bytes read from the connection; buf[start:] are not framed
	// yet. out[outPos:] is the rest of a frame larger than pion's buffer,
	// handed out over several reads. Both are only touched by Read.
	buf          []byte
	start        int
	out          []byte
	outPos       int
	started      bool
	busy         bool      // the last read filled buf: more is waiting
	readDeadline time.Time // last set, so that Read does not set it per frame

	w                   *frameWriter
	readOnce, closeOnce sync.Once
}

// streamReadChunk is the least room Read gives one read from the connection.
const streamReadChunk = 4096

// refreshDeadline reports whether the deadline *d should be moved to
// now+timeout, and moves it: not when it was set for this timeout a moment
// ago (less than a tenth of timeout, at most a second), so that a busy
// connection does not reset its timer for every frame.
func refreshDeadline(d *time.Time, now time.Time, timeout time.Duration) bool {
	if left := d.Sub(now); left > timeout-min(timeout/10, time.Second) && left <= timeout {
		return false
	}
	*d = now.Add(timeout)
	return true
}

// frameSize returns the size of the frame at the start of b: 0 when more bytes
// are needed, -1 when b does not start with a frame. Over a stream every STUN
// message has the magic cookie (RFC 3489 was UDP only), and the first frame
// is STUN: ChannelData needs a ChannelBind first. Checking this early closes
// a connection that speaks another protocol (HTTP, a TLS hello on the plain
// port) at once instead of waiting for a length that means nothing.
func frameSize(b []byte, first bool) int {
	if len(b) < 4 {
		return 0
	}
	var size int
	switch b[0] & 0xC0 {
	case 0x00:
		if len(b) >= 8 && binary.BigEndian.Uint32(b[4:8]) != magicCookie {
			return -1
		}
		size = 20 + int(binary.BigEndian.Uint16(b[2:4]))
	case 0x40:
		if first {
			return -1
		}
		size = 4 + (int(binary.BigEndian.Uint16(b[2:4]))+3)&^3
	default:
		return -1
	}
	if len(b) < size {
		return 0
	}
	return size
}

// Read returns frames for pion's stream reader: as many whole frames as fit
// in p (pion frames them again), so that a burst costs one call, not one
// per frame. It blocks on the connection only when it holds no frame.
func (s *streamFilter) Read(p []byte) (int, error) {
	n := 0
	for {
		if s.outPos < len(s.out) {
			m := copy(p[n:], s.out[s.outPos:])
			s.outPos += m
			return n + m, nil
		}
		switch size := frameSize(s.buf[s.start:], !s.started); {
		case size < 0:
			if n > 0 {
				return n, nil // the next Read fails
			}
			s.t.stats.malformed.Add(1)
			return 0, s.fail(errors.New("not a STUN or ChannelData frame"))
		case size > 0:
			if n > 0 && n+size > len(p) {
				return n, nil // the next Read returns it
			}
			frame := s.buf[s.start : s.start+size]
			s.start += size
			s.started = true
			if size < inboundMTU && s.t.inspect(frame, s.from, s.reply) {
				if size > len(p) {
					s.out, s.outPos = frame, 0 // valid until buf is refilled, after it is out
					continue
				}
				n += copy(p[n:], frame)
			}
			continue
		}
		if n > 0 {
			return n, nil
		}
		if err := s.fill(); err != nil {
			return 0, s.fail(err)
		}
	}
}

// fill reads more bytes from the connection into buf, keeping the bytes not
// framed yet, with the idle (or first-frame) timeout as read deadline.
func (s *streamFilter) fill() error {
	pending := len(s.buf) - s.start
	if cap(s.buf)-len(s.buf) < streamReadChunk && s.start > 0 {
		s.buf = s.buf[:copy(s.buf, s.buf[s.start:])]
		s.start = 0
	}
	if cap(s.buf)-len(s.buf) < streamReadChunk {
		s.buf = slices.Grow(s.buf, streamReadChunk)
	}
	idle := s.t.cfg.TCPIdleTimeout
	if !s.started {
		idle = firstFrameTimeout
	}
	if refreshDeadline(&s.readDeadline, time.Now(), idle) {
		s.Conn.SetReadDeadline(s.readDeadline) //nolint:errcheck // a failed deadline shows as a read error
	}
	if s.busy {
		// The last read filled all the room it had, so the client is
		// sending faster than this goroutine forwards and this read will
		// not block either. Without a yield the goroutine keeps the CPU
		// for a whole time slice (10 ms), while the relay sockets, whose
		// readers wait for the scheduler to poll the network, overflow
		// and drop the peers' answers: the relay then spends its CPU
		// sending datagrams whose replies it never delivers.
		runtime.Gosched()
	}
	room := cap(s.buf) - len(s.buf)
	n, err := s.Conn.Read(s.buf[len(s.buf):cap(s.buf)])
	if err != nil {
		return err
	}
	s.busy = n == room
	if pending+n > maxStreamFrame+streamReadChunk { // frameSize bounds a frame; a backstop
		return errors.New("frame too large")
	}
	s.buf = s.buf[:len(s.buf)+n]
	return nil
}

// fail reports a read error once to the shutdown accounting.
func (s *streamFilter) fail(err error) error {
	s.readOnce.Do(s.t.readers.Done)
	return err
}

func (s *streamFilter) reply(b []byte) {
	s.Write(b) //nolint:errcheck // a failed write ends the connection at the next read
}

// Write queues one whole message for the connection; concurrent writers'
// messages never interleave. Responses are looked at on their way
// (observeAnswer).
func (s *streamFilter) Write(b []byte) (int, error) {
	if wantsLook(b) {
		s.t.observeAnswer(b, s.from, s.transport)
	}
	return s.w.write(b)
}

// Close lets queued messages go out (for up to a second), then closes the
// connection and forgets it. It reports no error: the connection is gone
// either way, and a TLS close_notify to a client that already left fails
// with nothing to act on. pion logs what Close returns, and would do so after
// the relay's shutdown accounting counted the connection's reader done.
func (s *streamFilter) Close() error {
	s.w.close()
	s.Conn.Close() //nolint:errcheck // see above
	s.closeOnce.Do(func() { s.t.untrackConn(s) })
	return nil
}

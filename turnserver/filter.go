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
//   - An Allocate with EVEN-PORT or RESERVATION-TOKEN is served by the
//     relay, not pion (reserve.go): the filter checks a token and answers
//     508 to one that names no reservation of this user, 400 to one beside
//     EVEN-PORT or REQUESTED-ADDRESS-FAMILY; otherwise it passes pion the
//     request rewritten (rewriteAllocate) and signed again.
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
// it returns the message to pass to pion (b, or the filter's rewrite of it),
// or nil when the filter answered it (through reply) or dropped it.
func (t *Server) inspect(b []byte, from netip.AddrPort, reply func([]byte)) []byte {
	if len(b) >= 4 && b[0]&0xC0 == 0x40 {
		if 4+int(binary.BigEndian.Uint16(b[2:4])) > len(b) {
			t.stats.malformed.Add(1)
			return nil
		}
		return b // ChannelData: the channel's peer was checked at ChannelBind
	}
	if len(b) < 20 || b[0]&0xC0 != 0 {
		t.stats.malformed.Add(1)
		return nil
	}
	method, class := stunMethodClass(binary.BigEndian.Uint16(b[0:2]))
	if method == methodBinding {
		if class != classRequest { // indications (keepalives) and stray responses
			return nil
		}
		if t.cfg.Binding == nil {
			return b // pion answers with XOR-MAPPED-ADDRESS
		}
		if r := t.cfg.Binding(b, from); r != nil {
			reply(r)
		}
		return nil
	}
	if binary.BigEndian.Uint32(b[4:8]) != magicCookie {
		t.stats.malformed.Add(1)
		return nil
	}
	if class != classRequest {
		return b // Send indications are checked where they leave
	}
	m := &pion.Message{Raw: append([]byte(nil), b...)}
	if m.Decode() != nil {
		return b // pion drops it
	}
	t.asked.note(m)
	switch method {
	case methodChannelBind:
		return t.filterChannelBind(b, m, reply)
	case methodCreatePerm:
		return t.filterCreatePermission(b, m, reply)
	case methodAllocate:
		return t.filterAllocate(b, m, reply)
	}
	return b
}

func (t *Server) filterChannelBind(b []byte, m *pion.Message, reply func([]byte)) []byte {
	var peer pion.XORMappedAddress
	if peer.GetFromAs(m, pion.AttrXORPeerAddress) != nil {
		return b // pion answers 400
	}
	ip, ok := netip.AddrFromSlice(peer.IP)
	if !ok || peer.Port < 0 || peer.Port > 0xffff {
		return b
	}
	if t.policy.Check(netip.AddrPortFrom(ip, uint16(peer.Port))).OK() {
		return b
	}
	cred, ok := t.authenticated(m)
	if !ok {
		return b // pion challenges; its permission handler refuses later
	}
	t.answerError(m, cred.key, codeForbidden, "Forbidden", "channel to a peer the policy refuses", reply)
	return nil
}

func (t *Server) filterCreatePermission(b []byte, m *pion.Message, reply func([]byte)) []byte {
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
		return b
	}
	cred, ok := t.authenticated(m)
	if !ok {
		return b
	}
	t.answerError(m, cred.key, codeForbidden, "Forbidden", "permission for a peer the policy refuses", reply)
	return nil
}

// filterAllocate refuses TCP relays and serves EVEN-PORT and
// RESERVATION-TOKEN (reserve.go) for authenticated requests; pion
// challenges the others.
func (t *Server) filterAllocate(b []byte, m *pion.Message, reply func([]byte)) []byte {
	tcp := false
	if v, err := m.Get(attrRequestedTransp); err == nil && len(v) >= 1 && v[0] == protoTCP {
		tcp = true
	}
	even, errEven := m.Get(pion.AttrEvenPort)
	token, errToken := m.Get(pion.AttrReservationToken)
	hasEven, hasToken := errEven == nil, errToken == nil
	if !tcp && !hasEven && !hasToken {
		return b
	}
	cred, ok := t.authenticated(m)
	if !ok {
		return b
	}
	bad := func(detail string) []byte {
		t.answerError(m, cred.key, codeBadRequest, "Bad Request", detail, reply)
		return nil
	}
	var in intent
	drop := []pion.AttrType{pion.AttrReservationToken}
	switch {
	case tcp:
		t.answerError(m, cred.key, codeUnsupportedTrans, "Unsupported Transport Protocol", "relaying over TCP (RFC 6062) is not supported", reply)
		return nil
	case hasToken && hasEven:
		return bad("RESERVATION-TOKEN with EVEN-PORT")
	case hasToken && m.Contains(pion.AttrRequestedAddressFamily):
		return bad("RESERVATION-TOKEN with REQUESTED-ADDRESS-FAMILY")
	case hasToken && len(token) != tokenSize:
		return bad("malformed RESERVATION-TOKEN")
	case hasEven && len(even) < 1:
		return bad("malformed EVEN-PORT")
	case hasToken:
		if !t.alloc.reservedFor(string(token), cred.userID) {
			t.answerError(m, cred.key, codeCapacity, "Insufficient Capacity", "reservation token unknown, expired or used", reply)
			return nil
		}
		in.token = string(token)
	case even[0]&0x80 != 0:
		// R: pion answers with the RESERVATION-TOKEN the relay then files
		// the held port under, so EVEN-PORT stays.
		in = intent{even: true, reserve: true}
	default:
		in = intent{even: true}
		drop = append(drop, pion.AttrEvenPort)
	}
	out, err := rewriteAllocate(m, cred.key, t.marks.mark(cred.realm, in), drop)
	if err != nil || len(out) >= inboundMTU {
		t.stats.malformed.Add(1)
		return nil // too large to mark
	}
	return out
}

// rewriteAllocate returns the Allocate request m, whose MESSAGE-INTEGRITY
// checked out with key, with realm as its REALM and without the attributes
// in drop, signed again with key, with a FINGERPRINT if it had one. What
// followed MESSAGE-INTEGRITY, not covered by it, is left out.
func rewriteAllocate(m *pion.Message, key []byte, realm string, drop []pion.AttrType) ([]byte, error) {
	out := &pion.Message{Type: m.Type, TransactionID: m.TransactionID}
	out.WriteHeader()
	for _, a := range m.Attributes {
		if a.Type == pion.AttrMessageIntegrity {
			break
		}
		switch {
		case a.Type == pion.AttrRealm:
			out.Add(pion.AttrRealm, []byte(realm))
		case a.Type == pion.AttrMessageIntegritySHA256 || a.Type == pion.AttrFingerprint || slices.Contains(drop, a.Type):
		default:
			out.Add(a.Type, a.Value)
		}
	}
	if err := pion.MessageIntegrity(key).AddTo(out); err != nil {
		return nil, err
	}
	if m.Contains(pion.AttrFingerprint) {
		if err := pion.Fingerprint.AddTo(out); err != nil {
			return nil, err
		}
	}
	return out.Raw, nil
}

// credential is what the filter learnt from a request's valid
// MESSAGE-INTEGRITY.
type credential struct {
	key    []byte
	userID string
	realm  string
}

// authenticated checks MESSAGE-INTEGRITY against the credentials pion uses.
// The nonce is not checked: pion checks it before it acts on the request,
// and the filter's own answers are refusals.
func (t *Server) authenticated(m *pion.Message) (credential, bool) {
	if !m.Contains(pion.AttrMessageIntegrity) {
		return credential{}, false
	}
	var user pion.Username
	var realm pion.Realm
	if user.GetFrom(m) != nil || realm.GetFrom(m) != nil {
		return credential{}, false
	}
	userID, key, err := t.creds.lookup(user.String(), realm.String())
	if err != nil || pion.MessageIntegrity(key).Check(m) != nil {
		return credential{}, false
	}
	return credential{key: key, userID: userID, realm: realm.String()}, true
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
		out := f.t.inspect(p[:n], from, func(b []byte) {
			f.WriteTo(b, addr) //nolint:errcheck // UDP: best effort
		})
		if out == nil || len(out) > len(p) {
			continue
		}
		if &out[0] != &p[0] { // rewritten
			n = copy(p, out)
		}
		return n, addr, nil
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
// an error (pion stops accepting for good on any Accept error); the
// limiter's listener below rides out every other one.
func (l *streamListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			l.once.Do(l.t.readers.Done)
			return nil, err
		}
		if l.tls != nil {
			c = tls.Server(c, l.tls)
		}
		sf := &streamFilter{Conn: c, t: l.t, from: netaddr.AddrPort(c.RemoteAddr()), transport: l.transport, w: newFrameWriter(c),
			frameStart: time.Now()}
		if !l.t.trackConn(sf) {
			c.Close()
			continue
		}
		return sf, nil
	}
}

// Stream timeouts.
const (
	// frameTimeout bounds the arrival of a frame from its first byte (the
	// first frame's from the connection's start, and the TLS handshake with
	// it), however slowly its bytes come: a client sending a byte a second
	// is cut off. Config.TCPIdleTimeout bounds it too, if shorter.
	frameTimeout = 10 * time.Second
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
	frameStart   time.Time // when the frame under way began; zero between frames

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
			if size >= inboundMTU {
				continue
			}
			if frame = s.t.inspect(frame, s.from, s.reply); frame != nil {
				if n > 0 && n+len(frame) > len(p) { // a rewrite grew it
					s.out, s.outPos = frame, 0
					return n, nil
				}
				if len(frame) > len(p) {
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
// framed yet. Between frames the read deadline is the idle timeout from
// now; within a frame it stays frameTimeout from the frame's start.
func (s *streamFilter) fill() error {
	pending := len(s.buf) - s.start
	if cap(s.buf)-len(s.buf) < streamReadChunk && s.start > 0 {
		s.buf = s.buf[:copy(s.buf, s.buf[s.start:])]
		s.start = 0
	}
	if cap(s.buf)-len(s.buf) < streamReadChunk {
		s.buf = slices.Grow(s.buf, streamReadChunk)
	}
	now := time.Now()
	if pending == 0 && s.started {
		s.frameStart = time.Time{}
		if refreshDeadline(&s.readDeadline, now, s.t.cfg.TCPIdleTimeout) {
			s.Conn.SetReadDeadline(s.readDeadline) //nolint:errcheck // a failed deadline shows as a read error
		}
	} else {
		if s.frameStart.IsZero() {
			s.frameStart = now
		}
		if d := s.frameStart.Add(min(frameTimeout, s.t.cfg.TCPIdleTimeout)); !d.Equal(s.readDeadline) {
			s.readDeadline = d
			s.Conn.SetReadDeadline(d) //nolint:errcheck // a failed deadline shows as a read error
		}
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

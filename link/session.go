package link

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// Resumable sessions (wire.go, "Resumable sessions"): a session is a thin
// reliable record layer between the end-to-end TLS and the carrier stream,
// so that the TLS session, and the application's connection inside it,
// outlive the stream. Each end keeps what it sent until the other end
// acknowledges it; when the stream dies the session is suspended, and the
// client resumes it on a new stream (relayed or direct), where both ends
// send again what the other has not received.

// Resumable session limits and defaults.
const (
	// DefaultResumeWindow is how long a suspended session waits to be
	// resumed: the agent keeps it that long, the client tries that long.
	DefaultResumeWindow = 30 * time.Second
	// MaxSuspended bounds the suspended sessions an agent keeps, by
	// default (AgentConfig.MaxSuspended); beyond it, the one suspended
	// longest ends.
	MaxSuspended = 256
	// DefaultMaxSuspendedBytes bounds the memory an agent's suspended
	// sessions hold together, by default (AgentConfig.MaxSuspendedBytes);
	// beyond it, the ones suspended longest end. Each may hold 4 MiB it
	// sent and 4 MiB it received (sessionSendBound), so 256 of them up to
	// 2 GiB, more than many a NAS has. 64 MiB is an eighth of a small NAS
	// of 512 MiB, and holds all that sixteen sessions moving bulk data
	// one way at full speed keep when their path fails (the 4 MiB each
	// sent and not yet acknowledged), or thousands of interactive ones
	// (ssh keeps a few KiB): a relay restart ends none of those.
	DefaultMaxSuspendedBytes = 64 << 20
	// MaxResumes bounds how often one session is resumed.
	MaxResumes = 64
	// sessionSendBound is the memory a session's unacknowledged chunks
	// may hold (chunkMem: their bytes and what keeping them costs); a
	// Write waits while that much is, so that many small records cost no
	// more than a few large ones. It bounds the bytes unacknowledged too,
	// and acknowledgments follow what the peer's application has read, so
	// this is also the most a peer holds received and unread (its reader
	// takes a peer that sends more for a broken one): the stream's reader
	// never stops, and a writer never waits on the stream for long (an Ack
	// queued behind it, in a stream the other end had stopped reading,
	// could otherwise deadlock two ends that both write).
	sessionSendBound = 4 << 20
	// recordChunk is the largest Data record a session writes: a TLS record
	// (16 KiB and its overhead) in one.
	recordChunk = 16<<10 + 256
	// pooledChunk is the smallest Data record kept in a buffer of
	// chunkPool (one of recordChunk); a smaller one gets a buffer of its
	// size: a 16 KiB buffer for each small TLS record that waited for its
	// acknowledgment held 800 times its bytes.
	pooledChunk = recordChunk / 2
	// ackEvery and ackDelay coalesce acknowledgments: one per ackEvery
	// bytes received, else ackDelay after the first unacknowledged byte.
	ackEvery = 256 << 10
	ackDelay = 20 * time.Millisecond
	// finishLinger bounds how long a finished session's stream is read for
	// the peer's end.
	finishLinger = 10 * time.Second
	// bufOverhead is what a kept buffer costs besides its bytes (its chunk
	// or slice header, its slot in out or in), rounded up: a session's
	// memory counts it, so that many small records cost what they take.
	bufOverhead = 64
)

// Errors of resumable sessions.
var (
	// ErrNoSession means the device no longer holds the session (it ended
	// there, or its resume window ran out).
	ErrNoSession = errors.New("the device no longer holds this session")
	// errPeerClosed is what a Write returns once the other end closed the
	// session (it reads no more).
	errPeerClosed = errors.New("the other end closed the session")
	// errSessionExpired ends a session not resumed within its window.
	errSessionExpired = errors.New("the session's path failed and it was not resumed in time")
)

// chunk is one Data record kept until the peer acknowledges it.
type chunk struct {
	buf   *[]byte // from chunkPool, or nil
	rec   []byte  // header and data
	off   uint64  // the stream offset of its first data byte
	mem   int64   // the memory it holds (session.held)
	freed bool
}

func (c *chunk) end() uint64 { return c.off + uint64(len(c.rec)-FrameHeaderLen) }

var chunkPool = sync.Pool{New: func() any { b := make([]byte, FrameHeaderLen+recordChunk); return &b }}

func newChunk(data []byte, off uint64) *chunk {
	c := &chunk{off: off}
	if len(data) >= pooledChunk && len(data) <= recordChunk {
		c.buf = chunkPool.Get().(*[]byte)
		c.rec = (*c.buf)[:FrameHeaderLen+len(data)]
	} else {
		c.rec = make([]byte, FrameHeaderLen+len(data))
	}
	c.mem = chunkMem(len(data))
	c.rec[0] = RecordData
	binary.BigEndian.PutUint16(c.rec[1:], uint16(len(data)))
	copy(c.rec[FrameHeaderLen:], data)
	return c
}

// chunkMem is the memory newChunk's chunk of k data bytes holds.
func chunkMem(k int) int64 {
	if k >= pooledChunk && k <= recordChunk {
		return FrameHeaderLen + recordChunk + bufOverhead
	}
	return int64(FrameHeaderLen+k) + bufOverhead
}

// putBuf returns a receive buffer to chunkPool, if it came from there.
func putBuf(b []byte) {
	if cap(b) == FrameHeaderLen+recordChunk {
		b = b[:cap(b)]
		chunkPool.Put(&b)
	}
}

func (c *chunk) free() {
	if c.buf != nil {
		chunkPool.Put(c.buf)
	}
	c.buf, c.rec, c.freed = nil, nil, true
}

// session is one end of a resumable session: a net.Conn for the
// end-to-end TLS, over whichever stream carries it now.
type session struct {
	id     [SessionIDLen]byte
	port   uint16
	window time.Duration
	// spawn runs the stream readers (the agent's or Dialer's work group).
	spawn func(func()) bool
	// onSuspend is called (without locks) when the stream failed and the
	// session was suspended: the client resumes it, the agent waits.
	onSuspend func(s *session, cause error)
	// onEnd is called once when the session no longer needs its id: it
	// finished or failed.
	onEnd func(s *session)

	wmu sync.Mutex // held while writing on the stream: records whole, resends first

	mu        sync.Mutex
	sc        *streamConn // nil while suspended
	gen       uint64      // bumped at every attach and detach
	path      Path
	transport string
	local     net.Addr
	remote    net.Addr
	dc        *directConn // the agent's: the direct connection of the stream (revocation)

	// outHeld and inHeld are the memory of out and in; while the session
	// is suspended their sum counts in budget (the agent's bound on
	// suspended sessions), as charged.
	outHeld, inHeld, charged int64
	budget                   *suspendBudget // nil at the client

	sent       uint64   // data bytes written
	acked      uint64   // the peer's count (End included)
	out        []*chunk // unacknowledged, in order
	writing    *chunk   // being written on the stream: freed only after
	endSent    bool
	closedSent bool

	recv      uint64 // data bytes received, and 1 for the End
	consumed  uint64 // of recv, what the application read or this end dropped (the End once read)
	ackedIn   uint64 // the count in our last Ack (or Resume/Resumed)
	ackWanted bool
	ackTimer  *time.Timer
	ackArmed  bool
	in        [][]byte // received, not yet read; each from chunkPool
	inOff     int      // read offset in in[0]
	inBytes   int
	endRecv   bool
	peerClose bool

	closed       bool // Close called
	finished     bool
	finSent      bool // the stream's FIN: nothing more is written
	ended        bool // onEnd called
	err          error
	resumes      int
	suspendedAt  time.Time
	rdl, wdl     time.Time
	changed      chan struct{} // closed at every change a waiter may wait for
	closeTimer   *time.Timer
	suspendTimer *time.Timer
}

// newSession returns a session on sc (the stream after the Session
// exchange) and starts reading it.
func newSession(id [SessionIDLen]byte, port uint16, window time.Duration, sc *streamConn, path Path,
	spawn func(func()) bool, onSuspend func(*session, error), onEnd func(*session)) *session {
	s := &session{id: id, port: port, window: window, spawn: spawn, onSuspend: onSuspend, onEnd: onEnd,
		local: sc.LocalAddr(), remote: sc.RemoteAddr()}
	s.attachLocked(sc, path)
	return s
}

// attachLocked makes sc the session's stream and starts its reader; the
// caller holds mu, or owns s alone. It returns the reader's generation and
// the channel closed when that reader ends.
func (s *session) attachLocked(sc *streamConn, path Path) (uint64, chan struct{}) {
	s.gen++
	s.sc, s.path, s.transport = sc, path, sc.transport
	s.local, s.remote = sc.LocalAddr(), sc.RemoteAddr()
	s.suspendedAt = time.Time{}
	if s.suspendTimer != nil {
		s.suspendTimer.Stop()
	}
	s.accountLocked()
	gen, done := s.gen, make(chan struct{})
	if !s.spawn(func() { defer close(done); s.readLoop(sc, gen) }) { // the agent or Dialer is closing
		close(done)
		s.sc = nil
		s.failLocked(net.ErrClosed)
		sc.CancelRead(StreamShutdown)
		sc.CancelWrite(StreamShutdown)
	}
	return gen, done
}

// wait waits, mu held, for a change, the deadline or more (when not nil)
// to be closed; it reports whether the deadline passed.
func (s *session) wait(deadline time.Time, more <-chan struct{}) bool {
	var timeout <-chan time.Time
	if !deadline.IsZero() {
		d := time.Until(deadline)
		if d <= 0 {
			return true
		}
		t := time.NewTimer(d)
		defer t.Stop()
		timeout = t.C
	}
	if s.changed == nil {
		s.changed = make(chan struct{})
	}
	ch := s.changed
	s.mu.Unlock()
	expired := false
	select {
	case <-ch:
	case <-more:
	case <-timeout:
		expired = true
	}
	s.mu.Lock()
	return expired
}

// notify wakes the waiters; mu held.
func (s *session) notify() {
	if s.changed != nil {
		close(s.changed)
		s.changed = nil
	}
}

// Read returns the next bytes the peer sent, io.EOF after its End.
func (s *session) Read(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		switch {
		case s.closed:
			return 0, net.ErrClosed
		case s.inBytes > 0:
			n := 0
			for n < len(b) && len(s.in) > 0 {
				k := copy(b[n:], s.in[0][s.inOff:])
				n += k
				s.inOff += k
				if s.inOff == len(s.in[0]) {
					s.inHeld -= int64(cap(s.in[0])) + bufOverhead
					putBuf(s.in[0])
					s.in[0] = nil
					s.in = s.in[1:]
					s.inOff = 0
				}
			}
			s.inBytes -= n
			s.consumed += uint64(n)
			s.accountLocked()
			ack := s.consumedAck
			if s.endRecv && s.inBytes == 0 {
				s.consumed = s.recv // the End too: the TLS above may not read to it
				s.checkFinish()
				ack = s.requestAck // at once: the peer waits for it to finish
			}
			s.mu.Unlock()
			ack()
			s.mu.Lock()
			return n, nil
		case s.endRecv:
			if s.consumed < s.recv { // the End, read
				s.consumed = s.recv
				s.mu.Unlock()
				s.requestAck()
				s.mu.Lock()
			}
			return 0, io.EOF
		case s.err != nil:
			return 0, s.err
		case len(b) == 0:
			return 0, nil
		}
		if s.wait(s.rdl, nil) {
			return 0, os.ErrDeadlineExceeded
		}
	}
}

// writeErr is why a Write cannot go on, or nil; mu held.
func (s *session) writeErr() error {
	switch {
	case s.closed:
		return net.ErrClosed
	case s.err != nil:
		return s.err
	case s.peerClose:
		return errPeerClosed
	case s.endSent:
		return fmt.Errorf("write after the session's write side was closed: %w", net.ErrClosed)
	}
	return nil
}

// Write sends b as Data records, keeping them until the peer acknowledges
// them; while the session is suspended it only keeps them. It waits while
// the unacknowledged ones hold sessionSendBound, and, suspended at an
// agent, while the agent's suspended sessions hold all they may
// (suspendBudget).
func (s *session) Write(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		k := min(len(b)-n, recordChunk)
		s.mu.Lock()
		for {
			if err := s.writeErr(); err != nil {
				s.mu.Unlock()
				return n, err
			}
			if s.outHeld+chunkMem(k) <= sessionSendBound {
				break
			}
			if s.wait(s.wdl, nil) {
				s.mu.Unlock()
				return n, os.ErrDeadlineExceeded
			}
		}
		s.mu.Unlock()
		s.wmu.Lock()
		s.mu.Lock()
		if err := s.writeErr(); err != nil {
			s.mu.Unlock()
			s.wmu.Unlock()
			return n, err
		}
		if s.budget != nil && s.sc == nil { // suspended: within the agent's bound, or later
			cost := chunkMem(k)
			ok, room := s.budget.reserve(cost)
			if !ok {
				s.wmu.Unlock() // a resume needs it
				expired := s.wait(s.wdl, room)
				s.mu.Unlock()
				s.flushAck() // one a reader wanted while wmu was held
				if expired {
					return n, os.ErrDeadlineExceeded
				}
				continue
			}
			s.charged += cost
		}
		c := newChunk(b[n:n+k], s.sent)
		s.sent += uint64(k)
		s.out = append(s.out, c)
		s.outHeld += c.mem
		s.accountLocked()
		sc, gen := s.sc, s.gen
		if sc != nil {
			s.writing = c
		}
		s.mu.Unlock()
		if sc != nil {
			_, err := sc.Write(c.rec)
			s.doneWriting(c)
			if err != nil {
				s.carrierFailed(gen, err)
			}
		}
		s.unlockWrite()
		n += k
	}
	return n, nil
}

// doneWriting frees c if it was acknowledged while being written.
func (s *session) doneWriting(c *chunk) {
	s.mu.Lock()
	s.writing = nil
	if c.freed {
		c.free()
	}
	s.mu.Unlock()
}

// writeEnd sends End (once; again with closed set when it is new).
func (s *session) writeEnd(closed bool) error {
	s.wmu.Lock()
	defer s.unlockWrite()
	s.mu.Lock()
	if s.err != nil || s.finished || (s.endSent && (s.closedSent || !closed)) {
		s.mu.Unlock()
		return nil
	}
	s.endSent = true
	s.closedSent = s.closedSent || closed
	rec, _ := AppendRecord(nil, Record{Type: RecordEnd, Count: s.sent, Closed: s.closedSent})
	sc, gen := s.sc, s.gen
	s.mu.Unlock()
	if sc != nil {
		if _, err := sc.Write(rec); err != nil {
			s.carrierFailed(gen, err)
		}
	}
	return nil
}

// CloseWrite ends the write direction: the peer reads EOF after what was
// written.
func (s *session) CloseWrite() error {
	s.mu.Lock()
	err := s.writeErr()
	s.mu.Unlock()
	if err != nil {
		return err
	}
	return s.writeEnd(false)
}

// Close ends the session for this end: it reads no more, and what it wrote
// is still delivered (resuming if need be, within the resume window).
func (s *session) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for _, b := range s.in {
		s.inHeld -= int64(cap(b)) + bufOverhead
		putBuf(b)
	}
	s.in, s.inBytes, s.inOff = nil, 0, 0
	s.consumed = s.recv // dropped: acknowledged
	s.accountLocked()
	done := s.err != nil || s.finished
	stillReading := !s.endRecv
	s.notify()
	s.mu.Unlock()
	if done {
		return nil
	}
	s.requestAck()
	s.writeEnd(stillReading)
	s.mu.Lock()
	s.checkFinish()
	if !s.finished && s.err == nil {
		s.closeTimer = time.AfterFunc(s.window+finishLinger, func() {
			s.fail(errors.New("the session was closed and its last bytes were not acknowledged in time"))
		})
	}
	s.mu.Unlock()
	return nil
}

// requestAck sends an Ack now, or has the writer on the stream send it.
func (s *session) requestAck() {
	s.mu.Lock()
	s.ackWanted = true
	s.mu.Unlock()
	s.flushAck()
}

// consumedAck acknowledges what the application has read: at once past
// ackEvery, else after ackDelay.
func (s *session) consumedAck() {
	s.mu.Lock()
	now := s.consumed-s.ackedIn >= ackEvery
	if !now && s.consumed > s.ackedIn && !s.ackArmed {
		s.ackArmed = true
		if s.ackTimer == nil {
			s.ackTimer = time.AfterFunc(ackDelay, s.delayedAck)
		} else {
			s.ackTimer.Reset(ackDelay)
		}
	}
	s.mu.Unlock()
	if now {
		s.requestAck()
	}
}

// unlockWrite releases the stream to other writers, sending the Ack a
// reader wanted meanwhile.
func (s *session) unlockWrite() {
	s.wmu.Unlock()
	s.flushAck()
}

// flushAck sends a wanted Ack unless a writer holds the stream; that
// writer sends it when it is done (Write calls flushAck after it).
func (s *session) flushAck() {
	for {
		if !s.wmu.TryLock() {
			return
		}
		s.mu.Lock()
		want := s.ackWanted && s.sc != nil && !s.finSent && s.consumed > s.ackedIn
		s.ackWanted = false
		n, sc, gen := s.consumed, s.sc, s.gen
		if want {
			s.ackedIn = n
		}
		s.mu.Unlock()
		if want {
			var rec [FrameHeaderLen + 8]byte
			rec[0], rec[2] = RecordAck, 8
			binary.BigEndian.PutUint64(rec[FrameHeaderLen:], n)
			if _, err := sc.Write(rec[:]); err != nil {
				s.carrierFailed(gen, err)
			}
		}
		s.wmu.Unlock()
		s.mu.Lock()
		again := s.ackWanted
		s.mu.Unlock()
		if !again {
			return
		}
	}
}

// ack takes the peer's received count; mu held.
func (s *session) ack(count uint64) error {
	limit := s.sent
	if s.endSent {
		limit++
	}
	if count < s.acked || count > limit {
		return fmt.Errorf("%w: the peer acknowledges %d bytes, between %d and %d expected", ErrFrame, count, s.acked, limit)
	}
	s.acked = count
	i := 0
	for ; i < len(s.out) && s.out[i].end() <= count; i++ {
		c := s.out[i]
		s.outHeld -= c.mem
		if c == s.writing {
			c.freed = true // doneWriting frees it
		} else {
			c.free()
		}
		s.out[i] = nil
	}
	s.out = s.out[i:]
	if len(s.out) == 0 {
		s.out = nil
	}
	s.accountLocked()
	s.notify()
	return nil
}

// readLoop reads the records of one stream until it fails or the session
// moves to another.
func (s *session) readLoop(sc *streamConn, gen uint64) {
	var hdr [FrameHeaderLen]byte
	var small [9]byte
	for {
		if _, err := io.ReadFull(sc, hdr[:]); err != nil {
			s.carrierFailed(gen, err)
			return
		}
		typ, n := hdr[0], int(binary.BigEndian.Uint16(hdr[1:]))
		if err := checkRecordHeader(typ, n); err != nil {
			s.protocolError(gen, err)
			return
		}
		var data []byte
		var rec Record
		if typ == RecordData {
			if n <= recordChunk {
				data = (*chunkPool.Get().(*[]byte))[:n]
			} else {
				data = make([]byte, n)
			}
			if _, err := io.ReadFull(sc, data); err != nil {
				s.carrierFailed(gen, err)
				return
			}
		} else {
			if _, err := io.ReadFull(sc, small[:n]); err != nil {
				s.carrierFailed(gen, err)
				return
			}
			var err error
			if rec, err = parseRecordBody(typ, small[:n]); err != nil {
				s.protocolError(gen, err)
				return
			}
		}
		s.mu.Lock()
		if s.gen != gen {
			s.mu.Unlock()
			return
		}
		var err error
		ackNow, dropped := false, false
		switch typ {
		case RecordData:
			if s.endRecv {
				err = fmt.Errorf("%w: data after the end", ErrFrame)
				break
			}
			if s.recv+uint64(n) > s.ackedIn+sessionSendBound { // the most a writer keeps unacknowledged
				err = fmt.Errorf("%w: %d bytes past the last acknowledgment, more than the %d a peer may send", ErrFrame, s.recv+uint64(n)-s.ackedIn, sessionSendBound)
				break
			}
			s.recv += uint64(n)
			if s.closed || s.finished {
				putBuf(data)
				s.consumed = s.recv
				dropped = true
			} else if last := len(s.in) - 1; last >= 0 && cap(s.in[last])-len(s.in[last]) >= n {
				// Into the room the last one left: small records cost
				// what they take, not a buffer each.
				s.in[last] = append(s.in[last], data...)
				s.inBytes += n
				putBuf(data)
			} else {
				s.in = append(s.in, data)
				s.inBytes += n
				s.inHeld += int64(cap(data)) + bufOverhead
			}
		case RecordAck:
			err = s.ack(rec.Count)
		case RecordEnd:
			switch {
			case !s.endRecv && rec.Count != s.recv:
				err = fmt.Errorf("%w: end at %d, %d received", ErrFrame, rec.Count, s.recv)
			case s.endRecv && rec.Count+1 != s.recv:
				err = fmt.Errorf("%w: a second end at %d, the first at %d", ErrFrame, rec.Count, s.recv-1)
			case !s.endRecv:
				s.endRecv = true
				s.recv++
			}
			s.peerClose = s.peerClose || rec.Closed
			if s.inBytes == 0 || s.closed || s.finished || s.peerClose {
				// Everything before it read (the TLS above may not read on
				// to the End after its close_notify), or nobody reads on.
				s.consumed = s.recv
				ackNow = true
			}
		}
		if err == nil {
			s.notify()
			s.checkFinish()
		}
		s.mu.Unlock()
		if err != nil {
			s.protocolError(gen, err)
			return
		}
		if ackNow {
			s.requestAck()
		} else if dropped {
			s.consumedAck()
		}
	}
}

func (s *session) delayedAck() {
	s.mu.Lock()
	s.ackArmed = false
	s.mu.Unlock()
	s.requestAck()
}

// checkFinish finishes the session once neither end owes the other
// anything. The stream then ends with a FIN (after the last Ack). mu held.
func (s *session) checkFinish() {
	if s.finished || s.err != nil {
		return
	}
	// Finished once the peer has all this end sent (its End acknowledged)
	// and this end all the peer sent (its End here, and read or dropped:
	// the last Ack, sent before the FIN, says so), or this end told the
	// peer it reads no more; or the peer told so.
	delivered := s.endSent && s.acked == s.sent+1
	taken := s.endRecv && s.consumed == s.recv
	if !(delivered && (taken || s.closedSent)) && !s.peerClose {
		return
	}
	s.finished = true
	if s.closeTimer != nil {
		s.closeTimer.Stop()
	}
	s.releaseOut()
	sc := s.sc
	s.notify()
	go func() {
		s.requestAck()
		if sc != nil {
			s.wmu.Lock()
			s.mu.Lock()
			s.finSent = true
			s.mu.Unlock()
			sc.Stream.Close() // FIN, after the last Ack; the reader reads on until the peer's
			sc.SetReadDeadline(time.Now().Add(finishLinger))
			s.wmu.Unlock()
		}
		s.end()
	}()
}

// releaseOut frees what waits for acknowledgment; mu held.
func (s *session) releaseOut() {
	for _, c := range s.out {
		s.outHeld -= c.mem
		if c == s.writing {
			c.freed = true
		} else {
			c.free()
		}
	}
	s.out = nil
	s.accountLocked()
}

// end calls onEnd once.
func (s *session) end() {
	s.mu.Lock()
	already := s.ended
	s.ended = true
	if s.ackTimer != nil {
		s.ackTimer.Stop()
	}
	s.mu.Unlock()
	if !already && s.onEnd != nil {
		s.onEnd(s)
	}
}

// carrierFailed suspends the session after its stream gen failed; a
// finished session only lets the stream go.
func (s *session) carrierFailed(gen uint64, cause error) {
	s.mu.Lock()
	if s.gen != gen || s.sc == nil {
		s.mu.Unlock()
		return
	}
	sc := s.detachLocked()
	suspend := !s.finished && s.err == nil
	s.mu.Unlock()
	switch {
	case suspend:
		sc.CancelRead(StreamAborted)
		sc.CancelWrite(StreamAborted)
	case !errors.Is(cause, io.EOF):
		// Finished: the FIN and the last Ack stay; only reading stops.
		sc.CancelRead(StreamAborted)
	}
	if suspend && s.onSuspend != nil {
		s.onSuspend(s, cause)
	}
}

// detachLocked takes the session off its stream and returns that stream:
// its reader stops taking records, and what was sent on it and not
// acknowledged waits to be sent again. mu held, s.sc set.
func (s *session) detachLocked() *streamConn {
	sc := s.sc
	s.sc = nil
	s.gen++
	if !s.finished && s.err == nil {
		s.suspendedAt = time.Now()
	}
	s.accountLocked()
	s.notify()
	return sc
}

// detach takes a session that is going well off its relayed stream, to
// move it to a direct one (migrate.go): the stream is reset with
// StreamMoved and the session waits, suspended, for the caller's resume.
// It reports false, and does nothing, when the session has no stream (its
// resume loop has it), is direct already, is over, or its application
// closed it.
func (s *session) detach() bool {
	s.mu.Lock()
	if s.sc == nil || s.path.Direct || s.finished || s.err != nil || s.closed {
		s.mu.Unlock()
		return false
	}
	sc := s.detachLocked()
	s.mu.Unlock()
	sc.CancelRead(StreamMoved)
	sc.CancelWrite(StreamMoved)
	return true
}

// protocolError ends the session: the peer broke the record layer.
func (s *session) protocolError(gen uint64, err error) {
	s.mu.Lock()
	current := s.gen == gen
	s.mu.Unlock()
	if current {
		s.fail(fmt.Errorf("link session: %w", err))
	}
}

// fail ends the session with err: Read and Write return it, the stream
// is reset, the id forgotten.
func (s *session) fail(err error) {
	s.mu.Lock()
	sc := s.failLocked(err)
	s.mu.Unlock()
	if sc != nil {
		sc.CancelRead(StreamAborted)
		sc.CancelWrite(StreamAborted)
	}
	s.end()
}

// failLocked is fail with mu held; it returns the stream to reset.
func (s *session) failLocked(err error) *streamConn {
	if s.err != nil || s.finished {
		return nil
	}
	s.err = err
	sc := s.sc
	s.sc = nil
	s.gen++
	s.releaseOut()
	if s.closeTimer != nil {
		s.closeTimer.Stop()
	}
	if s.suspendTimer != nil {
		s.suspendTimer.Stop()
	}
	s.notify()
	return sc
}

// failSuspended ends the session with err if it is still in the
// suspension that began at since (not resumed meanwhile), and reports
// whether it did.
func (s *session) failSuspended(since time.Time, err error) bool {
	s.mu.Lock()
	if s.sc != nil || s.err != nil || s.finished || !s.suspendedAt.Equal(since) {
		s.mu.Unlock()
		return false
	}
	s.failLocked(err) // suspended: no stream to reset
	s.mu.Unlock()
	s.end()
	return true
}

// rewound drops what was received and not read (rewindUnreadLocked) and
// returns the count a Resume reports. The session is suspended: no
// stream's reader adds to it.
func (s *session) rewound() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rewindUnreadLocked()
	return s.recv
}

// rewindUnreadLocked forgets what was received and not yet read, as if it
// had not arrived: Resume and Resumed report what the application took,
// and the peer, which keeps everything until it is acknowledged (and an
// acknowledgment counts only what was taken), sends the rest again. So a
// session whose application reads nothing holds one window of it however
// often it is resumed, not a window more at each resume. mu held, and no
// stream's reader may add to the session (it is suspended, or its
// generation changes with this resume).
func (s *session) rewindUnreadLocked() {
	if s.consumed >= s.recv {
		return
	}
	for _, b := range s.in {
		s.inHeld -= int64(cap(b)) + bufOverhead
		putBuf(b)
	}
	s.in, s.inBytes, s.inOff = nil, 0, 0
	s.recv, s.endRecv = s.consumed, false // an End not yet read comes again too
	s.accountLocked()
}

// resume moves the session to sc, whose peer has received peerRecv bytes
// of this end's stream: this end sends again what it has not (after
// Resumed{received} when answer is set: the agent's answer to Resume).
// The stream's reader starts first, so that both ends may resend at once.
// It returns the channel closed when that stream's reader ends.
func (s *session) resume(sc *streamConn, peerRecv uint64, path Path, answer bool) (chan struct{}, error) {
	s.wmu.Lock()
	defer s.unlockWrite()
	s.mu.Lock()
	if s.err != nil || s.finished {
		err := s.err
		s.mu.Unlock()
		if err == nil {
			err = ErrNoSession
		}
		return nil, err
	}
	if err := s.ack(peerRecv); err != nil {
		sc2 := s.failLocked(err)
		s.mu.Unlock()
		if sc2 != nil {
			sc2.CancelRead(StreamAborted)
			sc2.CancelWrite(StreamAborted)
		}
		s.end()
		return nil, err
	}
	old := s.sc
	s.resumes++
	if answer { // the client rewound before its Resume
		s.rewindUnreadLocked()
	}
	s.ackedIn = s.recv
	recv := s.recv
	resend := append([]*chunk(nil), s.out...)
	endSent, closedSent, sent := s.endSent, s.closedSent, s.sent
	endOwed := endSent && (s.acked <= sent || closedSent) // again with its flag: it may not have arrived
	gen, done := s.attachLocked(sc, path)
	s.notify()
	s.mu.Unlock()
	if old != nil { // the client knows better: that stream is dead, or the session moved
		old.CancelRead(StreamMoved)
		old.CancelWrite(StreamMoved)
	}
	if answer {
		if err := WriteFrame(sc, Resumed{Received: recv}); err != nil {
			s.carrierFailed(gen, err)
			return done, nil
		}
	}
	for _, c := range resend {
		s.mu.Lock()
		if c.freed || s.gen != gen {
			s.mu.Unlock()
			continue
		}
		s.writing = c
		s.mu.Unlock()
		rec := c.rec
		if c.off < peerRecv { // the peer took its start (a count is what was read, not whole records)
			tail := rec[FrameHeaderLen+int(peerRecv-c.off):]
			rec = append([]byte{RecordData, byte(len(tail) >> 8), byte(len(tail))}, tail...)
		}
		_, err := sc.Write(rec)
		s.doneWriting(c)
		if err != nil {
			s.carrierFailed(gen, err)
			return done, nil
		}
	}
	if endOwed {
		rec, _ := AppendRecord(nil, Record{Type: RecordEnd, Count: sent, Closed: closedSent})
		if _, err := sc.Write(rec); err != nil {
			s.carrierFailed(gen, err)
		}
	}
	return done, nil
}

// accountLocked makes what the session counts in its agent's budget what
// it holds while suspended, nothing otherwise; mu held. Every change to
// held, or to whether the session is suspended, calls it.
func (s *session) accountLocked() {
	if s.budget == nil {
		return
	}
	var want int64
	if s.sc == nil && s.err == nil && !s.finished {
		want = s.outHeld + s.inHeld
	}
	if d := want - s.charged; d != 0 {
		s.charged = want
		s.budget.add(d)
	}
}

// state for the agent's table and the client's resume loop.
func (s *session) suspended() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sc == nil && s.err == nil && !s.finished
}

// closedByApp reports whether the application has closed the session.
func (s *session) closedByApp() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *session) currentPath() Path {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.path
}

func (s *session) currentTransport() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.transport
}

func (s *session) LocalAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.local
}

func (s *session) RemoteAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.remote
}

func (s *session) SetDeadline(t time.Time) error {
	s.mu.Lock()
	s.rdl, s.wdl = t, t
	s.notify()
	s.mu.Unlock()
	return nil
}

func (s *session) SetReadDeadline(t time.Time) error {
	s.mu.Lock()
	s.rdl = t
	s.notify()
	s.mu.Unlock()
	return nil
}

func (s *session) SetWriteDeadline(t time.Time) error {
	s.mu.Lock()
	s.wdl = t
	s.notify()
	s.mu.Unlock()
	return nil
}

package link

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// Both ends of resumable sessions (session.go): the agent keeps its
// sessions by id and takes Resume on any stream a client was admitted on;
// the Dialer resumes a suspended session by whichever path works now.

// Resume retry delays of the client, doubling from min to max.
const (
	resumeRetryMin = 100 * time.Millisecond
	resumeRetryMax = 2 * time.Second
)

// sessionTable is an agent's resumable sessions by id.
type sessionTable struct {
	mu sync.Mutex
	m  map[[SessionIDLen]byte]*session
}

// suspendBudget is the memory an agent's suspended sessions may hold
// together (AgentConfig.MaxSuspendedBytes). A session counts in it what it
// holds (session.held: what it sent and keeps for the client, what it
// received and the service has not taken) while it is suspended. A Write
// into a suspended session reserves its chunk first and waits while there
// is no room (the service's bytes then wait in its socket), so only a
// session's suspension takes the total past the limit, and the agent then
// ends sessions until it fits (boundSuspended).
type suspendBudget struct {
	limit int64
	mu    sync.Mutex
	held  int64
	room  chan struct{} // closed when held drops, for the Writes waiting
}

// add counts d more (or less) bytes.
func (b *suspendBudget) add(d int64) {
	b.mu.Lock()
	b.held += d
	if d < 0 && b.room != nil {
		close(b.room)
		b.room = nil
	}
	b.mu.Unlock()
}

// reserve counts n more bytes if they fit within the limit; else it
// returns a channel closed when some are given back.
func (b *suspendBudget) reserve(n int64) (bool, <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.held+n <= b.limit {
		b.held += n
		return true, nil
	}
	if b.room == nil {
		b.room = make(chan struct{})
	}
	return false, b.room
}

// total is what the suspended sessions hold.
func (b *suspendBudget) total() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.held
}

// serveSession runs a new resumable session on sc (an Open answered OK):
// it dials the service at target and answers the Session frame (with
// StatusDialFailed when the service does not answer), then runs the
// end-to-end TLS over it and splices it to the service. It owns sc.
func (a *Agent) serveSession(sc *streamConn, dc *directConn, port uint16, target string, f Session) {
	t := &a.resumable
	t.mu.Lock()
	dup := t.m[f.ID] != nil
	t.mu.Unlock()
	if dup {
		WriteFrame(sc, Result{Status: StatusBadRequest, Message: "session id in use"})
		sc.Close()
		return
	}
	local, err := a.dialLocal(port, target)
	if err != nil {
		WriteFrame(sc, Result{Status: StatusDialFailed, Message: err.Error()})
		sc.Close()
		return
	}
	defer local.Close()
	sc.SetDeadline(time.Time{})
	if err := WriteFrame(sc, Result{Status: StatusOK}); err != nil {
		sc.Close()
		return
	}
	s := newSession(f.ID, port, a.cfg.ResumeWindow, sc, Path{Direct: dc != nil}, a.wg.Go, a.suspendSession, a.forgetSession)
	s.mu.Lock()
	s.dc = dc
	s.budget = &a.budget
	s.accountLocked()
	s.mu.Unlock()
	t.mu.Lock()
	if t.m[f.ID] != nil || a.ctx.Err() != nil {
		t.mu.Unlock()
		s.fail(errors.New("session id in use"))
		return
	}
	t.m[f.ID] = s
	t.mu.Unlock()
	s.SetDeadline(time.Now().Add(a.cfg.HandshakeTimeout))
	tc := tls.Server(s, a.e2e)
	if err := tc.HandshakeContext(a.ctx); err != nil {
		a.log.Debug().Err(err).Uint16("port", port).Msg("end-to-end handshake failed")
		s.fail(err)
		return
	}
	s.SetDeadline(time.Time{})
	splice(local, &e2eConn{Conn: tc, s: s})
}

// serveResume answers a client's Resume on sc (an Open answered OK): the
// session goes on on sc, or StatusNoSession when the agent holds no
// session of that id for that port. It returns when sc no longer carries
// the session.
func (a *Agent) serveResume(sc *streamConn, dc *directConn, port uint16, f Resume) {
	t := &a.resumable
	t.mu.Lock()
	s := t.m[f.ID]
	t.mu.Unlock()
	ok := s != nil
	if ok {
		s.mu.Lock()
		ok = s.port == port && s.resumes < MaxResumes
		s.mu.Unlock()
	}
	if !ok {
		a.log.Info().Uint16("port", port).Msg("refused to resume an unknown link session")
		WriteFrame(sc, Result{Status: StatusNoSession, Message: fmt.Sprintf("device %s holds no such session", a.cfg.Device)})
		sc.Close()
		return
	}
	sc.SetDeadline(time.Time{})
	s.mu.Lock()
	s.dc = dc
	s.mu.Unlock()
	done, err := s.resume(sc, f.Received, Path{Direct: dc != nil}, true)
	if err != nil {
		WriteFrame(sc, Result{Status: StatusNoSession, Message: fmt.Sprintf("device %s no longer holds the session: %v", a.cfg.Device, err)})
		sc.Close()
		return
	}
	a.log.Info().Uint16("port", port).Bool("direct", dc != nil).Msg("link session resumed")
	<-done
}

// suspendSession keeps a session whose stream failed for ResumeWindow,
// within the agent's bounds on suspended sessions, or ends it when the
// agent is stopping.
func (a *Agent) suspendSession(s *session, cause error) {
	if a.ctx.Err() != nil {
		s.fail(net.ErrClosed)
		return
	}
	s.mu.Lock()
	gen := s.gen
	s.suspendTimer = time.AfterFunc(a.cfg.ResumeWindow, func() {
		s.mu.Lock()
		still := s.gen == gen && s.sc == nil
		s.mu.Unlock()
		if still {
			s.fail(errSessionExpired)
		}
	})
	s.mu.Unlock()
	a.log.Debug().AnErr("reason", cause).Uint16("port", s.port).Msg("link session's path failed; keeping it for the client to resume")
	a.boundSuspended()
}

// boundSuspended ends the sessions suspended longest until the agent
// keeps at most MaxSuspended suspended, holding at most MaxSuspendedBytes
// together. Longest first, because a client that has not resumed after
// many seconds of trying (it tries every 2 s at most) has most likely
// gone for good (a laptop closed, a network left), while a path that has
// just failed is what resumable sessions are for (a relay restart, an
// address change: many sessions suspend at once); ending the newest
// instead would let sessions abandoned earlier keep the room for their
// whole window, and every session whose path failed meanwhile end.
func (a *Agent) boundSuspended() {
	a.boundMu.Lock()
	defer a.boundMu.Unlock()
	type kept struct {
		s     *session
		since time.Time
		held  int64
	}
	var list []kept
	t := &a.resumable
	t.mu.Lock()
	for _, s := range t.m {
		s.mu.Lock()
		if s.sc == nil && s.err == nil && !s.finished && !s.suspendedAt.IsZero() {
			list = append(list, kept{s, s.suspendedAt, s.charged})
		}
		s.mu.Unlock()
	}
	t.mu.Unlock()
	n, held := len(list), a.budget.total()
	maxN, maxHeld := a.cfg.MaxSuspended, a.cfg.MaxSuspendedBytes
	if n <= maxN && held <= maxHeld {
		return
	}
	slices.SortFunc(list, func(x, y kept) int { return x.since.Compare(y.since) })
	now := time.Now()
	for _, k := range list {
		var err error
		var why string
		switch {
		case n > maxN:
			err = fmt.Errorf("the session's path failed and the device keeps %d suspended sessions at most; it had kept this one longest", maxN)
			why = "the agent keeps its maximum of suspended link sessions; ending the one suspended longest, whose client can no longer resume it"
		case held > maxHeld:
			err = fmt.Errorf("the session's path failed and the device's suspended sessions held more than their %d bytes of memory; it had kept this one longest", maxHeld)
			why = "suspended link sessions hold more memory than the agent allows; ending the one suspended longest, whose client can no longer resume it"
		default:
			return
		}
		if !k.s.failSuspended(k.since, err) { // resumed or ended meanwhile
			continue
		}
		a.log.Warn().Uint16("port", k.s.port).Int64("suspended_ms", now.Sub(k.since).Milliseconds()).
			Int64("session_bytes", k.held).Int("suspended", n).Int("max_suspended", maxN).
			Int64("held_bytes", held).Int64("max_held_bytes", maxHeld).Msg(why)
		n--
		held -= k.held
	}
}

// forgetSession drops a session that ended.
func (a *Agent) forgetSession(s *session) {
	t := &a.resumable
	t.mu.Lock()
	if t.m[s.id] == s {
		delete(t.m, s.id)
	}
	t.mu.Unlock()
}

// endSessions ends the resumable sessions that match (all when match is
// nil), suspended or not: the owner's controls (Link off, the device
// deleted, an access code revoked) and the agent stopping.
func (a *Agent) endSessions(err error, match func(*session) bool) int {
	t := &a.resumable
	t.mu.Lock()
	var hit []*session
	for _, s := range t.m {
		if match == nil || match(s) {
			hit = append(hit, s)
		}
	}
	t.mu.Unlock()
	for _, s := range hit {
		s.fail(err)
	}
	return len(hit)
}

// errNoSessionFrame is startSession's answer from an agent that predates
// resumable sessions. Such an agent runs the end-to-end TLS right after
// its OK Result; the Session frame's type (0x0f) is no TLS record type,
// so its TLS server gives up on the first bytes, sends no alert and ends
// the stream: a FIN before any byte of an answer, which relays pass on
// as a FIN (and over the TCP carrier, the reset that follows it cannot
// overtake it). An agent of this version answers Session with a Result or
// resets the stream, and a path that fails resets the stream or ends its
// connection: a clean end of the stream here means the old agent, and
// nothing else.
var errNoSessionFrame = errors.New("the agent predates resumable sessions")

// startSession makes the session on sc (an Open or Connect answered OK)
// resumable: a Session frame with a new id, answered by a Result.
func (d *Dialer) startSession(ctx context.Context, sc *streamConn, device string, port uint16, path Path) (*session, error) {
	var id [SessionIDLen]byte
	rand.Read(id[:])
	res, err := request(ctx, sc, Session{ID: id}, d.cfg.HandshakeTimeout)
	if errors.Is(err, io.EOF) { // not io.ErrUnexpectedEOF: no byte came
		return nil, errNoSessionFrame
	}
	if err != nil {
		return nil, err
	}
	if res.Status != StatusOK {
		return nil, &RefusedError{Status: res.Status, Message: res.Message}
	}
	onSuspend := func(s *session, cause error) {
		if d.ctx.Err() != nil {
			s.fail(fmt.Errorf("%s:%d: the client closed: %w", device, port, net.ErrClosed))
			return
		}
		if ownerEnded(cause) {
			s.fail(fmt.Errorf("%s:%d: %w", device, port, cause))
			return
		}
		if !d.wg.Go(func() { d.resumeLoop(s, device, cause) }) {
			s.fail(net.ErrClosed)
		}
	}
	s := newSession(id, port, d.cfg.ResumeWindow, sc, path, d.wg.Go, onSuspend, func(s *session) { d.untrack(device, s) })
	d.track(device, s)
	s.mu.Lock()
	over := s.ended || s.err != nil // before track: untrack may have come first
	s.mu.Unlock()
	if over {
		d.untrack(device, s)
	}
	return s, nil
}

// ownerEnded reports whether a stream ended for a reason its resume would
// only meet again: the relay's or the agent's word that the owner switched
// Link off, deleted the device or revoked the access code.
func ownerEnded(err error) bool {
	var se *quic.StreamError
	if errors.As(err, &se) && se.Remote {
		return se.ErrorCode == StreamLinkDisabled
	}
	var ae *quic.ApplicationError
	if errors.As(err, &ae) && ae.Remote {
		switch ae.ErrorCode {
		case CloseLinkDisabled, CloseDeviceGone, CloseRevoked:
			return true
		}
	}
	return false
}

// resumeStatus reports whether a refusal may pass while the session waits:
// the agent reconnecting, a limit, the relay busy.
func resumeStatus(st Status) bool {
	switch st {
	case StatusOffline, StatusRateLimited, StatusTooManyStreams, StatusUnavailable, StatusDialFailed:
		return true
	}
	return false
}

// resumeLoop resumes a suspended session: a new stream to the device by
// the direct path or the relay (which checks the device and the access
// code as for a new session), Resume, and on with the session; again
// after a while when that fails, until ResumeWindow. A refusal that will
// not pass (no such session, Link off, the access code revoked) ends the
// session at once.
func (d *Dialer) resumeLoop(s *session, device string, cause error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(d.ctx, d.cfg.ResumeWindow)
	defer cancel()
	log := d.log.With().Str("device", device).Uint16("port", s.port).Logger()
	log.Info().AnErr("reason", cause).Msg("link session's path failed; resuming it")
	delay := resumeRetryMin
	for attempt := 1; ; attempt++ {
		path, err := d.resumeOnce(ctx, s, device)
		if err == nil {
			log.Info().Str("path", path.String()).Int("attempts", attempt).
				Int64("after_ms", time.Since(start).Milliseconds()).Msg("link session resumed")
			if !path.Direct && !d.cfg.DisableDirect && s.currentTransport() != TransportTCP {
				d.backToDirect(device)
			}
			return
		}
		var re *RefusedError
		if (errors.As(err, &re) && !resumeStatus(re.Status)) || ctx.Err() != nil {
			closed := s.closedByApp()
			s.fail(fmt.Errorf("%s:%d: the session's path failed and it could not be resumed: %w", device, s.port, err))
			ev := log.Warn()
			if closed { // the application had closed it: nothing lost that it waits for
				ev = log.Debug()
			}
			ev.AnErr("reason", err).Int("attempts", attempt).Msg("link session not resumed; it ends")
			return
		}
		log.Debug().AnErr("reason", err).Int("attempt", attempt).Msg("link session not resumed yet")
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
		delay = min(2*delay, resumeRetryMax)
	}
}

// resumeOnce is one attempt of resumeLoop.
func (d *Dialer) resumeOnce(ctx context.Context, s *session, device string) (Path, error) {
	sc, path, err := d.stream(ctx, device, s.port, false)
	if err != nil {
		return path, err
	}
	return path, d.resumeOn(ctx, s, sc, path)
}

// resumeOn resumes s on sc, a stream whose Open was answered OK: Resume,
// and on Resumed the session goes on there. A refusal is a *RefusedError;
// sc is closed unless the session took it.
func (d *Dialer) resumeOn(ctx context.Context, s *session, sc *streamConn, path Path) error {
	fr, err := ask(ctx, sc, Resume{ID: s.id, Received: s.rewound()}, d.cfg.HandshakeTimeout)
	if err != nil {
		sc.CancelWrite(StreamAborted)
		sc.Close()
		return err
	}
	switch f := fr.(type) {
	case Resumed:
		if _, err := s.resume(sc, f.Received, path, false); err != nil {
			sc.CancelWrite(StreamAborted)
			sc.Close()
			return &RefusedError{Status: StatusNoSession, Message: err.Error()}
		}
		return nil
	case Result:
		sc.Close()
		return &RefusedError{Status: f.Status, Message: f.Message}
	}
	sc.CancelWrite(StreamAborted)
	sc.Close()
	return &RefusedError{Status: StatusBadRequest, Message: fmt.Sprintf("expected resumed, got frame type %#x", fr.frameType())}
}

// prefixConn is a stream whose first bytes were read already, to tell a
// Session or Resume frame from a client that predates resumable sessions
// and starts the end-to-end TLS at once.
type prefixConn struct {
	*streamConn
	prefix []byte
}

func (c *prefixConn) Read(b []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(b, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.streamConn.Read(b)
}

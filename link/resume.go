package link

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
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

// suspendSession keeps a session whose stream failed for ResumeWindow, or
// ends it when the agent holds MaxSuspended already or is stopping.
func (a *Agent) suspendSession(s *session, cause error) {
	n := 0
	t := &a.resumable
	t.mu.Lock()
	for _, o := range t.m {
		if o != s && o.suspended() {
			n++
		}
	}
	t.mu.Unlock()
	switch {
	case a.ctx.Err() != nil:
		s.fail(net.ErrClosed)
		return
	case n >= MaxSuspended:
		a.log.Warn().Int("suspended", n).Msg("too many suspended link sessions; ending one whose path failed")
		s.fail(fmt.Errorf("the session's path failed and the device holds %d suspended sessions already", n))
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
	fr, err := ask(ctx, sc, Resume{ID: s.id, Received: s.received()}, d.cfg.HandshakeTimeout)
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

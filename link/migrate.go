package link

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Moving sessions to a direct path (wire.go, "Resumable sessions"). A
// device's first session starts on the relay at once, and the direct path
// comes up a little later; so does a path repaired after an address
// change, while the sessions that met the failure went on through the
// relay. Once a direct path to a device is up, the Dialer moves that
// device's resumable sessions which run through the relay onto it, one at
// a time, with the resume exchange: it opens a session stream on the
// direct connection (an Open answered OK), takes the session off its
// relayed stream (reset with StreamMoved, which the relay logs as a
// session moved, not aborted), sends Resume on the direct stream, and both
// ends send again what the other has not received. The application sees a
// stall of about one round trip. A direct path that cannot take the
// session leaves it on the relay; a session taken off its stream whose
// Resume then fails is resumed as after any failed path.

// track notes a resumable session of the Dialer's to device, for
// moveToDirect; untrack forgets it when it ends.
func (d *Dialer) track(device string, s *session) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.sessions == nil {
		d.sessions = map[string]map[*session]struct{}{}
	}
	m := d.sessions[device]
	if m == nil {
		m = map[*session]struct{}{}
		d.sessions[device] = m
	}
	m[s] = struct{}{}
}

func (d *Dialer) untrack(device string, s *session) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.sessions[device], s)
	if len(d.sessions[device]) == 0 {
		delete(d.sessions, device)
	}
}

// relayedSessions returns device's sessions that run on a relayed stream
// now (not suspended, not closed by the application), which may still be
// moved: a move is a resume, and the agent takes at most MaxResumes of a
// session, so half of them are kept for failures.
func (d *Dialer) relayedSessions(device string) []*session {
	d.mu.Lock()
	all := make([]*session, 0, len(d.sessions[device]))
	for s := range d.sessions[device] {
		all = append(all, s)
	}
	d.mu.Unlock()
	var on []*session
	for _, s := range all {
		s.mu.Lock()
		relayed := s.sc != nil && !s.path.Direct && !s.closed && !s.finished && s.err == nil && s.resumes < MaxResumes/2
		s.mu.Unlock()
		if relayed {
			on = append(on, s)
		}
	}
	return on
}

// moveToDirect moves device's relayed sessions to its direct path, in the
// background; it returns at once.
func (d *Dialer) moveToDirect(device string) {
	if d.cfg.DisableResume {
		return
	}
	relayed := d.relayedSessions(device) // each is checked again as it moves
	if len(relayed) == 0 {
		return
	}
	d.wg.Go(func() {
		moved := 0
		var to Path
		for _, s := range relayed {
			path, err := d.migrate(d.ctx, s, device)
			if err != nil {
				d.log.Debug().Str("device", device).Uint16("port", s.port).AnErr("reason", err).Msg("link session stays on the relay")
				if errors.Is(err, errFallback) { // the path cannot take sessions now
					break
				}
				continue
			}
			moved, to = moved+1, path
		}
		if moved > 0 {
			d.log.Info().Str("device", device).Int("sessions", moved).Str("path", "direct").Str("pair", to.Local.String()+">"+to.Remote.String()).
				Msg("link sessions moved from the relay to the direct path")
		}
	})
}

// migrate moves one relayed session to device's direct path and returns
// that path. An error wrapping errFallback means the direct path cannot
// take it (the session stays where it was), errNotMoved that the session
// no longer runs on the relay; another error, that the session was taken
// off its stream and its Resume failed (the resume loop has it now).
func (d *Dialer) migrate(ctx context.Context, s *session, device string) (Path, error) {
	p, conn := d.directPath(device)
	if conn == nil {
		return Path{}, fmt.Errorf("%w: no direct path", errFallback)
	}
	sc, path, err := d.directStream(ctx, p, conn, device, s.port)
	if err != nil {
		if !errors.Is(err, errFallback) {
			err = fmt.Errorf("%w: %v", errFallback, err)
		}
		return path, err
	}
	if !s.detach() { // it ended, or its path failed meanwhile and it is being resumed
		sc.CancelWrite(StreamAborted)
		sc.Close()
		return path, fmt.Errorf("%w: the session ended or is being resumed", errNotMoved)
	}
	if err := d.resumeOn(ctx, s, sc, path); err != nil {
		if s.onSuspend != nil {
			s.onSuspend(s, fmt.Errorf("moving the session to the direct path: %w", err))
		}
		return path, err
	}
	return path, nil
}

// errNotMoved means a session was not there to move any more.
var errNotMoved = errors.New("not moved")

// backToDirect moves device's relayed sessions to a direct path: at once
// when one is up (a session may have resumed on the relay while the path
// was being repaired), else once punching works again. Nothing happens
// for a device that never had a direct path attempted.
func (d *Dialer) backToDirect(device string) {
	if _, conn := d.directPath(device); conn != nil {
		d.moveToDirect(device)
		return
	}
	d.mu.Lock()
	p := d.direct.paths[device]
	d.mu.Unlock()
	if p != nil {
		d.punchLater(p)
	}
}

// punchLater tries for a direct path to p's device again once the next
// attempt is due (p.nextTry), if sessions to the device still run through
// the relay then: a failed attempt or a lost path is tried again, and the
// sessions move, without waiting for the application's next session. One
// wait per device at a time; Close ends it.
func (d *Dialer) punchLater(p *directPath) {
	d.mu.Lock()
	if p.retrying || d.closed || d.cfg.DisableResume {
		d.mu.Unlock()
		return
	}
	p.retrying = true
	d.mu.Unlock()
	done := func() {
		d.mu.Lock()
		p.retrying = false
		d.mu.Unlock()
	}
	if !d.wg.Go(func() {
		d.mu.Lock()
		wait, key := time.Until(p.nextTry), p.key
		d.mu.Unlock()
		t := time.NewTimer(max(wait, 0))
		defer t.Stop()
		select {
		case <-d.ctx.Done():
			done()
			return
		case <-t.C:
		}
		done()
		if len(d.relayedSessions(p.device)) == 0 {
			return
		}
		if _, conn := d.directPath(p.device); conn != nil { // up meanwhile, by a new session's punch
			d.moveToDirect(p.device)
		} else {
			d.startPunch(p.device, key, time.Now())
		}
	}) {
		done()
	}
}

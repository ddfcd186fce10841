package linkserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nasreach/nasreach/anonymize"
	"github.com/nasreach/nasreach/connlog"
	"github.com/nasreach/nasreach/link"
	"github.com/nasreach/nasreach/store"
	"github.com/quic-go/quic-go"
)

// serveClient serves a client connection: the first stream's request, then
// every further stream, each a session (or a direct-path request) of its own.
func (l *Server) serveClient(c link.Carrier, first link.Stream, req link.Frame, src netip.AddrPort) {
	l.wg.Go(func() { l.serveRequest(c, first, req, src) })
	defer l.dropInfo(c)
	for {
		s, err := c.AcceptStream(l.ctx)
		if err != nil {
			return
		}
		if !l.wg.Go(func() { l.readAndServe(c, s, src) }) {
			s.CancelRead(link.StreamShutdown)
			s.CancelWrite(link.StreamShutdown)
			return
		}
	}
}

// readAndServe reads a stream's request within the handshake timeout.
func (l *Server) readAndServe(c link.Carrier, s link.Stream, src netip.AddrPort) {
	s.SetReadDeadline(l.cfg.Now().Add(l.cfg.HandshakeTimeout))
	fr, err := link.ReadFrame(s, l.cfg.MaxHeaderBytes)
	s.SetReadDeadline(time.Time{})
	if err != nil {
		refuseStream(s, "malformed request: "+err.Error())
		return
	}
	l.serveRequest(c, s, fr, src)
}

// serveRequest serves one client stream by its first frame.
func (l *Server) serveRequest(c link.Carrier, s link.Stream, fr link.Frame, src netip.AddrPort) {
	switch req := fr.(type) {
	case link.Connect:
		l.session(c, s, req, src)
	case link.Info:
		l.serveInfo(c, s)
	case link.Direct:
		l.exchange(s, req, src)
	case link.Report:
		l.report(s, req, src)
	default:
		refuseStream(s, "expected a connect frame")
	}
}

// refuseStream answers a malformed or unexpected request and ends the stream.
func refuseStream(s link.Stream, msg string) {
	link.WriteFrame(s, link.Result{Status: link.StatusBadRequest, Message: msg})
	s.Close()
	s.CancelRead(link.StreamRefused)
}

// session authorizes one Connect, asks the agent for the port and splices.
// It logs one connection-log record however it ends.
func (l *Server) session(c link.Carrier, cs link.Stream, req link.Connect, src netip.AddrPort) {
	start := l.cfg.Now()
	device := strings.ToLower(req.Device)
	ev := connlog.Event{Kind: "session", Device: device, Client: src.Addr(), Port: req.Port, Start: start}
	refuse := func(st link.Status, msg string) { l.refuse(cs, ev, st, msg, c.Transport()) }
	a, st, msg := l.authorize(src.Addr(), device, req.AccessCode, start)
	if st == link.StatusOffline {
		if h, ok := l.holder(device); ok {
			l.forward(c, cs, req, src, h, ev)
			return
		}
	}
	if st != link.StatusOK {
		refuse(st, msg)
		return
	}
	l.relaySession(cs, a, ev, req.Port, c.Transport(), "")
}

// relaySession asks the agent a (admitted, its stream counted) for port
// and splices cs to it; it logs ev however the session ends, with detail
// noted.
func (l *Server) relaySession(cs link.Stream, a *linkAgent, ev connlog.Event, port uint16, transport, detail string) {
	device := ev.Device
	refuse := func(st link.Status, msg string) { l.refuse(cs, ev, st, msg, transport) }
	defer a.streams.Add(-1)
	l.sessions.Add(1)
	defer l.sessions.Add(-1)

	as, fr, err := l.ask(a, link.Open{Port: port})
	if err != nil {
		refuse(link.StatusOffline, fmt.Sprintf("device %s did not answer", device))
		return
	}
	res, ok := fr.(link.Result)
	if !ok {
		as.CancelRead(link.StreamAborted)
		as.CancelWrite(link.StreamAborted)
		refuse(link.StatusOffline, fmt.Sprintf("device %s did not answer", device))
		return
	}
	if res.Status != link.StatusOK {
		as.Close()
		as.CancelRead(link.StreamRefused)
		refuse(res.Status, res.Message)
		return
	}
	if err := link.WriteFrame(cs, link.Result{Status: link.StatusOK}); err != nil {
		as.CancelRead(link.StreamAborted)
		as.CancelWrite(link.StreamAborted)
		ev.Outcome, ev.Detail, ev.Time = "error", "client went away", l.cfg.Now()
		l.event(ev)
		return
	}
	in, out, err := l.splice(cs, as, a, device)
	ev.BytesIn, ev.BytesOut, ev.Time, ev.Outcome, ev.Detail = in, out, l.cfg.Now(), "ok", detail
	switch {
	case moved(err):
		ev.Detail = strings.TrimPrefix(detail+": moved to a direct path", ": ")
	case err != nil:
		ev.Outcome = "aborted"
		ev.Detail = strings.TrimPrefix(detail+": "+abortReason(err, a), ": ")
	}
	ev.Detail = over(transport, ev.Detail)
	l.event(ev)
	l.log.Debug().Str("device", device).Uint16("port", port).Str("client", anonymize.Addr(ev.Client).String()).
		Int64("bytes_in", in).Int64("bytes_out", out).Str("outcome", ev.Outcome).Msg("link session ended")
}

// refuse answers a client's request with st and msg, ends its stream and
// logs ev as refused, noting the client's transport.
func (l *Server) refuse(cs link.Stream, ev connlog.Event, st link.Status, msg, transport string) {
	link.WriteFrame(cs, link.Result{Status: st, Message: msg})
	cs.Close()
	cs.CancelRead(link.StreamRefused)
	ev.Outcome, ev.Detail = "refused", over(transport, st.String())
	l.event(ev)
	l.log.Debug().Str("device", ev.Device).Str("kind", ev.Kind).Uint16("port", ev.Port).
		Str("client", anonymize.Addr(ev.Client).String()).Str("reason", st.String()).Msg("link request refused")
}

// authorize checks a client's request for device as every session and
// every direct-path exchange is checked: the client address's rate, the
// device, its Link switch, the access code, its agent and its stream limit.
// On StatusOK the request counts in the agent's streams until the caller
// calls a.streams.Add(-1).
func (l *Server) authorize(src netip.Addr, device, code string, now time.Time) (*linkAgent, link.Status, string) {
	if !l.limiter.Allow(src, now) {
		return nil, link.StatusRateLimited, "too many new connections from your address; slow down"
	}
	return l.admit(device, code)
}

// admit is authorize without the client address's rate: the checks a
// session forwarded by another node gets here (that node limited the
// rate).
func (l *Server) admit(device, code string) (*linkAgent, link.Status, string) {
	d, err := l.cfg.Store.Get(device)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, link.StatusUnknownDevice, fmt.Sprintf("no device %q on this relay", device)
	case err != nil:
		l.log.Error().Err(err).Msg("link: cannot read the device table")
		return nil, link.StatusUnavailable, "the relay cannot check the device right now; try again"
	case !d.Link:
		return nil, link.StatusLinkDisabled, fmt.Sprintf("device %s has Link switched off", device)
	case d.Access == store.AccessToken && code == "":
		return nil, link.StatusAccessDenied, fmt.Sprintf("device %s requires an access code", device)
	case d.Access == store.AccessToken && !l.cfg.Store.CheckAccessCode(device, code):
		return nil, link.StatusAccessDenied, fmt.Sprintf("the access code is not valid for device %s", device)
	}
	a := l.agent(device)
	if a == nil {
		return nil, link.StatusOffline, fmt.Sprintf("device %s is not connected to the relay", device)
	}
	if n, limit := a.streams.Add(1), l.maxStreams.Load(); n > limit {
		a.streams.Add(-1)
		return nil, link.StatusTooManyStreams, fmt.Sprintf("device %s has its maximum of %d sessions open", device, limit)
	}
	return a, link.StatusOK, ""
}

// ask opens a stream on the agent's connection, sends f and reads the
// agent's answer, within the handshake timeout. On error the stream is
// gone; otherwise the caller owns it.
func (l *Server) ask(a *linkAgent, f link.Frame) (link.Stream, link.Frame, error) {
	ctx, cancel := context.WithTimeout(l.ctx, l.cfg.HandshakeTimeout)
	as, err := a.conn.OpenStreamSync(ctx)
	cancel()
	if err != nil {
		return nil, nil, fmt.Errorf("open a stream to the agent: %w", err)
	}
	as.SetDeadline(l.cfg.Now().Add(l.cfg.HandshakeTimeout))
	var fr link.Frame
	if err = link.WriteFrame(as, f); err == nil {
		fr, err = link.ReadFrame(as, l.cfg.MaxHeaderBytes)
	}
	as.SetDeadline(time.Time{})
	if err != nil {
		as.CancelRead(link.StreamAborted)
		as.CancelWrite(link.StreamAborted)
		l.log.Debug().Err(err).Str("device", a.device).Msg("link agent did not answer")
		return nil, nil, err
	}
	return as, fr, nil
}

// moved reports whether an end of the session reset its stream because
// the session on it moved to a direct path (the client moves it, the agent
// lets the old stream go when the Resume reaches it there first): the
// session goes on, no longer through the relay.
func moved(err error) bool {
	if j, ok := err.(interface{ Unwrap() []error }); ok { // either half may have met it first
		return slices.ContainsFunc(j.Unwrap(), moved)
	}
	var se *quic.StreamError
	return errors.As(err, &se) && se.Remote && se.ErrorCode == link.StreamMoved
}

func abortReason(err error, a *linkAgent) string {
	switch a.reason.Load() {
	case link.StreamLinkDisabled:
		return "link switched off"
	case link.StreamDeviceGone:
		return "agent gone"
	case link.StreamShutdown:
		return "relay shutting down"
	}
	var se *quic.StreamError
	if errors.As(err, &se) {
		return fmt.Sprintf("stream reset (code %d)", se.ErrorCode)
	}
	var ie *quic.IdleTimeoutError
	if errors.As(err, &ie) {
		return "idle timeout"
	}
	return "connection lost"
}

var linkBuffers = sync.Pool{New: func() any { b := make([]byte, linkCopyBuffer); return &b }}

// splice copies client→agent and agent→client until both directions end.
// A FIN is passed on as a FIN; a reset or error on either side resets all
// four halves, with the agent's close reason when it has one. Flow control
// gives backpressure: the relay reads only as fast as the other side takes.
func (l *Server) splice(cs, as link.Stream, a *linkAgent, device string) (in, out int64, err error) {
	var once sync.Once
	abort := func() {
		once.Do(func() {
			code := quic.StreamErrorCode(a.reason.Load())
			if code == 0 {
				code = link.StreamAborted
			}
			cs.CancelRead(code)
			cs.CancelWrite(code)
			as.CancelRead(code)
			as.CancelWrite(code)
		})
	}
	half := func(dst, src link.Stream, fromClient bool, n *int64) error {
		bp := linkBuffers.Get().(*[]byte)
		defer linkBuffers.Put(bp)
		buf := *bp
		for {
			k, rerr := src.Read(buf)
			if k > 0 {
				if l.cfg.Tap != nil {
					l.cfg.Tap(device, fromClient, buf[:k])
				}
				if _, werr := dst.Write(buf[:k]); werr != nil {
					abort()
					return werr
				}
				*n += int64(k)
			}
			if errors.Is(rerr, io.EOF) {
				dst.Close()
				return nil
			}
			if rerr != nil {
				abort()
				return rerr
			}
		}
	}
	errc := make(chan error, 1)
	go func() { errc <- half(as, cs, true, &in) }()
	err2 := half(cs, as, false, &out)
	err1 := <-errc
	return in, out, errors.Join(err1, err2)
}

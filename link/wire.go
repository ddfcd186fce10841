package link

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Link wire protocol, version 1.
//
// Link carries TCP connections between a client and a NAS that both dial out
// to a relay. It runs over QUIC (RFC 9000) with ALPN "nasreach-link/1"; the
// relay authenticates itself with its TLS certificate (pinned by the SHA-256
// of its SubjectPublicKeyInfo, or verified against the system roots).
//
// Agent connection (the NAS side, one per device):
//
//	agent                                   relay
//	  │── QUIC handshake ─────────────────────▶│
//	  │── open stream 0: Hello{device, token} ─▶│ store.Authenticate, link on?
//	  │◀──────────────────── Result{status} ────│ StatusOK, or refused and closed
//	  │   (stream 0 stays open: the control stream; its end ends the agent)
//	  │◀── relay opens a stream per session: Open{port}
//	  │── Result{status} ──────────────────────▶│ StatusOK if the port is exposed
//	  │◀═══════ end-to-end TLS bytes, spliced ═══▶│
//
// A second agent for the same device replaces the first: the relay closes the
// older connection with CloseReplaced. Link switched off or the device deleted
// closes the agent connection at once (CloseLinkDisabled, CloseDeviceGone).
//
// Client connection (one per client process, any number of sessions):
//
//	client                                  relay                      agent
//	  │── open stream: Connect{device, port, code} ─▶│ checks device, access code,
//	  │                                        │     limits; opens a stream ─▶ Open{port}
//	  │◀──────────────── Result{status} ───────│◀──────── Result{status} ───│
//	  │◀════════════ end-to-end TLS bytes, spliced both ways ════════════════▶│
//
// After a StatusOK Result the stream carries only the end-to-end TLS 1.3
// session between client (TLS client) and agent (TLS server, the device key,
// ALPN "nasreach-e2e/1"), then the application's bytes inside it. The relay
// splices the two streams without reading into them; a FIN is forwarded as a
// FIN (half-close) and a reset as a reset. Any other status is followed by the
// end of the stream. Because the end-to-end TLS starts only after the Result,
// a later direct (hole-punched) path can replace the relay: the client sends
// Connect straight to the agent and runs the same TLS over that stream.
//
// Frame layout (all integers big-endian):
//
//	type   uint8
//	length uint16   // of body; at most MaxFrameBody, readers may set a lower bound
//	body   [length]byte
//
// Strings in a body are str8: one length byte, then that many bytes of UTF-8.
// A body must be consumed exactly; trailing bytes make the frame invalid.
const (
	FrameHello   = 0x01 // agent→relay, first stream: version u8 | device str8 | token str8
	FrameConnect = 0x02 // client→relay, each stream: version u8 | port u16 | device str8 | access code str8 (may be empty)
	FrameOpen    = 0x03 // relay→agent, each session stream: version u8 | port u16
	FrameResult  = 0x04 // reply to Hello, Connect or Open: status u8 | message str8 (for people, never parsed)
)

// ALPN is the QUIC application protocol between agents or clients and the relay.
const ALPN = "nasreach-link/1"

// E2EALPN is the ALPN of the end-to-end TLS session inside a relayed stream.
const E2EALPN = "nasreach-e2e/1"

// Version is the protocol version carried in Hello, Connect and Open.
const Version = 1

// Size limits of the wire format.
const (
	// FrameHeaderLen is the type byte and the length.
	FrameHeaderLen = 3
	// MaxFrameBody bounds every frame body; a reader refuses larger lengths
	// before allocating.
	MaxFrameBody = 1024
	// MaxDeviceLen is the longest device name (a DNS label).
	MaxDeviceLen = 63
	// MaxSecretLen bounds a token or access code.
	MaxSecretLen = 255
	// MaxMessageLen bounds the human-readable message of a Result.
	MaxMessageLen = 255
)

// Status is the outcome carried by a Result frame.
type Status uint8

// The statuses. New ones may be added; an unknown status is a refusal.
const (
	StatusOK             Status = 0  // go ahead: the stream now carries the session
	StatusBadRequest     Status = 1  // malformed frame or unsupported version
	StatusBadCredentials Status = 2  // agent: unknown device or wrong token
	StatusUnknownDevice  Status = 3  // client: no such device on this relay
	StatusLinkDisabled   Status = 4  // the device has Link switched off
	StatusOffline        Status = 5  // the device's agent is not connected
	StatusAccessDenied   Status = 6  // access code missing or wrong
	StatusPortNotExposed Status = 7  // the agent does not serve that port
	StatusDialFailed     Status = 8  // the agent could not reach its local service
	StatusRateLimited    Status = 9  // too many new streams from this address
	StatusTooManyStreams Status = 10 // the device has too many sessions open
	StatusTooManyAgents  Status = 11 // the relay holds its maximum of agents
	StatusUnavailable    Status = 12 // relay shutting down or internal error
)

var statusText = map[Status]string{
	StatusOK: "ok", StatusBadRequest: "bad request", StatusBadCredentials: "bad credentials",
	StatusUnknownDevice: "unknown device", StatusLinkDisabled: "link disabled", StatusOffline: "device offline",
	StatusAccessDenied: "access denied", StatusPortNotExposed: "port not exposed", StatusDialFailed: "dial failed",
	StatusRateLimited: "rate limited", StatusTooManyStreams: "too many streams", StatusTooManyAgents: "too many agents",
	StatusUnavailable: "unavailable",
}

// String returns the status in words, e.g. "device offline".
func (s Status) String() string {
	if t, ok := statusText[s]; ok {
		return t
	}
	return fmt.Sprintf("status %d", uint8(s))
}

// Stream error codes: why a relayed stream was reset (QUIC RESET_STREAM /
// STOP_SENDING).
const (
	StreamAborted      = 0x1 // the other end of the session went away
	StreamDeviceGone   = 0x2 // the agent disconnected, was replaced or the device was deleted
	StreamLinkDisabled = 0x3 // the device's Link switch was turned off
	StreamShutdown     = 0x4 // the relay is shutting down
	StreamRefused      = 0x5 // the session was refused (after a non-OK Result)
)

// Connection close codes: why the relay (or a peer) closed a QUIC connection.
const (
	CloseNormal       = 0x0 // orderly close
	CloseReplaced     = 0x1 // a newer agent for the same device connected
	CloseLinkDisabled = 0x2 // the device's Link switch was turned off
	CloseDeviceGone   = 0x3 // the device was deleted or expired
	CloseShutdown     = 0x4 // the relay is shutting down
	CloseRefused      = 0x5 // authentication or a limit refused the connection
	CloseProtocol     = 0x6 // the peer broke this protocol
	CloseIdle         = 0x7 // no first stream within the handshake timeout
)

// Frame is one of Hello, Connect, Open or Result.
type Frame interface {
	frameType() byte
	appendBody(b []byte) ([]byte, error)
}

// Hello authenticates an agent on its control stream.
type Hello struct {
	Device string
	Token  string
}

// Connect asks the relay for a session to a device's port.
type Connect struct {
	Device     string
	Port       uint16
	AccessCode string
}

// Open asks the agent to serve a session to one of its exposed ports.
type Open struct {
	Port uint16
}

// Result answers Hello, Connect or Open.
type Result struct {
	Status  Status
	Message string
}

func (Hello) frameType() byte   { return FrameHello }
func (Connect) frameType() byte { return FrameConnect }
func (Open) frameType() byte    { return FrameOpen }
func (Result) frameType() byte  { return FrameResult }

// ErrFrame means a frame broke the wire format; the wrapping error says how.
var ErrFrame = errors.New("malformed link frame")

func appendStr8(b []byte, field, s string, max int) ([]byte, error) {
	if len(s) > max {
		return nil, fmt.Errorf("%w: %s is %d bytes, at most %d", ErrFrame, field, len(s), max)
	}
	return append(append(b, byte(len(s))), s...), nil
}

func (h Hello) appendBody(b []byte) ([]byte, error) {
	b = append(b, Version)
	b, err := appendStr8(b, "device", h.Device, MaxDeviceLen)
	if err != nil {
		return nil, err
	}
	return appendStr8(b, "token", h.Token, MaxSecretLen)
}

func (c Connect) appendBody(b []byte) ([]byte, error) {
	b = binary.BigEndian.AppendUint16(append(b, Version), c.Port)
	b, err := appendStr8(b, "device", c.Device, MaxDeviceLen)
	if err != nil {
		return nil, err
	}
	return appendStr8(b, "access code", c.AccessCode, MaxSecretLen)
}

func (o Open) appendBody(b []byte) ([]byte, error) {
	return binary.BigEndian.AppendUint16(append(b, Version), o.Port), nil
}

func (r Result) appendBody(b []byte) ([]byte, error) {
	msg := r.Message
	if len(msg) > MaxMessageLen {
		msg = msg[:MaxMessageLen]
	}
	return appendStr8(append(b, byte(r.Status)), "message", msg, MaxMessageLen)
}

// AppendFrame appends the encoding of f to b.
func AppendFrame(b []byte, f Frame) ([]byte, error) {
	start := len(b)
	b = append(b, f.frameType(), 0, 0)
	b, err := f.appendBody(b)
	if err != nil {
		return nil, err
	}
	n := len(b) - start - FrameHeaderLen
	if n > MaxFrameBody {
		return nil, fmt.Errorf("%w: body of %d bytes exceeds %d", ErrFrame, n, MaxFrameBody)
	}
	binary.BigEndian.PutUint16(b[start+1:], uint16(n))
	return b, nil
}

// WriteFrame writes f to w in one Write.
func WriteFrame(w io.Writer, f Frame) error {
	b, err := AppendFrame(make([]byte, 0, 64), f)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// ReadFrame reads exactly one frame from r, never more bytes than the frame
// holds (the session's bytes follow it on the same stream). Bodies longer
// than max (or MaxFrameBody, if max is 0 or larger) are refused before
// anything is allocated.
func ReadFrame(r io.Reader, max int) (Frame, error) {
	if max <= 0 || max > MaxFrameBody {
		max = MaxFrameBody
	}
	var hdr [FrameHeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(hdr[1:]))
	if n > max {
		return nil, fmt.Errorf("%w: frame body of %d bytes exceeds the limit of %d", ErrFrame, n, max)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return parseBody(hdr[0], body)
}

// ParseFrame decodes one whole frame held in b, which must contain nothing
// else.
func ParseFrame(b []byte) (Frame, error) {
	if len(b) < FrameHeaderLen {
		return nil, fmt.Errorf("%w: %d bytes is shorter than a frame header", ErrFrame, len(b))
	}
	n := int(binary.BigEndian.Uint16(b[1:]))
	if n > MaxFrameBody {
		return nil, fmt.Errorf("%w: frame body of %d bytes exceeds the limit of %d", ErrFrame, n, MaxFrameBody)
	}
	if len(b)-FrameHeaderLen != n {
		return nil, fmt.Errorf("%w: header says %d body bytes, have %d", ErrFrame, n, len(b)-FrameHeaderLen)
	}
	return parseBody(b[0], b[FrameHeaderLen:])
}

// body is a cursor over a frame body.
type body struct {
	b   []byte
	err error
}

func (d *body) u8(field string) uint8 {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 1 {
		d.err = fmt.Errorf("%w: body ends before %s", ErrFrame, field)
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *body) u16(field string) uint16 {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 2 {
		d.err = fmt.Errorf("%w: body ends before %s", ErrFrame, field)
		return 0
	}
	v := binary.BigEndian.Uint16(d.b)
	d.b = d.b[2:]
	return v
}

func (d *body) str8(field string, max int) string {
	n := int(d.u8(field + " length"))
	if d.err != nil {
		return ""
	}
	if n > max {
		d.err = fmt.Errorf("%w: %s is %d bytes, at most %d", ErrFrame, field, n, max)
		return ""
	}
	if len(d.b) < n {
		d.err = fmt.Errorf("%w: body ends inside %s", ErrFrame, field)
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

func (d *body) version() {
	if v := d.u8("version"); d.err == nil && v != Version {
		d.err = fmt.Errorf("%w: protocol version %d, this end speaks %d", ErrFrame, v, Version)
	}
}

func (d *body) done() error {
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%w: %d bytes after the last field", ErrFrame, len(d.b))
	}
	return d.err
}

func parseBody(typ byte, b []byte) (Frame, error) {
	d := &body{b: b}
	var f Frame
	switch typ {
	case FrameHello:
		d.version()
		var h Hello
		h.Device = d.str8("device", MaxDeviceLen)
		h.Token = d.str8("token", MaxSecretLen)
		f = h
	case FrameConnect:
		d.version()
		var c Connect
		c.Port = d.u16("port")
		c.Device = d.str8("device", MaxDeviceLen)
		c.AccessCode = d.str8("access code", MaxSecretLen)
		f = c
	case FrameOpen:
		d.version()
		f = Open{Port: d.u16("port")}
	case FrameResult:
		var r Result
		r.Status = Status(d.u8("status"))
		r.Message = d.str8("message", MaxMessageLen)
		f = r
	default:
		return nil, fmt.Errorf("%w: unknown frame type %#x", ErrFrame, typ)
	}
	if err := d.done(); err != nil {
		return nil, err
	}
	return f, nil
}

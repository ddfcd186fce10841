package dnsserver

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"
)

// handoverQueue is the number of packets the fast path's readers may have
// handed over and miekg/dns not yet read; past it they are dropped, as a
// full socket buffer drops them.
const handoverQueue = 1024

// handover is the net.PacketConn that miekg/dns's UDP server reads when the
// fast path owns the sockets: ReadFrom yields the packets the fast path
// handed over, and WriteTo sends the reply from the socket the query came in
// on, from the address it was sent to (the control message the query came
// with), as miekg/dns does on a *net.UDPConn of its own. miekg/dns treats
// a PacketConn other than *net.UDPConn as a plain one: ReadFrom, WriteTo,
// SetReadDeadline to stop, Close.
type handover struct {
	local   net.Addr
	packets chan handedPacket
	wake    chan struct{} // a read deadline in the past: ReadFrom returns
	done    chan struct{} // closed by Close
	close   sync.Once

	mu       sync.Mutex
	deadline time.Time
	timer    *time.Timer // ReadFrom's, for the deadline
}

type handedPacket struct {
	b    []byte
	from *handedAddr
}

// handedAddr is the client of a handed-over query, and how to answer it.
// It is the net.Addr miekg/dns passes to the handler (RemoteAddr) and back
// to WriteTo; AddrPort makes internal/netaddr read it like a *net.UDPAddr.
type handedAddr struct {
	ap   netip.AddrPort
	oob  []byte // the source-address control message for the reply; nil: none
	conn *net.UDPConn
}

func (a *handedAddr) Network() string          { return "udp" }
func (a *handedAddr) String() string           { return a.ap.String() }
func (a *handedAddr) AddrPort() netip.AddrPort { return a.ap }
func newHandover(local net.Addr) *handover {
	return &handover{local: local, packets: make(chan handedPacket, handoverQueue), wake: make(chan struct{}, 1), done: make(chan struct{})}
}
func (h *handover) LocalAddr() net.Addr              { return h.local }
func (h *handover) SetDeadline(t time.Time) error    { return h.SetReadDeadline(t) }
func (h *handover) SetWriteDeadline(time.Time) error { return nil }

// give queues a packet for miekg/dns; it reports false when the queue is
// full or closed (the packet is dropped).
func (h *handover) give(p handedPacket) bool {
	select {
	case <-h.done:
		return false
	default:
	}
	select {
	case h.packets <- p:
		return true
	default:
		return false
	}
}

// ReadFrom returns the next handed-over packet, or os.ErrDeadlineExceeded
// once the read deadline passes (miekg/dns polls with a 2-second one and
// stops with one in the past). miekg/dns's one reading goroutine calls it.
func (h *handover) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		h.mu.Lock()
		deadline := h.deadline
		h.mu.Unlock()
		var expired <-chan time.Time
		if !deadline.IsZero() {
			wait := time.Until(deadline)
			if wait <= 0 {
				return 0, nil, os.ErrDeadlineExceeded
			}
			if h.timer == nil {
				h.timer = time.NewTimer(wait)
			} else {
				h.timer.Reset(wait)
			}
			expired = h.timer.C
		}
		select {
		case p := <-h.packets:
			return copy(b, p.b), p.from, nil
		case <-expired:
		case <-h.wake: // a new deadline: look again
		case <-h.done:
			return 0, nil, net.ErrClosed
		}
	}
}

// SetReadDeadline records t; one in the past wakes a blocked ReadFrom.
func (h *handover) SetReadDeadline(t time.Time) error {
	h.mu.Lock()
	h.deadline = t
	h.mu.Unlock()
	select {
	case h.wake <- struct{}{}:
	default:
	}
	return nil
}

// WriteTo sends b to addr, which must be one ReadFrom returned.
func (h *handover) WriteTo(b []byte, addr net.Addr) (int, error) {
	a, ok := addr.(*handedAddr)
	if !ok {
		return 0, errors.New("dns handover: reply to an address the fast path did not hand over")
	}
	n, _, err := a.conn.WriteMsgUDPAddrPort(b, a.oob, a.ap)
	return n, err
}

// Close stops ReadFrom; the sockets belong to the fast path's readers.
func (h *handover) Close() error {
	h.close.Do(func() { close(h.done) })
	return nil
}

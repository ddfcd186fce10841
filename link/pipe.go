package link

import (
	"net"
	"os"
	"sync"
	"time"
)

// A session's end-to-end TLS yields one record (up to 16 KiB) per Read, so
// splice copied into the local TCP connection one write(2) per record, and
// decrypted the next record only once that write had returned. pipedConn
// takes splice's writes to the local connection through a writePipe: Write
// copies the bytes and returns, and a goroutine writes them to the
// connection, all that queued up meanwhile in one write, while the next
// records are decrypted. Where the machine is busy (many sessions, or few
// cores) the records queue up and the writes get larger and fewer; where it
// is not, decrypting and writing overlap. At most pipeBatch bytes wait
// besides the batch being written, so that a service that stops reading
// holds the session back as before.

const (
	// pipeBatch is how many bytes a writePipe gathers for one write; Write
	// waits while that much waits besides the batch being written.
	pipeBatch = 64 << 10
	// pipeLinger is how long a closed pipe keeps writing what it holds
	// to a peer that does not read, before it gives up.
	pipeLinger = 30 * time.Second
)

// pipedConn is a net.Conn whose writes go through a writePipe; Close and
// CloseWrite take effect once what was written has been.
type pipedConn struct {
	net.Conn
	p *writePipe
}

func newPipedConn(c net.Conn) *pipedConn { return &pipedConn{Conn: c, p: newWritePipe(c)} }

func (c *pipedConn) Write(b []byte) (int, error) { return c.p.Write(b) }

// CloseWrite half-closes the connection after what was written, when it
// can be half-closed; else it closes it.
func (c *pipedConn) CloseWrite() error {
	if cw, ok := c.Conn.(closeWriter); ok {
		c.p.close(cw.CloseWrite, false)
	} else {
		c.p.close(c.Conn.Close, false)
	}
	return nil
}

// Close closes the connection once what was written has been, or after
// pipeLinger.
func (c *pipedConn) Close() error {
	c.p.close(c.Conn.Close, true)
	return nil
}

// wait waits until what was written before a close has been written (or
// failed, or ran out of pipeLinger).
func (c *pipedConn) wait() { <-c.p.drained }

// SetDeadline sets the read deadline and the pipe's write deadline.
func (c *pipedConn) SetDeadline(t time.Time) error {
	c.p.setDeadline(t)
	return c.Conn.SetReadDeadline(t)
}

// SetWriteDeadline sets the pipe's write deadline.
func (c *pipedConn) SetWriteDeadline(t time.Time) error {
	c.p.setDeadline(t)
	return nil
}

// pipeTarget is what a writePipe writes to.
type pipeTarget interface {
	Write(b []byte) (int, error)
	SetWriteDeadline(t time.Time) error
}

// writePipe queues writes for a goroutine that runs only while there is
// something to write. It keeps the write deadline for its callers
// (net.Conn's contract: a Write that waits for room past it fails); the
// target's own writes have none, until close gives them pipeLinger.
type writePipe struct {
	w pipeTarget

	room chan struct{} // the goroutine took a batch, or stopped
	wake chan struct{} // a new deadline

	mu       sync.Mutex
	batch    []byte // what waits for the goroutine, in order
	spare    []byte // the buffer of the batch written last
	running  bool   // the goroutine is writing
	err      error  // the first write error, returned from then on
	closed   bool   // no more writes
	deadline time.Time
	then     []func() error // called in order once everything is written
	drained  chan struct{}  // closed once closed and written (or failed)
}

// newWritePipe returns a pipe to w that takes over its write deadline.
func newWritePipe(w pipeTarget) *writePipe {
	w.SetWriteDeadline(time.Time{})
	return &writePipe{w: w, room: make(chan struct{}, 1), wake: make(chan struct{}, 1), drained: make(chan struct{})}
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Write queues a copy of b and returns; it waits only while a full batch
// waits besides the one being written.
func (p *writePipe) Write(b []byte) (int, error) {
	for {
		p.mu.Lock()
		err, dl := p.err, p.deadline
		if err == nil && p.closed {
			err = net.ErrClosed
		}
		if err == nil && len(b) > 0 && (len(p.batch) == 0 || len(p.batch)+len(b) <= pipeBatch) {
			p.batch = append(p.batch, b...)
			if !p.running {
				p.running = true
				go p.run()
			}
			p.mu.Unlock()
			return len(b), nil
		}
		p.mu.Unlock()
		if err != nil || len(b) == 0 {
			return 0, err
		}
		var t *time.Timer
		var expired <-chan time.Time
		if !dl.IsZero() {
			wait := time.Until(dl)
			if wait <= 0 {
				return 0, os.ErrDeadlineExceeded
			}
			t = time.NewTimer(wait)
			expired = t.C
		}
		select {
		case <-p.room:
		case <-expired:
		case <-p.wake:
		}
		if t != nil {
			t.Stop()
		}
	}
}

// setDeadline sets the deadline of Write.
func (p *writePipe) setDeadline(t time.Time) {
	p.mu.Lock()
	p.deadline = t
	p.mu.Unlock()
	signal(p.wake)
}

// run writes batches until none waits, then returns (the next Write starts
// it again); once the pipe is closed and empty it calls the close
// functions. After an error it drops what waits.
func (p *writePipe) run() {
	for {
		p.mu.Lock()
		out := p.batch
		if len(out) == 0 || p.err != nil {
			p.batch, p.running = out[:0], false
			then := p.takeThen()
			p.mu.Unlock()
			signal(p.room)
			for _, f := range then {
				f()
			}
			return
		}
		p.batch, p.spare = p.spare[:0], nil
		p.mu.Unlock()
		signal(p.room)
		_, err := p.w.Write(out)
		p.mu.Lock()
		p.spare = out[:0]
		if p.err == nil {
			p.err = err
		}
		p.mu.Unlock()
	}
}

// takeThen returns the close functions due: those given to close once the
// pipe is closed, and nil while it is open; the first time, it marks the
// pipe drained. The caller holds mu.
func (p *writePipe) takeThen() []func() error {
	if !p.closed {
		return nil
	}
	select {
	case <-p.drained:
	default:
		close(p.drained)
	}
	then := p.then
	p.then = nil
	return then
}

// close takes no more writes and calls then once what waits is written
// (at once when nothing does); with linger set, the target's writes get
// pipeLinger to finish.
func (p *writePipe) close(then func() error, linger bool) {
	p.mu.Lock()
	if linger {
		p.w.SetWriteDeadline(time.Now().Add(pipeLinger))
	}
	p.closed = true
	p.then = append(p.then, then)
	var now []func() error
	if !p.running {
		now = p.takeThen()
	}
	p.mu.Unlock()
	for _, f := range now {
		f()
	}
}

package turnserver

import (
	"net"
	"sync"
	"time"
)

// frameWriter writes whole frames to one TCP or TLS connection of a TURN
// client. A write queues the frame and returns; one flushing goroutine, started
// when frames are waiting and none runs, writes everything queued in a single
// call. Frames a relay socket's reader forwards while a write is under way go
// out together, as coturn's do, instead of costing the server and the client a
// system call (and a TCP segment) each. Queued bytes are bounded: a writer
// waits while maxQueuedWrite bytes are waiting, so a client that does not read
// slows its relay sockets' readers as a blocking write would.
type frameWriter struct {
	conn net.Conn

	mu       sync.Mutex
	cond     sync.Cond // a flush ended a round, or the writer failed
	queued   []byte    // frames waiting for the flusher
	spare    []byte    // the buffer the flusher last wrote, reused
	flushing bool      // a flusher goroutine runs
	err      error     // the first write error, or net.ErrClosed after close
	closeBy  time.Time // set by close: the deadline of the last writes

	deadline time.Time // the write deadline last set; only the flusher touches it
}

// maxQueuedWrite is how many bytes may wait for one connection's flusher.
const maxQueuedWrite = 64 << 10

// closeFlushTimeout bounds how long close waits for queued frames to go out.
const closeFlushTimeout = time.Second

// newFrameWriter returns a writer for conn.
func newFrameWriter(conn net.Conn) *frameWriter {
	w := &frameWriter{conn: conn}
	w.cond.L = &w.mu
	return w
}

// write queues b, one whole frame, and returns len(b); it fails once a write
// to the connection has failed or the writer is closed.
func (w *frameWriter) write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for w.err == nil && len(w.queued) > 0 && len(w.queued)+len(b) > maxQueuedWrite {
		w.cond.Wait()
	}
	if w.err != nil {
		return 0, w.err
	}
	w.queued = append(w.queued, b...)
	if !w.flushing {
		w.flushing = true
		go w.flush()
	}
	return len(b), nil
}

// flush writes what is queued until nothing is. A failed write closes the
// connection, so that the client's reader (pion's) ends and its allocation
// goes with it.
func (w *frameWriter) flush() {
	w.mu.Lock()
	for len(w.queued) > 0 && w.err == nil {
		buf := w.queued
		w.queued = w.spare[:0]
		closeBy := w.closeBy
		w.mu.Unlock()

		if !closeBy.IsZero() {
			w.conn.SetWriteDeadline(closeBy) //nolint:errcheck // shows as a write error
		} else if refreshDeadline(&w.deadline, time.Now(), streamWriteTimeout) {
			w.conn.SetWriteDeadline(w.deadline) //nolint:errcheck // shows as a write error
		}
		_, err := w.conn.Write(buf)
		if err != nil {
			w.conn.Close()
		}

		w.mu.Lock()
		w.spare = buf[:0]
		if err != nil && w.err == nil {
			w.err = err
		}
		w.cond.Broadcast()
	}
	w.queued = w.queued[:0]
	if cap(w.queued) > 2*streamReadChunk { // an idle connection keeps no burst-sized buffers
		w.queued = nil
	}
	if cap(w.spare) > 2*streamReadChunk {
		w.spare = nil
	}
	w.flushing = false
	w.cond.Broadcast()
	w.mu.Unlock()
}

// close lets queued frames go out for up to closeFlushTimeout, then makes
// every later write fail with net.ErrClosed. The caller closes the connection.
func (w *frameWriter) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.flushing && w.closeBy.IsZero() {
		w.closeBy = time.Now().Add(closeFlushTimeout)
		w.conn.SetWriteDeadline(w.closeBy) //nolint:errcheck // shows as a write error
	}
	for w.flushing {
		w.cond.Wait()
	}
	if w.err == nil {
		w.err = net.ErrClosed
	}
	w.queued, w.spare = nil, nil
}

package turnserver

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/testutil"
)

// tcpPair returns both ends of a TCP connection on 127.0.0.1.
func tcpPair(t *testing.T) (server, client net.Conn) {
	t.Helper()
	return connPair(t, "tcp", "127.0.0.1:0")
}

// unixPair returns both ends of a Unix stream connection. Unlike TCP's, its
// buffer holds a fixed amount that only the reader frees: with no reader, a
// buffer once full stays full (no retransmission or window probe moves bytes
// later), so a test can fill it and know that every later write blocks.
func unixPair(t *testing.T) (server, client net.Conn) {
	t.Helper()
	return connPair(t, "unix", filepath.Join(t.TempDir(), "s"))
}

// connPair returns both ends of a connection to a listener on addr.
func connPair(t *testing.T, network, addr string) (server, client net.Conn) {
	t.Helper()
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	client, err = net.Dial(network, l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { server.Close(); client.Close() })
	return server, client
}

// testFrame is a ChannelData-shaped frame: channel, length, then the writer
// number and a sequence number repeated as payload, so that a reader can tell
// a frame cut or interleaved with another from a whole one.
func testFrame(writer, seq, size int) []byte {
	b := make([]byte, 4+size)
	binary.BigEndian.PutUint16(b[0:2], 0x4000+uint16(writer))
	binary.BigEndian.PutUint16(b[2:4], uint16(size))
	for i := 4; i+4 <= len(b); i += 4 {
		binary.BigEndian.PutUint16(b[i:], uint16(writer))
		binary.BigEndian.PutUint16(b[i+2:], uint16(seq))
	}
	return b
}

// Frames written at once by many goroutines (pion's relay loops and the
// filter's own answers) reach the client whole, each writer's in order.
func TestFrameWriterKeepsConcurrentFramesWholeAndInOrder(t *testing.T) {
	server, client := tcpPair(t)
	w := newFrameWriter(server)
	const writers, frames = 16, 2000
	var wg sync.WaitGroup
	for n := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := range frames {
				if _, err := w.write(testFrame(n, seq, 4*(1+seq%300))); err != nil {
					t.Errorf("writer %d frame %d: %v", n, seq, err)
					return
				}
			}
		}()
	}

	next := make([]int, writers)
	client.SetReadDeadline(time.Now().Add(20 * time.Second))
	hdr := make([]byte, 4)
	for got := 0; got < writers*frames; got++ {
		if _, err := io.ReadFull(client, hdr); err != nil {
			t.Fatalf("after %d frames: %v", got, err)
		}
		writer := int(binary.BigEndian.Uint16(hdr[0:2]) - 0x4000)
		size := int(binary.BigEndian.Uint16(hdr[2:4]))
		payload := make([]byte, size)
		if _, err := io.ReadFull(client, payload); err != nil {
			t.Fatalf("after %d frames: %v", got, err)
		}
		if writer < 0 || writer >= writers {
			t.Fatalf("frame %d: header %x is no writer's: frames were cut or interleaved", got, hdr)
		}
		want := testFrame(writer, next[writer], size)
		if !bytes.Equal(append(hdr, payload...), want) {
			t.Fatalf("frame %d from writer %d: not frame %d whole (out of order, cut or interleaved)", got, writer, next[writer])
		}
		next[writer]++
	}
	wg.Wait()
}

// Close lets frames already queued reach the client before the connection
// closes, and later writes fail.
func TestFrameWriterCloseDeliversQueuedFrames(t *testing.T) {
	server, client := tcpPair(t)
	w := newFrameWriter(server)
	var want []byte
	for seq := range 100 {
		f := testFrame(1, seq, 400)
		want = append(want, f...)
		if _, err := w.write(f); err != nil {
			t.Fatal(err)
		}
	}
	w.close()
	server.Close()
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(client)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("client got %d bytes, want the %d bytes queued before close", len(got), len(want))
	}
	if _, err := w.write(testFrame(1, 100, 4)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after close: %v, want net.ErrClosed", err)
	}
}

// A client that stops reading makes writers wait instead of growing the
// queue without bound, and closing the connection (relay shutdown) returns
// within a second or so and releases the waiting writer.
func TestFrameWriterBoundsQueueForClientThatDoesNotRead(t *testing.T) {
	server, _ := unixPair(t) // the client end never reads
	// Fill the socket's buffer first, so that the flusher's first write
	// blocks for good. A write cut short by its deadline has met a full
	// buffer, which no one will empty: the deadline only hands control
	// back, its length does not matter.
	chunk := make([]byte, 64<<10)
	for {
		server.SetWriteDeadline(time.Now().Add(10 * time.Millisecond))
		if _, err := server.Write(chunk); errors.Is(err, os.ErrDeadlineExceeded) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	server.SetWriteDeadline(time.Time{})
	w := newFrameWriter(server)
	const total = 256 << 20
	f := testFrame(1, 0, 1000)
	// The first frame starts the flusher, whose write then blocks for good.
	if _, err := w.write(f); err != nil {
		t.Fatal(err)
	}
	var accepted atomic.Int64
	accepted.Store(int64(len(f)))
	testutil.WaitFor(t, 5*time.Second, "the flusher to take the first frame", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.flushing && len(w.queued) == 0
	})
	done := make(chan error, 1)
	go func() {
		for accepted.Load() < total {
			if _, err := w.write(f); err != nil {
				done <- err
				return
			}
			accepted.Add(int64(len(f)))
		}
		done <- nil
	}()
	// The queue fills and stays full: the writer waits for room that a
	// client reading nothing never makes.
	testutil.WaitFor(t, 5*time.Second, "a full write queue", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		if len(w.queued) > maxQueuedWrite {
			t.Fatalf("%d bytes queued for a client that reads nothing, more than the bound of %d", len(w.queued), maxQueuedWrite)
		}
		return len(w.queued)+len(f) > maxQueuedWrite
	})
	select {
	case err := <-done:
		t.Fatalf("the writer stopped (%v) with the queue full instead of waiting", err)
	default:
	}

	begin := time.Now()
	w.close()
	if took := time.Since(begin); took > 3*time.Second {
		t.Fatalf("close took %v with a client that reads nothing", took)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("the waiting writer finished without an error")
		}
		if n, bound := accepted.Load(), int64(len(f)+maxQueuedWrite); n > bound {
			t.Fatalf("%d bytes accepted for a client that reads nothing, more than the frame in flight and a full queue (%d)", n, bound)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the waiting writer was not released by close")
	}
}

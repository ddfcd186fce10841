package turnserver

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// tcpPair returns both ends of a TCP connection on 127.0.0.1.
func tcpPair(t *testing.T) (server, client net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", l.Addr().String())
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
	server, _ := tcpPair(t) // the client end never reads
	w := newFrameWriter(server)
	const total = 256 << 20
	var accepted atomic.Int64
	done := make(chan error, 1)
	go func() {
		f := testFrame(1, 0, 1000)
		for accepted.Load() < total {
			if _, err := w.write(f); err != nil {
				done <- err
				return
			}
			accepted.Add(int64(len(f)))
		}
		done <- nil
	}()

	// Loopback socket buffers take a few MiB; the queue adds 64 KiB.
	time.Sleep(time.Second)
	before := accepted.Load()
	time.Sleep(500 * time.Millisecond)
	if after := accepted.Load(); after != before || after >= total {
		t.Fatalf("writes kept being accepted (%d then %d bytes) for a client that reads nothing", before, after)
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
	case <-time.After(3 * time.Second):
		t.Fatal("the waiting writer was not released by close")
	}
}

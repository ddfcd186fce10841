package link

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/testutil"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln := testutil.ListenTCP(t)
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if server, err = ln.Accept(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// What splice wrote to the local service and then closed arrives whole:
// the service reads every byte, then EOF, whether the session half-closed
// or closed.
func TestPipeDeliversWhatWasWrittenBeforeClose(t *testing.T) {
	for _, half := range []bool{true, false} {
		c, svc := tcpPair(t)
		pc := newPipedConn(c)
		want := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB, many batches
		for b := want; len(b) > 0; b = b[min(len(b), 16<<10):] {
			if _, err := pc.Write(b[:min(len(b), 16<<10)]); err != nil {
				t.Fatal(err)
			}
		}
		if half {
			pc.CloseWrite()
		} else {
			pc.Close()
		}
		svc.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(svc)
		if err != nil {
			t.Fatalf("half-close %v: the service read %d bytes, then %v", half, len(got), err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("half-close %v: the service read %d bytes, not the %d written", half, len(got), len(want))
		}
		if _, err := pc.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
			t.Errorf("half-close %v: a write after close: %v, want net.ErrClosed", half, err)
		}
		if half { // the read side stays open: the service can still answer
			svc.Write([]byte("ok"))
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(pc, make([]byte, 2)); err != nil {
				t.Errorf("read after a half-close: %v", err)
			}
		}
	}
}

// A Write waiting for a service that does not read fails at its deadline.
func TestPipeWriteHonoursDeadline(t *testing.T) {
	c, _ := tcpPair(t)
	pc := newPipedConn(c)
	pc.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
	buf := make([]byte, 16<<10)
	start := time.Now()
	var err error
	for written := 0; err == nil && written < 1<<30; written += len(buf) {
		_, err = pc.Write(buf)
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("writes to a service that does not read ended with %v, want the deadline", err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("the deadline took %v to end the writes", el)
	}
}

// splice returns only once what the session sent has reached the local
// service, since its callers close the local connection then: here the
// service half-closes at once, so that only the session's direction keeps
// splice going.
func TestSpliceReturnsOnceTheServiceHasEverything(t *testing.T) {
	local, svc := tcpPair(t)
	got := make(chan int, 1)
	go func() {
		svc.(*net.TCPConn).CloseWrite()
		n, _ := io.Copy(io.Discard, svc)
		got <- int(n)
	}()
	session, peer := tcpPair(t) // as the end-to-end TLS, it half-closes
	const n = 4 << 20
	go func() {
		peer.Write(make([]byte, n))
		peer.(*net.TCPConn).CloseWrite()
	}()
	splice(local, session)
	local.Close()
	select {
	case m := <-got:
		if m != n {
			t.Fatalf("the service received %d of the %d bytes the session sent", m, n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the service never saw the end of the session")
	}
}

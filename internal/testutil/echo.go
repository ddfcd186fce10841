package testutil

import (
	"bytes"
	"io"
	mrand "math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"
)

// EchoTransfer writes n pseudo-random bytes on c and reads them back from
// the echo service behind it at the same time, calling cut once a quarter
// has come back: what was written after it is in flight, or waits for its
// acknowledgment, when cut kills the path. Every byte must come back in
// order, and neither the writes nor the reads may fail; the reads give up
// after limit.
func EchoTransfer(t testing.TB, c net.Conn, n int64, limit time.Duration, cut func()) {
	t.Helper()
	seed := [32]byte{'e', 'c', 'h', 'o'}
	werr := make(chan error, 1)
	go func() {
		_, err := io.Copy(c, io.LimitReader(mrand.NewChaCha8(seed), n))
		werr <- err
	}()
	want := mrand.NewChaCha8(seed)
	got, exp := make([]byte, 64<<10), make([]byte, 64<<10)
	c.SetReadDeadline(time.Now().Add(limit))
	var read int64
	var once sync.Once
	for read < n {
		k, err := c.Read(got[:min(int64(len(got)), n-read)])
		want.Read(exp[:k])
		if !bytes.Equal(got[:k], exp[:k]) {
			t.Fatalf("the echo differs from what was sent within the %d bytes after byte %d", k, read)
		}
		read += int64(k)
		if err != nil {
			t.Fatalf("read the echo after %d of %d bytes: %v", read, n, err)
		}
		if read >= n/4 {
			once.Do(cut)
		}
	}
	if err := <-werr; err != nil {
		t.Fatalf("write: %v", err)
	}
}

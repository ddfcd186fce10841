package link

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/quic-go/quic-go"
)

// sessionPair returns a session and the stream of its peer, over a QUIC
// connection on loopback: the peer's end is raw, so a test writes what it
// likes on it.
func sessionPair(t *testing.T) (*session, *streamConn) {
	t.Helper()
	key, _, err := LoadOrCreateKey(filepath.Join(t.TempDir(), KeyFileName))
	if err != nil {
		t.Fatal(err)
	}
	cert, err := SelfSignedCert(key, "nas1")
	if err != nil {
		t.Fatal(err)
	}
	client, far := benchDirectConn(t, cert, "link")
	t.Cleanup(func() { client.CloseWithError(0, ""); far.CloseWithError(0, "") })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := client.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	raw := newStreamConn(s, client)
	if _, err := raw.Write([]byte{RecordAck, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0}); err != nil { // an Ack of nothing, so that far sees the stream
		t.Fatal(err)
	}
	fs, err := far.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var id [SessionIDLen]byte
	rand.Read(id[:])
	ses := newSession(id, 9, DefaultResumeWindow, newStreamConn(fs, far), Path{}, benchSpawn, nil, nil)
	t.Cleanup(func() { ses.fail(errors.New("test over")) })
	return ses, raw
}

// A session that writes small records waits once they hold its bound in
// memory, not once they carry its bound in bytes (small records each in a
// 16 KiB buffer held 800 times their bytes), yet keeps a good part of its
// window in flight.
func TestSmallRecordsHoldAboutWhatTheyCarry(t *testing.T) {
	w, raw := sessionPair(t)
	go io.Copy(io.Discard, raw) // reads, never acknowledges: w keeps all it writes
	rec := make([]byte, 23)     // a TLS record of one byte
	w.SetWriteDeadline(time.Now().Add(time.Second))
	n := 0
	for {
		k, err := w.Write(rec)
		n += k
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	w.mu.Lock()
	held := w.outHeld
	w.mu.Unlock()
	if held > sessionSendBound {
		t.Errorf("%d bytes in small records hold %d bytes, more than the bound of %d", n, held, sessionSendBound)
	}
	if n < sessionSendBound/8 {
		t.Errorf("the writer waited after %d bytes in small records; they hold %d bytes", n, held)
	}
	t.Logf("%d KiB in %d-byte records hold %d KiB when the writer waits", n>>10, len(rec), held>>10)
}

// The reader of a session holds small records in about what they carry,
// not in a buffer each, while its application does not read.
func TestUnreadSmallRecordsHoldAboutWhatTheyCarry(t *testing.T) {
	r, raw := sessionPair(t)
	const count = 20000
	var buf []byte
	for range count {
		buf = append(buf, RecordData, 0, 23)
		buf = append(buf, make([]byte, 23)...)
	}
	if _, err := raw.Write(buf); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, "the records to arrive", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.recv == count*23
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	if limit := int64(2*r.inBytes + 2*(FrameHeaderLen+recordChunk+bufOverhead)); r.inHeld > limit {
		t.Errorf("%d bytes unread in small records hold %d bytes, more than %d", r.inBytes, r.inHeld, limit)
	}
	t.Logf("%d KiB unread in 23-byte records hold %d KiB", r.inBytes>>10, r.inHeld>>10)
}

// A peer that sends more than its window past the last acknowledgment
// breaks the session's flow control: the session ends, rather than keep
// whatever the peer sends.
func TestPeerSendingPastItsWindowIsCutOff(t *testing.T) {
	r, raw := sessionPair(t)
	data := make([]byte, FrameHeaderLen+16<<10)
	data[0], data[1], data[2] = RecordData, 0x40, 0
	raw.SetWriteDeadline(time.Now().Add(10 * time.Second))
	var err error
	for sent := 0; err == nil && sent <= 2*sessionSendBound; sent += 16 << 10 {
		_, err = raw.Write(data)
	}
	var se *quic.StreamError
	if !errors.As(err, &se) || se.ErrorCode != StreamAborted {
		t.Errorf("writing twice the window without an acknowledgment: %v, want the stream reset", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !errors.Is(r.err, ErrFrame) || r.inBytes > sessionSendBound {
		t.Errorf("the session ended with %v holding %d bytes unread; want ErrFrame, within %d", r.err, r.inBytes, sessionSendBound)
	}
}

package link

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
)

func TestFramesRoundTrip(t *testing.T) {
	for _, f := range []Frame{
		Hello{Device: "nas1", Token: "tok"},
		Hello{Device: strings.Repeat("a", MaxDeviceLen), Token: strings.Repeat("t", MaxSecretLen)},
		Connect{Device: "nas1", Port: 443},
		Connect{Device: "nas1", Port: 65535, AccessCode: "code"},
		Open{Port: 22},
		Result{Status: StatusOK},
		Result{Status: StatusOffline, Message: "device nas1 is not connected"},
	} {
		b, err := AppendFrame(nil, f)
		if err != nil {
			t.Fatalf("%#v: %v", f, err)
		}
		// The session's bytes follow the frame: ReadFrame must stop at its end.
		r := bytes.NewReader(append(b, "payload"...))
		got, err := ReadFrame(r, 0)
		if err != nil || !reflect.DeepEqual(got, f) {
			t.Errorf("ReadFrame(%#v) = %#v, %v", f, got, err)
		}
		if rest, _ := io.ReadAll(r); string(rest) != "payload" {
			t.Errorf("%#v: ReadFrame consumed the payload, left %q", f, rest)
		}
		if got, err := ParseFrame(b); err != nil || !reflect.DeepEqual(got, f) {
			t.Errorf("ParseFrame(%#v) = %#v, %v", f, got, err)
		}
	}
}

func TestMalformedFramesAreRefused(t *testing.T) {
	good, _ := AppendFrame(nil, Connect{Device: "nas1", Port: 443})
	for _, tc := range []struct {
		name string
		b    []byte
		max  int
	}{
		{"unknown type", []byte{0x7f, 0, 0}, 0},
		{"oversized length", []byte{FrameConnect, 0xff, 0xff}, 0},
		{"over the reader's limit", good, 4},
		{"wrong version", []byte{FrameOpen, 0, 3, 9, 0, 22}, 0},
		{"trailing bytes", []byte{FrameOpen, 0, 4, Version, 0, 22, 0}, 0},
		{"string past the end", []byte{FrameResult, 0, 3, 0, 9, 'x'}, 0},
		{"device too long", append([]byte{FrameHello, 0, 66, Version, 64}, make([]byte, 65)...), 0},
	} {
		if _, err := ReadFrame(bytes.NewReader(tc.b), tc.max); !errors.Is(err, ErrFrame) {
			t.Errorf("%s: err = %v, want ErrFrame", tc.name, err)
		}
	}
	if _, err := AppendFrame(nil, Hello{Device: strings.Repeat("a", 64)}); !errors.Is(err, ErrFrame) {
		t.Errorf("encoding a 64-byte device name: %v, want ErrFrame", err)
	}
	if _, err := ReadFrame(bytes.NewReader(good[:5]), 0); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated frame: %v, want io.ErrUnexpectedEOF", err)
	}
}

// FuzzReadFrame checks that any input either fails cleanly or decodes to a
// frame that re-encodes to exactly the bytes read, and that the reader never
// reads past the frame.
func FuzzReadFrame(f *testing.F) {
	for _, fr := range []Frame{Hello{"nas1", "tok"}, Connect{"nas1", 443, "code"}, Open{22}, Result{StatusOffline, "offline"}} {
		b, _ := AppendFrame(nil, fr)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		fr, err := ReadFrame(r, 0)
		if err != nil {
			return
		}
		used := len(data) - r.Len()
		b, err := AppendFrame(nil, fr)
		if err != nil {
			t.Fatalf("decoded %#v does not encode: %v", fr, err)
		}
		if !bytes.Equal(b, data[:used]) {
			t.Fatalf("read %x, re-encoded %x", data[:used], b)
		}
		if fr2, err := ParseFrame(data[:used]); err != nil || !reflect.DeepEqual(fr, fr2) {
			t.Fatalf("ParseFrame disagrees with ReadFrame: %#v %v", fr2, err)
		}
	})
}

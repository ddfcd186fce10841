package link

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"reflect"
	"slices"
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
		Info{},
		RelayInfo{},
		RelayInfo{Direct: true, STUN: netip.MustParseAddrPort("0.0.0.0:3478")},
		RelayInfo{STUN: netip.MustParseAddrPort("203.0.113.53:3478")},
		RelayInfo{Direct: true, STUN: netip.MustParseAddrPort("[2001:db8::53]:3478")},
		Direct{Device: "nas1", Exchange: testID, Key: testKey},
		Direct{Device: strings.Repeat("a", MaxDeviceLen), AccessCode: strings.Repeat("c", MaxSecretLen), Exchange: testID, Key: testKey,
			Candidates: slices.Repeat([]Candidate{{Kind: CandidateHost, Addr: netip.MustParseAddrPort("[2001:db8::1]:40000")}}, MaxCandidates)},
		Punch{Exchange: testID, Key: testKey, Candidates: testCandidates},
		Candidates{},
		Candidates{Candidates: testCandidates},
		DirectHello{Exchange: testID, Proof: DirectProof(testID, &testKey)},
		Report{Device: "nas1", Outcome: PunchDirect, Local: CandidateHost, Remote: CandidateSrflx, Millis: 1234},
		Report{Device: "nas1", Outcome: PunchNoAnswer},
		MeshHello{Node: "n1", Key: strings.Repeat("k", MaxSecretLen)},
		Forward{Device: "nas1", Port: 443, AccessCode: "code", Client: netip.MustParseAddrPort("198.51.100.7:40000")},
		Forward{Device: "nas1", Port: 443, Client: netip.MustParseAddrPort("[2001:db8::7]:40000")},
		Revoke{Exchanges: [][ExchangeIDLen]byte{testID}},
		Revoke{Exchanges: slices.Repeat([][ExchangeIDLen]byte{testID}, MaxRevoke)},
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

var (
	testID         = [ExchangeIDLen]byte{1, 2, 3, 4, 5, 6, 7, 8}
	testKey        = [KeyLen]byte{9, 9, 9}
	testCandidates = []Candidate{
		{Kind: CandidateHost, Addr: netip.MustParseAddrPort("192.168.1.10:40000")},
		{Kind: CandidateSrflx, Addr: netip.MustParseAddrPort("203.0.113.7:61000")},
	}
)

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
		{"unknown relay info flag", []byte{FrameRelayInfo, 0, 5, Version, 2, 0, 0, 0}, 0},
		{"unspecified STUN address", []byte{FrameRelayInfo, 0, 9, Version, 1, 4, 0, 0, 0, 0, 0x0d, 0x96}, 0},
		{"candidate family 5", []byte{FrameCandidates, 0, 6, Version, 1, 1, 5, 0, 0}, 0},
		{"too many candidates", []byte{FrameCandidates, 0, 2, Version, MaxCandidates + 1}, 0},
		{"candidate cut short", []byte{FrameCandidates, 0, 6, Version, 1, 1, 4, 10, 0}, 0},
		{"hello cut short", []byte{FrameDirectHello, 0, 9, Version, 1, 2, 3, 4, 5, 6, 7, 8}, 0},
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
	for _, fr := range []Frame{Hello{"nas1", "tok"}, Connect{"nas1", 443, "code"}, Open{22}, Result{StatusOffline, "offline"},
		Info{}, RelayInfo{Direct: true, STUN: netip.MustParseAddrPort("0.0.0.0:3478")},
		Direct{Device: "nas1", AccessCode: "code", Exchange: testID, Key: testKey, Candidates: testCandidates},
		Punch{Exchange: testID, Key: testKey, Candidates: testCandidates}, Candidates{Candidates: testCandidates},
		DirectHello{Exchange: testID}, Report{Device: "nas1", Outcome: PunchDirect, Local: 1, Remote: 2, Millis: 99},
		MeshHello{Node: "n1", Key: "key"}, Forward{Device: "nas1", Port: 443, Client: netip.MustParseAddrPort("[2001:db8::7]:40000")},
		Revoke{Exchanges: [][ExchangeIDLen]byte{testID, {1, 2, 3, 4, 5, 6, 7, 8}}},
		Session{ID: testSession}, Resume{ID: testSession, Received: 1 << 33}, Resumed{Received: 17}} {
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

func TestProbesRoundTripAndAuthenticate(t *testing.T) {
	for _, p := range []Probe{
		{Type: ProbePing, Sender: ProbeFromClient, Exchange: testID, Tx: [12]byte{1}},
		{Type: ProbePong, Sender: ProbeFromAgent, Exchange: testID, Tx: [12]byte{2}, Observed: netip.MustParseAddrPort("203.0.113.7:61000")},
		{Type: ProbePong, Sender: ProbeFromClient, Exchange: testID, Tx: [12]byte{3}, Observed: netip.MustParseAddrPort("[2001:db8::7]:61000")},
	} {
		b := AppendProbe(nil, p, &testKey)
		if len(b) != ProbeLen || b[0]&0xc0 != 0 {
			t.Fatalf("%+v: %d bytes starting %#x; want %d, the top two bits clear", p, len(b), b[0], ProbeLen)
		}
		got, err := ParseProbe(b)
		if err != nil || got != p {
			t.Errorf("ParseProbe(%+v) = %+v, %v", p, got, err)
		}
		if !VerifyProbe(b, &testKey) {
			t.Errorf("%+v: its MAC does not verify", p)
		}
		other := testKey
		other[0]++
		if VerifyProbe(b, &other) {
			t.Errorf("%+v verifies with another key", p)
		}
		b[20] ^= 1
		if VerifyProbe(b, &testKey) {
			t.Errorf("%+v verifies after a bit flip", p)
		}
	}
	ping := AppendProbe(nil, Probe{Type: ProbePing, Sender: ProbeFromClient, Observed: netip.MustParseAddrPort("1.2.3.4:5")}, &testKey)
	if _, err := ParseProbe(ping); !errors.Is(err, ErrFrame) {
		t.Errorf("a ping with an observed address: %v, want ErrFrame", err)
	}
}

// FuzzProbe checks that any datagram either fails cleanly or decodes to a
// probe that re-encodes to the same bytes (the MAC aside).
func FuzzProbe(f *testing.F) {
	f.Add(AppendProbe(nil, Probe{Type: ProbePing, Sender: ProbeFromClient, Exchange: testID}, &testKey))
	f.Add(AppendProbe(nil, Probe{Type: ProbePong, Sender: ProbeFromAgent, Exchange: testID, Observed: netip.MustParseAddrPort("[2001:db8::7]:1")}, &testKey))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParseProbe(data)
		if err != nil {
			return
		}
		b := AppendProbe(nil, p, &testKey)
		if !bytes.Equal(b[:probeMACOff], data[:probeMACOff]) {
			t.Fatalf("read %x, re-encoded %x", data[:probeMACOff], b[:probeMACOff])
		}
	})
}

var testSession = [SessionIDLen]byte{0xa1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0xff}

// FuzzParseRecord checks that any input either fails cleanly or decodes to
// a record of a resumable session that re-encodes to exactly those bytes.
func FuzzParseRecord(f *testing.F) {
	for _, r := range []Record{{Type: RecordData, Data: []byte("\x17\x03\x03 ciphertext")}, {Type: RecordAck, Count: 1 << 40},
		{Type: RecordEnd, Count: 99}, {Type: RecordEnd, Count: 7, Closed: true}} {
		b, _ := AppendRecord(nil, r)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := ParseRecord(data)
		if err != nil {
			if !errors.Is(err, ErrFrame) {
				t.Fatalf("error %v does not wrap ErrFrame", err)
			}
			return
		}
		b, err := AppendRecord(nil, r)
		if err != nil {
			t.Fatalf("decoded %+v does not encode: %v", r, err)
		}
		if !bytes.Equal(b, data) {
			t.Fatalf("read %x, re-encoded %x", data, b)
		}
	})
}

func TestRecordsRoundTripAndRefuseMalformed(t *testing.T) {
	for _, r := range []Record{{Type: RecordData, Data: bytes.Repeat([]byte{7}, MaxRecordData)}, {Type: RecordAck, Count: 3},
		{Type: RecordEnd, Count: 1<<64 - 2, Closed: true}} {
		b, err := AppendRecord(nil, r)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := ParseRecord(b); err != nil || !reflect.DeepEqual(got, r) {
			t.Errorf("ParseRecord(AppendRecord(%v...)) = %v..., %v", r.Type, got.Type, err)
		}
	}
	for name, b := range map[string][]byte{
		"empty data":   {RecordData, 0, 0},
		"short ack":    {RecordAck, 0, 7, 0, 0, 0, 0, 0, 0, 0},
		"end flags":    {RecordEnd, 0, 9, 0, 0, 0, 0, 0, 0, 0, 1, 2},
		"unknown type": {0x15, 0, 0},
		"a frame":      {FrameOpen, 0, 3, 1, 0, 22},
		"truncated":    {RecordData, 0, 5, 1},
	} {
		if _, err := ParseRecord(b); !errors.Is(err, ErrFrame) {
			t.Errorf("%s: %v, want ErrFrame", name, err)
		}
	}
	if _, err := AppendRecord(nil, Record{Type: RecordData, Data: make([]byte, MaxRecordData+1)}); !errors.Is(err, ErrFrame) {
		t.Errorf("an oversized data record encodes: %v", err)
	}
}

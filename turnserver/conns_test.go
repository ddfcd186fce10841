package turnserver

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/connlimit"
	"github.com/nasreach/nasreach/internal/testutil"
)

// TCP and TLS have caps of their own, shared by the SO_REUSEPORT copies of
// each listener (the relay runs two here).
func TestTCPAndTLSConnectionsAreCappedPerSourceAndInTotal(t *testing.T) {
	tt := startTURN(t, func(c *Config) {
		c.TLS, c.TLSAddr = selfSigned(t), "127.0.0.1:0"
		c.TCPConns = connlimit.Config{Max: 4, MaxPerSource: 2}
		c.TLSConns = connlimit.Config{Max: 3, MaxPerSource: 2}
	})
	for _, tc := range []struct {
		name  string
		addr  string
		stats func() connlimit.Stats
		total int
	}{
		{"tcp", tt.Addr().String(), tt.TCPConnStats, 4},
		{"tls", tt.TLSAddr().String(), tt.TLSConnStats, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.CheckSourceCap(t, tc.addr, 2, func() int { return tc.stats().Live })
			for range tc.total - 3 { // 3 held: up to the total from another source
				testutil.DialFrom(t, "127.0.0.4", tc.addr)
			}
			testutil.WaitFor(t, 5*time.Second, "the total held", func() bool { return tc.stats().Live == tc.total })
			if !testutil.Refused(t, "127.0.0.5", tc.addr, 3*time.Second) {
				t.Fatal("a connection over the total cap was held")
			}
			if st := tc.stats(); st.RefusedSource != 1 || st.RefusedTotal != 1 {
				t.Fatalf("stats %+v, want 1 refused per source and 1 over the total", st)
			}
		})
	}
}

// A frame must arrive whole within the frame timeout of its first byte,
// and the first one (with the TLS handshake) within it of the connection's
// start, however slowly its bytes trickle in: a slow client cannot hold a
// connection by sending a byte now and then.
func TestSlowTCPClientIsCutWithinTheFrameTimeout(t *testing.T) {
	tt := startTURN(t, func(c *Config) {
		c.TCPIdleTimeout = time.Second
		c.TLS, c.TLSAddr = selfSigned(t), "127.0.0.1:0"
	})
	// A Binding request header announcing 1000 bytes of attributes.
	req := make([]byte, 20+1000)
	binary.BigEndian.PutUint16(req[0:], 0x0001)
	binary.BigEndian.PutUint16(req[2:], 1000)
	binary.BigEndian.PutUint32(req[4:], magicCookie)
	// A TLS handshake record header announcing a 512-byte ClientHello.
	hello := append([]byte{0x16, 0x03, 0x01, 0x02, 0x00}, make([]byte, 512)...)
	for _, tc := range []struct {
		addr string
		msg  []byte
	}{{tt.Addr().String(), req}, {tt.TLSAddr().String(), hello}} {
		took := testutil.CheckSlowClientIsCut(t, tc.addr, tc.msg, 200*time.Millisecond, 4*time.Second)
		if took < 800*time.Millisecond {
			t.Errorf("%s: cut after %v, before the frame timeout of 1s: for another reason", tc.addr, took)
		}
	}
}

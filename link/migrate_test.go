package link_test

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/link"
	"github.com/nasreach/nasreach/linkserver"
)

// A session that started on the relay (a device's first, before any direct
// path) moves to the direct path once it is up, in the middle of a
// transfer: the application sees no error, every byte arrives, the relay
// forwards none of what is sent after the move, and its connection log
// records the relayed stream as moved, not aborted.
func TestRelayedSessionMovesToTheDirectPath(t *testing.T) {
	var tapped atomic.Int64
	e := newEnv(t, func(c *linkserver.Config) {
		c.Tap = func(_ string, _ bool, p []byte) { tapped.Add(int64(len(p))) }
	})
	tok := e.addDevice("nas1")
	e.agent("nas1", tok, map[uint16]string{9: hashServer(t)})
	d := e.dialer()
	c, err := d.Dial(ctx10(t), "nas1", 9)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if link.PathOf(c).Direct {
		t.Fatal("a device's first session went direct; it must start on the relay")
	}
	const n = 32 << 20
	var atMove int64
	hashedTransfer(t, c, n, func() {
		// A quarter is sent, through the relay; the rest follows the move.
		testutil.WaitFor(t, 10*time.Second, "the relayed session on the direct path", func() bool { return link.PathOf(c).Direct })
		atMove = tapped.Load()
	})
	if after := tapped.Load() - atMove; after > 4<<20 {
		t.Errorf("the relay forwarded %d MiB after the session moved to the direct path", after>>20)
	}
	if p := link.PathOf(c); !p.Direct || p.Local != link.CandidateHost {
		t.Errorf("the session ended on path %v, want direct host>host", p)
	}
	testutil.WaitFor(t, 5*time.Second, "the relayed stream's record", func() bool { return len(e.events.sessions()) == 1 })
	if ev := e.events.sessions()[0]; ev.Outcome != "ok" || !strings.Contains(ev.Detail, "moved to a direct path") {
		t.Errorf("relay logged the moved session as %q (%q), want ok, moved to a direct path", ev.Outcome, ev.Detail)
	}
}

// A session whose direct path died resumes through the relay, and moves
// back to a direct path once punching works again, without waiting for
// the application to open another session.
func TestSessionReturnsToTheDirectPathAfterALoss(t *testing.T) {
	e := newEnv(t)
	tok := e.addDevice("nas1")
	a := e.agent("nas1", tok, map[uint16]string{9: hashServer(t), 22: echoServer(t)})
	d := e.dialer(func(c *link.DialerConfig) { c.DirectRetry = 200 * time.Millisecond })
	goDirect(t, d, "nas1", 22).Close()
	c, err := d.Dial(ctx10(t), "nas1", 9)
	if err != nil || !link.PathOf(c).Direct {
		t.Fatalf("a direct session: %v (%v)", err, link.PathOf(c))
	}
	defer c.Close()
	var relayed, direct atomic.Bool
	hashedTransfer(t, c, 32<<20, func() {
		link.CloseAgentDirect(a)
		testutil.WaitFor(t, 10*time.Second, "the session on the relay", func() bool {
			p := link.PathOf(c)
			relayed.Store(relayed.Load() || !p.Direct)
			return !p.Direct
		})
		testutil.WaitFor(t, 10*time.Second, "the session back on a direct path", func() bool { return link.PathOf(c).Direct })
		direct.Store(true)
	})
	if !relayed.Load() || !direct.Load() {
		t.Errorf("path relayed=%v then direct=%v, want both", relayed.Load(), direct.Load())
	}
}

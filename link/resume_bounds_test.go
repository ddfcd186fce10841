package link_test

import (
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/link"
	"github.com/nasreach/nasreach/linkserver"
)

// countingListener counts the connections its accept loop takes, in that
// loop: once a later connection is served, every earlier one is counted.
type countingListener struct {
	net.Listener
	n atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// countingEcho is an echo service that counts the connections it accepts.
func countingEcho(t *testing.T) (string, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := &countingListener{Listener: ln}
	testutil.Serve(t, cl, func(c net.Conn) {
		io.Copy(c, c)
		c.(*net.TCPConn).CloseWrite()
	})
	return ln.Addr().String(), &cl.n
}

// downService is an address where nothing listens.
func downService(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// echoWithin is echoByte with a deadline long enough for a resume.
func echoWithin(c net.Conn, d time.Duration) error {
	c.SetDeadline(time.Now().Add(d))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte("x")); err != nil {
		return err
	}
	_, err := io.ReadFull(c, make([]byte, 1))
	return err
}

// A resumed session goes on with the connection to the service it had:
// the service sees one connection per session, before and after the
// session is resumed through a restarted relay.
func TestResumeDialsNoExtraConnectionToTheService(t *testing.T) {
	e := newEnv(t)
	tok := e.addDevice("nas1")
	svc, accepted := countingEcho(t)
	e.agent("nas1", tok, map[uint16]string{22: svc})
	d := e.dialer(relayOnly)
	c, err := d.Dial(ctx10(t), "nas1", 22)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := echoByte(c); err != nil {
		t.Fatal(err)
	}
	if n := accepted.Load(); n != 1 {
		t.Fatalf("the service accepted %d connections for one session", n)
	}
	if err := e.relay.Shutdown(ctx10(t)); err != nil {
		t.Fatal(err)
	}
	e.start()
	if err := echoWithin(c, 20*time.Second); err != nil {
		t.Fatalf("the session after the relay restarted: %v", err)
	}
	// A second session: once it echoes, the service has accepted every
	// connection dialed before it.
	c2, err := d.Dial(ctx10(t), "nas1", 22)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if err := echoByte(c2); err != nil {
		t.Fatal(err)
	}
	if n := accepted.Load(); n != 2 {
		t.Errorf("the service accepted %d connections for two sessions, one of them resumed; want 2", n)
	}
}

// A service that does not answer is reported as ErrDialFailed, with the
// agent's message, whichever way the session goes; the direct path stays.
// A client without resumable sessions, which has its OK before the agent
// dials, sees its handshake fail instead.
func TestServiceDownIsReportedAsDialFailed(t *testing.T) {
	var tapped atomic.Int64
	e := newEnv(t, func(c *linkserver.Config) {
		c.Tap = func(_ string, _ bool, p []byte) { tapped.Add(int64(len(p))) }
	})
	tok := e.addDevice("nas1")
	e.agent("nas1", tok, map[uint16]string{22: echoServer(t), 23: downService(t)})
	dialDown := func(t *testing.T, d *link.Dialer) error {
		t.Helper()
		c, err := d.Dial(ctx10(t), "nas1", 23)
		if c != nil {
			c.Close()
			t.Fatal("a session to a service that does not answer was opened")
		}
		return err
	}
	checkRefusal := func(t *testing.T, err error) {
		t.Helper()
		var re *link.RefusedError
		if !errors.Is(err, link.ErrDialFailed) || !errors.As(err, &re) || re.Status != link.StatusDialFailed {
			t.Fatalf("Dial to a service that does not answer: %v, want ErrDialFailed", err)
		}
		if want := "nas1:23: link refused: device nas1 cannot reach the service behind port 23"; err.Error() != want {
			t.Errorf("error %q, want %q", err, want)
		}
	}

	t.Run("relayed", func(t *testing.T) {
		checkRefusal(t, dialDown(t, e.dialer(relayOnly)))
	})
	t.Run("direct", func(t *testing.T) {
		d := e.dialer()
		goDirect(t, d, "nas1", 22)
		before := tapped.Load()
		checkRefusal(t, dialDown(t, d))
		if now := tapped.Load(); now != before {
			t.Errorf("the relay carried %d bytes of a session that had a direct path", now-before)
		}
		if !d.PathTo("nas1").Direct {
			t.Error("the service's refusal gave up the direct path")
		}
	})
	t.Run("without resumable sessions", func(t *testing.T) {
		d := e.dialer(relayOnly, func(c *link.DialerConfig) { c.DisableResume = true })
		err := dialDown(t, d)
		if err == nil || !strings.Contains(err.Error(), "end-to-end TLS") {
			t.Errorf("Dial to a service that does not answer, without resumable sessions: %v, want the handshake failed", err)
		}
		echo(t, d, "nas1", 22) // and the working service still works
	})
	t.Run("to an agent without resumable sessions", func(t *testing.T) {
		otok := e.addDevice("old")
		cfg := e.agentConfig("old", otok, t.TempDir(), map[uint16]string{22: echoServer(t), 23: downService(t)})
		cfg.DisableResume = true
		e.startAgent(cfg)
		d := e.dialer(relayOnly)
		c, err := d.Dial(ctx10(t), "old", 23)
		if c != nil {
			c.Close()
		}
		if err == nil || !strings.Contains(err.Error(), "end-to-end TLS") {
			t.Errorf("Dial to a service that does not answer, behind an agent without resumable sessions: %v, want the handshake failed", err)
		}
		echo(t, d, "old", 22)
	})
}

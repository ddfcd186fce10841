package daemon_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nasreach/nasreach/daemon"
	"github.com/nasreach/nasreach/daemon/daemontest"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/link"
	"github.com/quic-go/quic-go"
)

// directSession waits until d's sessions to device go direct and returns one
// that echoes.
func directSession(t *testing.T, d *link.Dialer, device string) io.ReadWriteCloser {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.Dial(ctx, device, 22) // through the relay; punching starts
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	testutil.WaitFor(t, 10*time.Second, "a direct path", func() bool { return d.PathTo(device).Direct })
	if c, err = d.Dial(ctx, device, 22); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if !link.PathOf(c).Direct {
		t.Fatalf("session took path %v after the direct path came up", link.PathOf(c))
	}
	return c
}

// directDaemon starts a daemon with a Link relay (and mods), an echo device
// nas1 and a dialer, and returns a session on the direct path.
func directDaemon(t *testing.T, mods ...func(*daemon.Config)) (*daemontest.Daemon, *daemontest.LinkRelay, *link.Dialer, io.ReadWriteCloser) {
	t.Helper()
	td := daemontest.Start(t, append([]func(*daemon.Config){daemontest.WithLink}, mods...)...)
	tl := td.LinkRelay()
	d := tl.EchoDevice(t, "nas1", td.AddDevice("nas1"))
	return td, tl, d, directSession(t, d, "nas1")
}

// The daemon's relay tells agents and clients its STUN port, introduces
// them, and counts the direct path; it relays no byte of a direct session.
func TestDirectSessionsAreCountedButNotRelayed(t *testing.T) {
	td, tl, _, c := directDaemon(t, daemontest.WithTURN)

	testutil.WaitFor(t, 10*time.Second, "the relayed session to end", func() bool { return tl.Relay.Sessions() == 0 })
	var relayed float64
	var raw string
	testutil.WaitFor(t, 10*time.Second, "the punch in the metrics", func() bool {
		var fams map[string][]labelled
		fams, raw = scrape(t, td)
		relayed, _ = lookup(fams, "nasreach_relayed_bytes_total", map[string]string{"service": "link", "direction": "in"})
		v, _ := lookup(fams, "nasreach_link_paths_total", map[string]string{"path": "direct"})
		return v == 1
	})
	for _, want := range []string{`nasreach_link_punch_total{outcome="direct"} 1`, "nasreach_link_time_to_direct_seconds_count 1"} {
		if !strings.Contains(raw, want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	msg := strings.Repeat("through the direct path ", 40000)
	go io.WriteString(c, msg)
	if _, err := io.ReadFull(c, make([]byte, len(msg))); err != nil {
		t.Fatal(err)
	}
	c.Close()
	fams, _ := scrape(t, td)
	if now, _ := lookup(fams, "nasreach_relayed_bytes_total", map[string]string{"service": "link", "direction": "in"}); now != relayed {
		t.Errorf("relayed bytes went from %v to %v during a direct session", relayed, now)
	}
	if n := tl.Relay.Sessions(); n != 0 {
		t.Errorf("the relay holds %d sessions during a direct one", n)
	}
}

// The owner's switch ends direct sessions as it ends relayed ones.
func TestLinkSwitchedOffThroughTheAPIEndsDirectSessions(t *testing.T) {
	td, _, d, c := directDaemon(t)
	if code, body := td.Do(http.MethodPatch, "/v1/devices/nas1", td.Admin, map[string]bool{"link": false}); code != http.StatusOK {
		t.Fatalf("PATCH link=false: HTTP %d %s", code, body)
	}
	_, err := c.Read(make([]byte, 1))
	var ae *quic.ApplicationError
	if !errors.As(err, &ae) || ae.ErrorCode != link.CloseLinkDisabled {
		t.Errorf("direct session after link off: %v, want the connection closed with code %d", err, link.CloseLinkDisabled)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := d.Dial(ctx, "nas1", 22); !errors.Is(err, link.ErrLinkDisabled) {
		t.Errorf("new session: %v, want ErrLinkDisabled", err)
	}
}

// Reloading with link-direct off closes the direct paths; sessions go on
// through the relay.
func TestReloadTurningDirectOffMovesSessionsToTheRelay(t *testing.T) {
	td, _, d, _ := directDaemon(t)
	next := td.Daemon.Config()
	next.Link.Direct = false
	if applied, _ := td.Daemon.Reload(next); !strings.Contains(strings.Join(applied, " "), "link-direct") {
		t.Fatalf("reload applied %v, want link-direct", applied)
	}
	testutil.WaitFor(t, 10*time.Second, "the direct path to close", func() bool { return !d.PathTo("nas1").Direct })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.Dial(ctx, "nas1", 22)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if link.PathOf(c).Direct {
		t.Error("a session went direct after the operator turned direct paths off")
	}
}

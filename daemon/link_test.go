package daemon_test

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/nasreach/nasreach/daemon/daemontest"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/link"
	"github.com/quic-go/quic-go"
)

func TestLinkSwitchedOffThroughTheAPIEndsTheSession(t *testing.T) {
	td := daemontest.Start(t, daemontest.WithLink)
	tl := td.LinkRelay()
	tok := td.AddDevice("nas1")
	d := tl.EchoDevice(t, "nas1", tok)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.Dial(ctx, "nas1", 22)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if code, body := td.Do(http.MethodPatch, "/v1/devices/nas1", td.Admin, map[string]bool{"link": false}); code != http.StatusOK {
		t.Fatalf("PATCH link=false: HTTP %d %s", code, body)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = c.Read(make([]byte, 1))
	var se *quic.StreamError
	if !errors.As(err, &se) || se.ErrorCode != link.StreamLinkDisabled {
		t.Errorf("open session after link off: %v, want a reset with code %d", err, link.StreamLinkDisabled)
	}
	if _, err := d.Dial(ctx, "nas1", 22); !errors.Is(err, link.ErrLinkDisabled) {
		t.Errorf("new session: %v, want ErrLinkDisabled", err)
	}
	// Deleting the device makes it unknown.
	if code, body := td.Do(http.MethodDelete, "/v1/devices/nas1", td.Admin, nil); code/100 != 2 {
		t.Fatalf("DELETE: HTTP %d %s", code, body)
	}
	if _, err := d.Dial(ctx, "nas1", 22); !errors.Is(err, link.ErrUnknownDevice) {
		t.Errorf("after delete: %v, want ErrUnknownDevice", err)
	}
}

// An agent whose UDP is blocked reaches the daemon's relay over TCP: the
// connections are counted by transport, and the TCP listener's refusals
// under its own name.
func TestLinkAgentOverTCPIsCountedByTransport(t *testing.T) {
	td := daemontest.Start(t, daemontest.WithLinkTCP)
	tl := td.LinkRelay()
	tok := td.AddDevice("nas1")
	blackHole := testutil.ListenUDP(t) // reads nothing: QUIC gets no answer
	tl.StartAgent(t, link.AgentConfig{Server: blackHole.LocalAddr().String(), ServerTCP: td.LinkTCP,
		Device: "nas1", Token: tok, Expose: map[uint16]string{22: "127.0.0.1:9"}})
	fams, _ := scrape(t, td)
	if v := value(t, fams, "nasreach_link_connections", map[string]string{"transport": "tcp"}); v != 1 {
		t.Errorf("nasreach_link_connections{transport=tcp} = %v, want 1", v)
	}
	if v := value(t, fams, "nasreach_link_connections", map[string]string{"transport": "quic"}); v != 0 {
		t.Errorf("nasreach_link_connections{transport=quic} = %v, want 0", v)
	}
	value(t, fams, "nasreach_connections_refused_total", map[string]string{"listener": "link_tcp", "reason": "source"})
}

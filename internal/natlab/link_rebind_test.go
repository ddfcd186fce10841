package natlab_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/nasreach/nasreach/connlog"
	"github.com/nasreach/nasreach/internal/natlab"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/link"
	"github.com/nasreach/nasreach/store"
	"github.com/rs/zerolog"
)

// retryAfterLoss is the client's wait before punching again in the test
// (link.DirectRetryMin, 30 s, in production).
const retryAfterLoss = 2 * time.Second

// TestLinkDirectPathFollowsAnAddressChange moves one end of a direct path
// to a new public address mid-session, as a phone leaving Wi-Fi for its
// mobile network, a new lease from the provider or a NAT that rebinds
// does: its home router gets a new WAN address, and every NAT mapping
// changes with it. New sessions must open without an error for the
// application (through the relay while the direct path does not answer),
// the session in flight must go on, its bytes intact, whichever end moved
// (when the client moved, the client probes again and QUIC follows the new
// address; when the agent did, QUIC cannot follow, and the session
// resumes on a new path: the relay, then a new direct path), and the path
// must be direct again.
func TestLinkDirectPathFollowsAnAddressChange(t *testing.T) {
	for _, tc := range []struct {
		name    string
		move    string // "client" or "agent"
		dialing bool   // new sessions are opened right after the move
	}{
		// Only the session in flight notices: the client's watch finds
		// the connection silent.
		{"client moves, session in flight only", "client", false},
		// A new session notices first, and takes the relay.
		{"client moves, new sessions", "client", true},
		// The agent's side: its mapping changed, and the client's probes
		// to the old one go nowhere until the agent learns its new one;
		// the session in flight resumes through the relay.
		{"agent moves, session in flight only", "agent", false},
		{"agent moves, new sessions", "agent", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lab := natlab.New(t)
			r := startLinkRelay(t, lab)
			echo := startEcho(t)
			agentHome, clientHome := lab.AddHome(natlab.Masquerade), lab.AddHome(natlab.Masquerade)
			log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel)
			a, d, err := startEnds(t, r, "nas1", agentHome.Host(), clientHome.Host(), echo, log, func(c *link.DialerConfig) { c.DirectRetry = retryAfterLoss })
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { d.Close(); a.Close() })
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			if err := a.WaitOnline(ctx); err != nil {
				t.Fatal(err)
			}
			goDirectIn(t, d, "nas1")
			inFlight, err := d.Dial(ctx, "nas1", 22)
			if err != nil || !link.PathOf(inFlight).Direct {
				t.Fatalf("a direct session: %v (path %v)", err, link.PathOf(inFlight))
			}
			defer inFlight.Close()
			if err := echoRound(inFlight, 5*time.Second); err != nil {
				t.Fatal(err)
			}
			// Bytes in flight across the move: 4 MiB echoed, compared.
			streamed := make(chan error, 1)
			go func() { streamed <- echoStream(inFlight, 4<<20, 60*time.Second) }()

			home := clientHome
			if tc.move == "agent" {
				home = agentHome
			}
			old := home.WAN
			moved := time.Now()
			lab.Renumber(home)
			t.Logf("the %s's home moved from %s to %s", tc.move, old, home.WAN)

			if tc.dialing {
				for i := range 3 {
					start := time.Now()
					c, err := d.Dial(ctx, "nas1", 22)
					if err != nil {
						t.Fatalf("session %d after the move: %v", i, err)
					}
					err = echoRound(c, 10*time.Second)
					c.Close()
					if err != nil {
						t.Fatalf("session %d after the move (%v): %v", i, link.PathOf(c), err)
					}
					t.Logf("session %d after the move: %v, opened and echoed in %v", i, link.PathOf(c), time.Since(start).Round(time.Millisecond))
				}
			}

			// The session in flight goes on without an error, and what it
			// carried across the move arrives intact.
			if err := <-streamed; err != nil {
				t.Errorf("the session in flight, %v after the move: %v", time.Since(moved).Round(time.Millisecond), err)
			} else if err := echoRound(inFlight, 30*time.Second); err != nil {
				t.Errorf("the session in flight ended %v after the move: %v", time.Since(moved).Round(time.Millisecond), err)
			} else {
				t.Logf("the session in flight went on, its 4 MiB intact (echoed %v after the move, now %v)",
					time.Since(moved).Round(time.Millisecond), link.PathOf(inFlight))
			}

			// Direct again, from the new address: a session now and then
			// (each may start an attempt), within the relay's rate limit.
			var last time.Time
			testutil.WaitFor(t, 60*time.Second, "a direct path after the move", func() bool {
				if time.Since(last) < 250*time.Millisecond {
					return false
				}
				last = time.Now()
				c, err := d.Dial(ctx, "nas1", 22)
				if err != nil {
					t.Fatalf("session while waiting for the direct path: %v", err)
				}
				defer c.Close()
				if err := echoRound(c, 10*time.Second); err != nil {
					t.Fatalf("session while waiting for the direct path (%v): %v", link.PathOf(c), err)
				}
				return link.PathOf(c).Direct
			})
			t.Logf("direct %v after the move", time.Since(moved).Round(time.Millisecond))
			if ev, ok := r.events.wait(0, func(e connlog.Event) bool { return e.Kind == "punch" && e.Outcome == "lost" }); ok {
				t.Logf("the relay heard the path was lost (%s)", ev.Detail)
			}
		})
	}
}

// labQUICHeadStart is how long agents and clients in the lab give QUIC to
// the relay before they dial TCP beside it (link.DefaultQUICHeadStart, a
// second, in production): the matrix starts 36 of each at once under the
// race detector, often beside other test packages, and a QUIC handshake
// then takes more than a second; one that lost to TCP would take no direct
// path. Ends behind a UDP-blocked router reach the relay over TCP after it.
const labQUICHeadStart = 5 * time.Second

// startEnds starts an agent for a new device in agentHost, exposing port
// 22 as target, and a Dialer in clientHost, both toward the lab's relay.
func startEnds(t testing.TB, r *linkRelay, device string, agentHost, clientHost *natlab.Namespace, target string, log zerolog.Logger, dmods ...func(*link.DialerConfig)) (*link.Agent, *link.Dialer, error) {
	a, err := newLabAgent(t, r, device, agentHost, target, log)
	if err != nil {
		return nil, nil, err
	}
	cfg := link.DialerConfig{
		Server: r.addr.String(), RelayFingerprint: r.fp, KnownDevices: "-",
		Listen: netip.AddrPortFrom(clientHost.Addr, 0).String(), ListenUDP: listenIn(clientHost), DialTCP: dialIn(clientHost),
		QUICHeadStart: labQUICHeadStart,
		Logger:        log.With().Str("end", "client").Logger(),
	}
	for _, m := range dmods {
		m(&cfg)
	}
	d, err := link.NewDialer(cfg)
	if err != nil {
		a.Close()
		return nil, nil, err
	}
	return a, d, nil
}

// newLabAgent creates device in the relay's store and starts an agent for
// it in host, exposing port 22 as target.
func newLabAgent(t testing.TB, r *linkRelay, device string, host *natlab.Namespace, target string, log zerolog.Logger) (*link.Agent, error) {
	_, tok, err := r.store.Create(context.Background(), device, store.CreateOptions{})
	if err != nil {
		return nil, err
	}
	return link.NewAgent(link.AgentConfig{
		Server: r.addr.String(), RelayFingerprint: r.fp, Device: device, Token: tok,
		Expose: map[uint16]string{22: target}, StateDir: t.TempDir(),
		Listen: netip.AddrPortFrom(host.Addr, 0).String(), ListenUDP: listenIn(host), DialTCP: dialIn(host),
		QUICHeadStart: labQUICHeadStart,
		Logger:        log.With().Str("end", "agent").Logger(),
	})
}

// goDirectIn opens sessions until the client's path to device is direct.
func goDirectIn(t *testing.T, d *link.Dialer, device string) {
	t.Helper()
	testutil.WaitFor(t, 20*time.Second, "a direct path", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := d.Dial(ctx, device, 22)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		return d.PathTo(device).Direct
	})
}

// echoRound sends a line through an echo session and reads it back
// within timeout.
func echoRound(c net.Conn, timeout time.Duration) error {
	c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	msg := []byte("ping\n")
	if _, err := c.Write(msg); err != nil {
		return err
	}
	_, err := io.ReadFull(c, make([]byte, len(msg)))
	return err
}

// echoStream writes n pseudo-random bytes through an echo session while
// it reads them back, and compares them, within timeout.
func echoStream(c net.Conn, n int, timeout time.Duration) error {
	c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	want := make([]byte, n)
	mrand.NewChaCha8([32]byte{5}).Read(want)
	wrote := make(chan error, 1)
	go func() {
		_, err := c.Write(want)
		wrote <- err
	}()
	got := make([]byte, n)
	_, err := io.ReadFull(c, got)
	if werr := <-wrote; werr != nil {
		return fmt.Errorf("write: %w", werr)
	}
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if !bytes.Equal(got, want) {
		return errors.New("the echoed bytes differ from those sent")
	}
	return nil
}

// startEcho serves, on 127.0.0.1 in the test's own namespace (where the
// agents' goroutines dial their exposed services), an echo service.
func startEcho(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testutil.Serve(t, ln, func(c net.Conn) { io.Copy(c, c) })
	return ln.Addr().String()
}

package link_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nasreach/nasreach/link"
)

// TestDialWaitsForTheAgentToComeOnline is the tour's race: connect starts
// while the NAS's agent is still connecting, and the connection waits for it
// rather than failing.
func TestDialWaitsForTheAgentToComeOnline(t *testing.T) {
	e := newEnv(t)
	tok := e.addDevice("nas1")
	backend := echoServer(t)

	if _, err := e.dialer().Dial(ctx10(t), "nas1", 22); !errors.Is(err, link.ErrOffline) {
		t.Fatalf("dial without WaitOnline: %v, want ErrOffline at once", err)
	}
	start := time.Now()
	_, err := e.dialer(func(c *link.DialerConfig) { c.WaitOnline = 300 * time.Millisecond }).Dial(ctx10(t), "nas1", 22)
	if !errors.Is(err, link.ErrOffline) || time.Since(start) < 300*time.Millisecond {
		t.Fatalf("dial with a 300ms wait and no agent: %v after %v, want ErrOffline after the wait", err, time.Since(start))
	}

	d := e.dialer(func(c *link.DialerConfig) { c.WaitOnline = 10 * time.Second })
	dialed := make(chan error, 1)
	go func() {
		c, err := d.Dial(ctx10(t), "nas1", 22)
		if err == nil {
			err = echoByte(c)
			c.Close()
		}
		dialed <- err
	}()
	time.Sleep(300 * time.Millisecond)
	e.agent("nas1", tok, map[uint16]string{22: backend})
	if err := <-dialed; err != nil {
		t.Fatalf("dial while the agent was connecting: %v", err)
	}

	// Waiting ends with the caller's context.
	e.addDevice("sleepy")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := d.Dial(ctx, "sleepy", 22); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("dial an offline device until the context ends: %v, want its deadline", err)
	}
}

// Package workgroup runs goroutines that a component's Shutdown waits for,
// refuses new ones once shutting down has begun, and bounds that wait by a
// context.
package workgroup

import (
	"context"
	"fmt"
	"sync"
)

// Group is a sync.WaitGroup that refuses new work once closed. A bare
// WaitGroup cannot tell Close's Wait from a goroutine that is about to call
// Add (the race detector reports it, and Wait may return before the new
// goroutine ends); Group decides under one lock whether work starts, so after
// Close every goroutine Wait waits for has already been counted.
//
// The zero Group is ready to use. A Group must not be copied after first use.
type Group struct {
	mu     sync.Mutex
	wg     sync.WaitGroup
	closed bool
}

// Go runs f in a new goroutine and reports true, unless the group is closed:
// then it reports false and f never runs.
func (g *Group) Go(f func()) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.wg.Go(f)
	return true
}

// Close refuses new work from now on, without waiting for what runs. It
// reports whether this call closed the group, false if it was closed already.
// It is for a caller that must mark the group closed under a lock of its own
// and wait after releasing it.
func (g *Group) Close() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	was := g.closed
	g.closed = true
	return !was
}

// Wait waits for every goroutine Go started. Call it after Close: before,
// a Go racing with Wait may start work that Wait does not wait for.
func (g *Group) Wait() { g.wg.Wait() }

// WaitContext calls wait (a Group's or a sync.WaitGroup's Wait) and returns
// nil when it returns, or an error wrapping ctx.Err() if ctx ends first. The
// call to wait then goes on in the background until it returns: use it only
// once every goroutine it waits for has been told to stop.
func WaitContext(ctx context.Context, wait func()) error {
	done := make(chan struct{})
	go func() {
		wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		select {
		case <-done: // both ready: the goroutines did end
			return nil
		default:
			return fmt.Errorf("goroutines still running: %w", ctx.Err())
		}
	}
}

// CloseAndWait closes the group and waits for every goroutine Go started.
func (g *Group) CloseAndWait() {
	g.Close()
	g.Wait()
}

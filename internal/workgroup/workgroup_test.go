package workgroup

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestGoAfterCloseReturnsFalseAndNeverRuns(t *testing.T) {
	for _, c := range []struct {
		name string
		f    func(*Group)
	}{
		{"Close", func(g *Group) { g.Close() }},
		{"CloseAndWait", (*Group).CloseAndWait},
	} {
		t.Run(c.name, func(t *testing.T) {
			var g Group
			c.f(&g)
			var ran atomic.Bool
			if g.Go(func() { ran.Store(true) }) {
				t.Error("Go after close reported true")
			}
			g.Wait()
			time.Sleep(10 * time.Millisecond) // room for a wrongly started goroutine to run
			if ran.Load() {
				t.Error("Go after close ran f")
			}
		})
	}
}

func TestCloseReportsOnlyTheFirstCall(t *testing.T) {
	var g Group
	if !g.Close() {
		t.Error("first Close reported false")
	}
	if g.Close() {
		t.Error("second Close reported true")
	}
}

func TestWaitWaitsForRunningWork(t *testing.T) {
	var g Group
	release := make(chan struct{})
	started := make(chan struct{})
	var done atomic.Bool
	if !g.Go(func() {
		close(started)
		<-release
		done.Store(true)
	}) {
		t.Fatal("Go on an open group reported false")
	}
	<-started
	waited := make(chan struct{})
	go func() {
		g.CloseAndWait()
		close(waited)
	}()
	select {
	case <-waited:
		t.Fatal("CloseAndWait returned while work was running")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	<-waited
	if !done.Load() {
		t.Error("CloseAndWait returned before the work ended")
	}
}

// Goroutines that start work race with Close; whatever Go admitted has ended
// when CloseAndWait returns, and nothing runs after (the race detector checks
// the WaitGroup use).
func TestCloseRacingWithGoWaitsForEverythingAdmitted(t *testing.T) {
	for range 50 {
		var g Group
		var admitted, finished, late atomic.Int64
		var closed atomic.Bool
		var starters sync.WaitGroup
		for range 8 {
			starters.Go(func() {
				for range 20 {
					if g.Go(func() {
						if closed.Load() {
							late.Add(1)
						}
						time.Sleep(time.Microsecond)
						finished.Add(1)
					}) {
						admitted.Add(1)
					}
				}
			})
		}
		g.CloseAndWait()
		closed.Store(true)
		f := finished.Load()
		starters.Wait()
		if a := admitted.Load(); a != f {
			t.Fatalf("%d goroutines admitted, %d finished when CloseAndWait returned", a, f)
		}
		if n := late.Load(); n != 0 {
			t.Fatalf("%d goroutines ran after CloseAndWait returned", n)
		}
	}
}

func TestWaitContextReturnsWhenTheWorkEnds(t *testing.T) {
	var g Group
	release := make(chan struct{})
	g.Go(func() { <-release })
	g.Close()
	close(release)
	if err := WaitContext(context.Background(), g.Wait); err != nil {
		t.Fatalf("WaitContext: %v, want nil once the work ended", err)
	}
}

func TestWaitContextGivesUpWhenTheContextEnds(t *testing.T) {
	var g Group
	release := make(chan struct{})
	defer close(release)
	g.Go(func() { <-release })
	g.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := WaitContext(ctx, g.Wait); !errors.Is(err, context.Canceled) {
		t.Fatalf("WaitContext with running work and an ended context: %v, want context.Canceled", err)
	}
}

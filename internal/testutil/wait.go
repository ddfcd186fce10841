package testutil

import (
	"testing"
	"time"
)

// pollEvery is how often WaitFor asks its condition again.
const pollEvery = 10 * time.Millisecond

// WaitFor asks cond until it holds and fails the test, naming what it waited
// for, if it does not hold within timeout. It is for conditions the code
// under test offers no event for (a log line, a counter, a file); cond runs
// on the test's goroutine.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(pollEvery)
	}
}

package testutil

import (
	"testing"
	"time"
)

// WaitFor polls cond until it reports true and fails the test, saying what
// it waited for, if that takes longer than timeout. It is how a test waits
// for something it cannot be told about (a counter, a connection the server
// registered): never by sleeping a fixed time.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("still waiting after %v for %s", timeout, what)
		}
		time.Sleep(time.Millisecond)
	}
}

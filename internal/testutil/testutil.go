// Package testutil holds what the tests of several packages share: a clock
// they move by hand, a buffer several goroutines write to, a wait for a
// condition, an echo transfer checked byte by byte across a cut path,
// loopback clients from several source addresses and the check
// of a per-source connection cap, certificate files, the check for a
// third-party program, and the nasreach binary built for the tests that run
// it.
// Only _test.go files and test harnesses import it.
package testutil

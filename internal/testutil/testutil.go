// Package testutil holds what the tests of several packages share: a clock
// they move by hand, a buffer several goroutines write to, certificate files,
// and the check for a third-party program. Only _test.go files import it.
package testutil

//go:build !race

package link_test

import "testing"

// TestTransfer1GiBArrivesIntact is too slow under the race detector on small
// machines; -short skips it too.
func TestTransfer1GiBArrivesIntact(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	transfer(t, 1<<30)
}

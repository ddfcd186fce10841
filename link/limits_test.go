package link_test

import (
	"errors"
	"testing"

	"github.com/nasreach/nasreach/link"
	"github.com/nasreach/nasreach/linkserver"
)

// SetLimits (a configuration reload) applies to the next streams: lowering
// the per-device limit keeps admitted sessions working and refuses the next
// one; raising it admits again.
func TestSetLimitsAppliesToTheNextStreams(t *testing.T) {
	e := newEnv(t, func(c *linkserver.Config) { c.MaxStreamsPerDevice = 4 })
	tok := e.addDevice("nas1")
	e.agent("nas1", tok, map[uint16]string{22: echoServer(t)})
	d := e.dialer(relayOnly) // the relay's limits bound relayed sessions
	open := openStreams(t, d, "nas1", 22, 2)
	e.relay.SetLimits(linkserver.Limits{MaxStreamsPerDevice: 1})
	if _, err := d.Dial(ctx10(t), "nas1", 22); !errors.Is(err, link.ErrTooManyStreams) {
		t.Errorf("a stream over the lowered limit: %v, want ErrTooManyStreams", err)
	}
	for _, c := range open {
		if err := echoByte(c); err != nil {
			t.Fatalf("a session admitted before the change broke: %v", err)
		}
	}
	e.relay.SetLimits(linkserver.Limits{MaxStreamsPerDevice: 3})
	c, err := d.Dial(ctx10(t), "nas1", 22)
	if err != nil {
		t.Fatalf("after raising the limit: %v", err)
	}
	c.Close()
}

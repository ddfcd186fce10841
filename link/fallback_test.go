package link

import (
	"testing"

	"github.com/rs/zerolog"
)

// A relay's TCP address defaults to its UDP one's host and port (the
// daemon binds both on one port unless told otherwise); "-" turns TCP off.
func TestRelayTCPAddressDefaultsToTheUDPOne(t *testing.T) {
	for _, tc := range []struct{ server, serverTCP, want string }{
		{"relay.example.net:7443", "", "relay.example.net:7443"},
		{"relay.example.net:7443", "relay.example.net:443", "relay.example.net:443"},
		{"relay.example.net:7443", "-", ""},
	} {
		r, err := newRelayDialer(tc.server, tc.serverTCP, "", 0, 0, 0, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		if r.serverTCP != tc.want {
			t.Errorf("server %q, server-tcp %q: TCP to %q, want %q", tc.server, tc.serverTCP, r.serverTCP, tc.want)
		}
	}
	if _, err := newRelayDialer("relay.example.net:7443", "no-port", "", 0, 0, 0, zerolog.Nop()); err == nil {
		t.Error("a TCP address without a port was accepted")
	}
}

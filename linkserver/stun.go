package linkserver

import (
	"github.com/nasreach/nasreach/internal/netaddr"
	"github.com/nasreach/nasreach/stun"
)

// serveSTUN answers STUN Binding requests that arrive on the relay's own
// QUIC port (quic-go hands over every datagram that is not QUIC). With the
// answer of the STUN server RelayInfo names, an agent or a client has the
// mapped address of its one socket as seen from two destinations: equal, its
// NAT maps endpoint-independently; the same address with another port, it
// maps each destination anew (symmetric), which decides its part in birthday
// probing (link/wire.go, "NAT mapping"). The answer is no larger than the
// request, as on any STUN server, and carries no SOFTWARE attribute.
func (l *Server) serveSTUN() {
	r, _ := stun.NewResponder(stun.ResponderConfig{}) // no Software: nothing to refuse
	buf := make([]byte, stun.MaxRequestSize+1)        // a longer one is cut, and then dropped
	for {
		n, from, err := l.tr.ReadNonQUICPacket(l.ctx, buf)
		if err != nil {
			return // the relay is shutting down
		}
		if ans := r.Answer(buf[:n], netaddr.AddrPort(from)); ans != nil {
			l.tr.WriteTo(ans, from)
		}
	}
}

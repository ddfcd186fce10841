package link

import (
	"net"
	"net/netip"

	"github.com/quic-go/quic-go"
)

// Hooks for the tests of package link_test.

// AgentSocket returns the address of the agent's UDP socket.
func AgentSocket(a *Agent) netip.AddrPort { return a.ep.local }

// CloseAgentDirect closes the agent's direct connections, as a path that
// dies would end them.
func CloseAgentDirect(a *Agent) { a.closeDirect(CloseNormal, "test") }

// AgentSrflx returns the agent's server-reflexive address as STUN last
// reported it.
func AgentSrflx(a *Agent) netip.AddrPort {
	a.direct.mu.Lock()
	defer a.direct.mu.Unlock()
	return a.direct.srflx
}

// SpliceStream splices a QUIC stream of c to local as an agent splices a
// session to its local service, without the end-to-end TLS (make
// bench-link's direct QUIC + TCP path).
func SpliceStream(local net.Conn, s *quic.Stream, c *quic.Conn) { splice(local, newStreamConn(s, c)) }

// Resumable reports whether c, from Dial, is a resumable session.
func Resumable(c net.Conn) bool {
	e, ok := c.(*e2eConn)
	return ok && e.s != nil
}

// ForgetPredatingAgents makes d offer resumable sessions again to the
// devices whose agent it found predating them.
func ForgetPredatingAgents(d *Dialer) { d.plain.Clear() }

// SuspendedSessions returns how many sessions the agent keeps suspended
// and the memory its bound counts for them.
func SuspendedSessions(a *Agent) (n int, held int64) {
	t := &a.resumable
	t.mu.Lock()
	for _, s := range t.m {
		if s.suspended() {
			n++
		}
	}
	t.mu.Unlock()
	return n, a.budget.total()
}

// SessionsHeld returns the memory the agent's resumable sessions hold,
// suspended or not.
func SessionsHeld(a *Agent) int64 {
	var held int64
	t := &a.resumable
	t.mu.Lock()
	for _, s := range t.m {
		s.mu.Lock()
		held += s.outHeld + s.inHeld
		s.mu.Unlock()
	}
	t.mu.Unlock()
	return held
}

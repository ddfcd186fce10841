package link

import "net/netip"

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

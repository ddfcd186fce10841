package linkserver

import (
	"time"

	"github.com/nasreach/nasreach/link"
	"github.com/nasreach/nasreach/store"
)

// Owner controls reach direct paths (link/wire.go, "Direct paths"): the
// relay remembers the access code of every exchange it introduced, checks
// them again when the device changes (an access code revoked, access
// switched to "token") and tells the agent, on its control stream, which
// exchanges it no longer admits; the agent closes the direct connections
// they authorized.

// maxGrants bounds the exchanges remembered per device; beyond it a new
// exchange is not remembered, and a revocation reaches its direct
// connection only when the client renews it (within DirectLifetime).
const maxGrants = 1024

// grant is an exchange the relay introduced.
type grant struct {
	code  string    // the access code the client presented, possibly none
	until time.Time // when the agent's authorization from it ends at the latest
	// revokedTo is the agent told that it was revoked; nil while admitted.
	revokedTo *linkAgent
}

// remember records an exchange the relay introduced to device's agent.
func (l *Server) remember(device string, id [link.ExchangeIDLen]byte, code string) {
	now := l.cfg.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	gs := l.grants[device]
	if gs == nil {
		gs = map[[link.ExchangeIDLen]byte]*grant{}
		l.grants[device] = gs
	}
	if len(gs) >= maxGrants {
		for id, g := range gs {
			if !now.Before(g.until) {
				delete(gs, id)
			}
		}
		if len(gs) >= maxGrants {
			l.log.Warn().Str("device", device).Int("exchanges", len(gs)).Msg("too many direct-path exchanges to remember; a revocation reaches the newest only at their renewal")
			return
		}
	}
	gs[id] = &grant{code: code, until: now.Add(link.DirectGrantTTL)}
}

// forget drops what the relay remembers of device's exchanges: the device
// is gone, or its Link is off (the agent closes every direct connection).
func (l *Server) forget(device string) {
	l.mu.Lock()
	delete(l.grants, device)
	l.mu.Unlock()
}

// recheck checks device's remembered exchanges against its access rules
// now, and tells its agent about those no longer admitted that it has not
// been told of.
func (l *Server) recheck(device string) {
	d, err := l.cfg.Store.Get(device)
	if err != nil {
		return // deleted: onChange has closed the agent
	}
	now := l.cfg.Now()
	type entry struct {
		id   [link.ExchangeIDLen]byte
		g    *grant
		code string
		told bool // to an earlier agent
	}
	l.mu.Lock()
	a := l.agents[device]
	var check []entry
	for id, g := range l.grants[device] {
		switch {
		case !now.Before(g.until):
			delete(l.grants[device], id)
		case g.revokedTo != a:
			check = append(check, entry{id, g, g.code, g.revokedTo != nil})
		}
	}
	l.mu.Unlock()
	var revoked [][link.ExchangeIDLen]byte
	var told []*grant
	for _, e := range check {
		// Store reads outside l.mu: a read may wait for a write.
		if e.told || !admits(d, e.code, l.cfg.Store) {
			revoked = append(revoked, e.id)
			told = append(told, e.g)
		}
	}
	if len(revoked) == 0 || a == nil {
		return // an offline agent is told when it logs in
	}
	for len(revoked) > 0 {
		n := min(len(revoked), link.MaxRevoke)
		if err := a.tell(link.Revoke{Exchanges: revoked[:n]}, now.Add(infoWriteTimeout)); err != nil {
			l.log.Info().Err(err).Str("device", device).Msg("cannot tell the agent of revoked direct paths; closing it")
			a.close(link.CloseProtocol, link.StreamDeviceGone, "control stream not writable")
			return
		}
		revoked = revoked[n:]
	}
	l.mu.Lock()
	for _, g := range told {
		g.revokedTo = a
	}
	l.mu.Unlock()
	l.log.Info().Str("device", device).Int("exchanges", len(told)).Msg("told the agent to close direct paths whose access was revoked")
}

// admits reports whether device d admits a client presenting code.
func admits(d store.Device, code string, st Store) bool {
	return d.Access != store.AccessToken || st.CheckAccessCode(d.Name, code)
}

// tell writes f on the agent's control stream by deadline.
func (a *linkAgent) tell(f link.Frame, deadline time.Time) error {
	a.ctrlMu.Lock()
	defer a.ctrlMu.Unlock()
	a.ctrl.SetWriteDeadline(deadline)
	defer a.ctrl.SetWriteDeadline(time.Time{})
	return link.WriteFrame(a.ctrl, f)
}

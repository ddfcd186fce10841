package turnserver

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nasreach/nasreach/anonymize"
	"github.com/nasreach/nasreach/connlog"
	"github.com/nasreach/nasreach/internal/netaddr"
	"github.com/pion/turn/v5"
	"golang.org/x/time/rate"
)

// Reasons an allocation ended, as the connection-log record's Detail names them.
const (
	EndReleased = "released"     // the client let it expire, refreshed it to 0 or closed its TCP connection
	EndRevoked  = "revoked"      // the device was deleted, lost its link switch or got a new token
	EndCapped   = "lifetime cap" // it reached Config.MaxLifetime
	EndShutdown = "shutdown"     // the relay was closed
)

// errQuota makes pion answer 508 when two Allocate requests race past the
// quota check that answers 486 (pion's QuotaHandler); AllocatePacketConn
// enforces the quota again under its lock.
var errQuota = errors.New("allocation quota reached")

// maxPeersTracked bounds the per-allocation set used to count distinct peers.
const maxPeersTracked = 4096

// allocator is pion's RelayAddressGenerator: it opens the relay socket of
// each UDP allocation (an even one, and the one above held, when the
// filter marked the request so: reserve.go), enforces the allocation quotas,
// and wraps the socket so that bytes are counted, the bandwidth cap applied,
// the peer policy checked on every datagram sent, and the allocation event
// emitted when it closes.
// TCP allocations (RFC 6062) are refused: a relay that opens TCP connections
// on a client's behalf is the riskiest SSRF surface and WebRTC does not use it.
type allocator struct {
	t         *Server
	relayIPv4 netip.Addr
	relayIPv6 netip.Addr
	bindIPv4  netip.Addr
	bindIPv6  netip.Addr

	mu       sync.Mutex
	live     map[netip.AddrPort]*relayConn
	perUser  map[string]int          // allocations and held reservations per user
	held     int                     // reservations not yet taken or released
	reserved map[string]*reservation // held reservations by token, once pion named them
	revoked  map[string]bool         // device names whose allocations are refused
	closed   bool
}

var _ turn.RelayAddressGenerator = (*allocator)(nil)

// Validate implements turn.RelayAddressGenerator.
func (a *allocator) Validate() error {
	if !a.relayIPv4.IsValid() && !a.relayIPv6.IsValid() {
		return errors.New("no relay address")
	}
	return nil
}

// quota is pion's QuotaHandler: an error makes it answer 486. realm carries
// the filter's mark, which says how many relay ports the request takes.
func (a *allocator) quota(userID, realm string) error {
	_, in := a.t.marks.split(realm)
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.quotaLocked(userID, in.slots())
}

// quotaLocked says whether userID may take n more relay ports (a port held
// for a RESERVATION-TOKEN counts as an allocation).
func (a *allocator) quotaLocked(userID string, n int) error {
	cfg := &a.t.cfg
	if have := len(a.live) + a.held; have+n > cfg.MaxAllocations {
		return fmt.Errorf("%w: %d of %d allocations in total, %d asked", errQuota, have, cfg.MaxAllocations, n)
	}
	if have := a.perUser[userID]; have+n > cfg.MaxAllocationsPerUser {
		return fmt.Errorf("%w: the user has %d of %d, %d asked", errQuota, have, cfg.MaxAllocationsPerUser, n)
	}
	return nil
}

func (a *allocator) decUserLocked(userID string) {
	if a.perUser[userID]--; a.perUser[userID] <= 0 {
		delete(a.perUser, userID)
	}
}

// allocRequest is one allocation pion asks for, with the credential kind
// and name of its user and the filter's intent.
type allocRequest struct {
	turn.AllocateListenerConfig
	kind, name string
	intent
}

// AllocatePacketConn implements turn.RelayAddressGenerator.
func (a *allocator) AllocatePacketConn(c turn.AllocateListenerConfig) (net.PacketConn, net.Addr, error) {
	if c.UserID == "" {
		// pion probing for an even port before an EVEN-PORT allocation
		// (GetRandomEvenPort): port 0 is even, and the allocation that
		// follows, marked by the filter, binds the even port itself.
		return probeConn{}, &net.UDPAddr{}, nil
	}
	r := allocRequest{AllocateListenerConfig: c}
	r.kind, r.name = splitUserID(c.UserID)
	_, r.intent = a.t.marks.split(c.Realm)
	if r.token != "" {
		return a.claim(r, r.token)
	}
	if c.RequestedPort != 0 {
		return nil, nil, errPortAsked // pion's own reservation, which the filter never lets through
	}
	relayIP, bindIP := a.relayIPv4, a.bindIPv4
	if c.Network == "udp6" {
		relayIP, bindIP = a.relayIPv6, a.bindIPv6
	}
	if !relayIP.IsValid() {
		return nil, nil, fmt.Errorf("no relay address for %s", c.Network)
	}
	if err := a.quota(c.UserID, c.Realm); err != nil { // the cheap check first; pion's QuotaHandler made it too
		return nil, nil, err
	}
	var conn, next net.PacketConn
	var err error
	if r.even {
		conn, next, err = bindEven(c.Network, bindIP, r.reserve)
	} else {
		conn, err = bindRelay(c.Network, bindIP, 0)
	}
	if err != nil {
		return nil, nil, err
	}
	ap := netip.AddrPortFrom(relayIP, netaddr.AddrPort(conn.LocalAddr()).Port()) // as byRelay looks it up
	// Checked and registered under one lock: revokeDevice and closeAll
	// either see this allocation or it sees their flags.
	a.mu.Lock()
	switch {
	case a.closed:
		err = net.ErrClosed
	case r.kind == CredentialDevice && a.revoked[r.name]:
		err = errBadCredentials
	default:
		err = a.quotaLocked(c.UserID, r.slots())
	}
	if err != nil {
		a.mu.Unlock()
		conn.Close()
		if next != nil {
			next.Close()
		}
		return nil, nil, err
	}
	a.perUser[c.UserID]++
	rc := a.newRelayConnLocked(conn, r, ap)
	if next != nil {
		a.perUser[c.UserID]++
		a.holdLocked(rc, next)
	}
	a.mu.Unlock()
	return rc, net.UDPAddrFromAddrPort(ap), nil
}

// newRelayConnLocked registers conn as the relay socket of a new allocation
// at relay, whose quota slot is counted already. a.mu is held.
func (a *allocator) newRelayConnLocked(conn net.PacketConn, r allocRequest, relay netip.AddrPort) *relayConn {
	rc := &relayConn{
		PacketConn: conn, a: a, userID: r.UserID, kind: r.kind, name: r.name,
		relay: relay, start: a.t.now(), peers: map[netip.Addr]struct{}{},
	}
	if bw := a.t.cfg.BandwidthPerAllocation; bw > 0 {
		burst := max(int(bw), 2*inboundMTU) // at least one datagram of each size
		rc.toPeer = rate.NewLimiter(rate.Limit(bw), burst)
		rc.fromPeer = rate.NewLimiter(rate.Limit(bw), burst)
	}
	a.live[relay] = rc
	a.t.readers.Add(1) // pion's relay loop reads until the socket closes
	if capd := a.t.cfg.MaxLifetime; capd > 0 {
		rc.capTimer = time.AfterFunc(capd, func() { rc.end(EndCapped) })
	}
	return rc
}

// AllocateListener implements turn.RelayAddressGenerator: TCP allocations are
// refused before they get here (442); this is the backstop.
func (a *allocator) AllocateListener(turn.AllocateListenerConfig) (net.Listener, net.Addr, error) {
	return nil, nil, errors.New("tcp allocations are not supported")
}

// AllocateConn implements turn.RelayAddressGenerator: no outgoing TCP
// connections (RFC 6062 Connect is answered 447).
func (a *allocator) AllocateConn(turn.AllocateConnConfig) (net.Conn, error) {
	return nil, errors.New("tcp connections to peers are not supported")
}

// isRelay reports whether ap is the relay address of a live allocation.
func (a *allocator) isRelay(ap netip.AddrPort) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, ok := a.live[ap]
	return ok
}

func (a *allocator) byRelay(addr net.Addr) *relayConn {
	ap := netaddr.AddrPort(addr)
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.live[ap]
}

// count returns the live allocations and the reservations held.
func (a *allocator) count() (allocations, held int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.live), a.held
}

// revokeDevice refuses new allocations for a device and ends its live ones
// (all of them, or those made with another token hash when keepUserID is set).
func (a *allocator) revokeDevice(name, keepUserID string, refuse bool) {
	a.mu.Lock()
	if refuse {
		a.revoked[name] = true
	} else {
		delete(a.revoked, name)
	}
	var victims []*relayConn
	for _, rc := range a.live {
		if rc.kind == CredentialDevice && rc.name == name && rc.userID != keepUserID {
			victims = append(victims, rc)
		}
	}
	a.mu.Unlock()
	for _, rc := range victims {
		rc.end(EndRevoked)
	}
}

// closeAll ends every allocation; used by TURN.Close.
func (a *allocator) closeAll() {
	a.mu.Lock()
	a.closed = true
	victims := make([]*relayConn, 0, len(a.live))
	for _, rc := range a.live {
		victims = append(victims, rc)
	}
	a.mu.Unlock()
	for _, rc := range victims {
		rc.end(EndShutdown)
	}
}

// relayConn is the relay socket of one allocation as pion sees it.
type relayConn struct {
	net.PacketConn
	a                *allocator
	userID           string
	kind, name       string
	relay            netip.AddrPort
	start            time.Time
	toPeer, fromPeer *rate.Limiter
	capTimer         *time.Timer
	res              *reservation // the port it holds for a RESERVATION-TOKEN; guarded by a.mu

	fromClient, toClient atomic.Uint64

	mu        sync.Mutex
	client    netip.AddrPort
	transport string
	peers     map[netip.Addr]struct{}
	reason    string

	closeOnce, readOnce sync.Once
}

// created records what pion knows once the allocation exists.
func (rc *relayConn) created(client netip.AddrPort, transport string) {
	rc.mu.Lock()
	rc.client, rc.transport = client, transport
	rc.mu.Unlock()
}

func (rc *relayConn) addPeer(ip net.IP) {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return
	}
	rc.mu.Lock()
	if len(rc.peers) < maxPeersTracked {
		rc.peers[a.Unmap()] = struct{}{}
	}
	rc.mu.Unlock()
}

// WriteTo sends client payload to a peer: the last check before a datagram
// leaves, so that no path through pion (Send indication, ChannelData) can
// reach a refused peer, or a non-relay port on the server's own address.
func (rc *relayConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok || !rc.a.t.policy.Check(ua.AddrPort()).OK() {
		rc.a.t.stats.peerRefused.Add(1)
		return len(p), nil // dropped, as UDP may
	}
	if rc.toPeer != nil && !rc.toPeer.AllowN(time.Now(), len(p)) {
		rc.a.t.stats.bandwidthDropped.Add(1)
		return len(p), nil
	}
	n, err := rc.PacketConn.WriteTo(p, addr)
	rc.fromClient.Add(uint64(max(n, 0)))
	return n, err
}

// ReadFrom receives a peer datagram for pion to forward to the client.
func (rc *relayConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		n, addr, err := rc.PacketConn.ReadFrom(p)
		if err != nil {
			rc.readOnce.Do(rc.a.t.readers.Done)
			return n, addr, err
		}
		if rc.fromPeer != nil && !rc.fromPeer.AllowN(time.Now(), n) {
			rc.a.t.stats.bandwidthDropped.Add(1)
			continue
		}
		rc.toClient.Add(uint64(n))
		return n, addr, nil
	}
}

// end closes the allocation for reason; pion's relay loop then sees the
// socket closed and deletes the allocation.
func (rc *relayConn) end(reason string) {
	rc.mu.Lock()
	if rc.reason == "" {
		rc.reason = reason
	}
	rc.mu.Unlock()
	rc.Close()
}

// Close implements net.PacketConn; pion calls it when the allocation is
// deleted, and it emits the allocation event exactly once.
func (rc *relayConn) Close() error {
	var err error
	rc.closeOnce.Do(func() {
		err = rc.PacketConn.Close()
		a := rc.a
		a.mu.Lock()
		if rc.capTimer != nil { // set under a.mu, which may be after it fired
			rc.capTimer.Stop()
		}
		delete(a.live, rc.relay)
		a.decUserLocked(rc.userID)
		if rc.res != nil { // half a pair is of no use to the client
			a.releaseLocked(rc.res)
		}
		a.mu.Unlock()
		shutdown := a.t.isClosed()
		rc.mu.Lock()
		reason := rc.reason
		if reason == "" {
			reason = EndReleased
			if shutdown {
				reason = EndShutdown
			}
		}
		ev := connlog.Event{
			Time: a.t.now(), Start: rc.start, Service: "turn", Kind: "allocation", Outcome: "ok",
			Client: anonymize.AddrPort(rc.client), Peers: len(rc.peers),
			BytesIn: int64(min(rc.fromClient.Load(), 1<<62)), BytesOut: int64(min(rc.toClient.Load(), 1<<62)),
			Detail: fmt.Sprintf("%s over %s, %s", rc.kind, rc.transport, reason),
		}
		if rc.kind == CredentialDevice {
			ev.Device = rc.name
		}
		rc.mu.Unlock()
		a.t.emit(ev)
	})
	return err
}

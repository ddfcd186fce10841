package turnserver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/nasreach/nasreach/internal/netaddr"
)

// EVEN-PORT and RESERVATION-TOKEN (RFC 8656 §7.2, §14.6, §14.9): a client
// that sends RTP and RTCP through the relay asks for an even relayed port
// and, with EVEN-PORT's R bit, that the port above it be held for its second
// allocation, which names the held port by the RESERVATION-TOKEN of the
// first answer. coturn's turnutils_uclient does this unless told -c.
//
// pion/turn cannot be left to do it: it keeps reservation tokens per
// listening socket, and the relay listens on one SO_REUSEPORT socket per CPU
// among which the kernel spreads clients by their address and port, so the
// second allocation (from another client port) often reached a socket that
// had never seen the token and was answered 508. pion also holds no port
// for a token (another allocation may take it), answers R=0 with a token
// too, and lets one token be used twice. So the relay does it itself:
//
//   - the filter checks the Allocate's credentials and hands pion the request
//     without RESERVATION-TOKEN, and without EVEN-PORT unless R is set, with
//     what the client asked for written into REALM (realmMarks): REALM is the
//     one attribute pion passes unchanged from the request to the allocator.
//     It signs the request again with the same key.
//   - the allocator binds an even port and, for R, holds the next one: a
//     reservation, which counts as an allocation towards both quotas until
//     it is taken or released.
//   - pion answers R=1 with a RESERVATION-TOKEN of its choosing; the relay
//     reads it from the success response on its way out (noteToken) and
//     files the reservation under it.
//   - an Allocate naming a known token of the same user gets the held
//     socket as its relay socket (claim); an unknown, expired, used or
//     other user's token is answered 508 Insufficient Capacity.
//
// A reservation ends when it is taken, after Config.ReservationLifetime
// (30 s), when the allocation that made it ends (the client has no use for
// half a pair), and at shutdown.

// tokenSize is the size of RESERVATION-TOKEN (RFC 8656 §14.9).
const tokenSize = 8

// evenPortTries bounds the search for an even port (and its neighbour).
const evenPortTries = 64

var (
	// errNoReservation makes pion answer 508 to a token that names no
	// reservation of this user (unknown, expired, taken, or another's).
	errNoReservation = errors.New("no reservation for this token")
	// errPortAsked refuses a relay port asked for outside the filter's
	// marks: only a reservation may name a port.
	errPortAsked = errors.New("a specific relay port may only be taken with a reservation token")
)

// intent is what an Allocate asked beyond what pion reads itself: the
// filter's mark on the request's REALM.
type intent struct {
	even    bool   // EVEN-PORT: an even relayed port
	reserve bool   // EVEN-PORT with R: and hold the next port
	token   string // RESERVATION-TOKEN: the held port of this reservation
}

// slots is how many relay ports the request takes from the quotas: a claim
// turns its reservation into the allocation.
func (in intent) slots() int {
	switch {
	case in.token != "":
		return 0
	case in.reserve:
		return 2
	}
	return 1
}

// realmMarks tells the filter's marks on REALM from anything a client could
// send: a NUL and a secret drawn at start precede each mark.
type realmMarks struct{ prefix string }

func newRealmMarks() realmMarks {
	b := make([]byte, 8)
	rand.Read(b) //nolint:errcheck // crypto/rand.Read never fails (Go 1.24)
	return realmMarks{prefix: "\x00" + hex.EncodeToString(b) + ":"}
}

// mark returns realm with in written after it.
func (r realmMarks) mark(realm string, in intent) string {
	switch {
	case in.token != "":
		return realm + r.prefix + "claim=" + hex.EncodeToString([]byte(in.token))
	case in.reserve:
		return realm + r.prefix + "pair"
	case in.even:
		return realm + r.prefix + "even"
	}
	return realm
}

// split returns the realm the client sent and the filter's intent.
func (r realmMarks) split(realm string) (string, intent) {
	base, mark, ok := strings.Cut(realm, r.prefix)
	if !ok {
		return realm, intent{}
	}
	switch {
	case mark == "pair":
		return base, intent{even: true, reserve: true}
	case mark == "even":
		return base, intent{even: true}
	case strings.HasPrefix(mark, "claim="):
		if tok, err := hex.DecodeString(mark[len("claim="):]); err == nil && len(tok) == tokenSize {
			return base, intent{token: string(tok)}
		}
	}
	return base, intent{}
}

// reservation is a relay port held for a RESERVATION-TOKEN: bound, not read
// (a peer's datagram to it waits or is dropped, as no permission exists).
// Its fields are guarded by allocator.mu.
type reservation struct {
	conn   net.PacketConn
	relay  netip.AddrPort // relay address of the held port
	userID string
	owner  *relayConn // the EVEN-PORT allocation that made it
	token  string     // pion's token, once its answer went out
	timer  *time.Timer
	done   bool // taken or released
}

// probeConn is what pion's even-port probe (GetRandomEvenPort) gets: it only
// closes it. The allocation that follows binds the port itself.
type probeConn struct{ net.PacketConn }

func (probeConn) Close() error { return nil }

// bindRelay opens a relay socket on bindIP:port (0: any free port).
func bindRelay(network string, bindIP netip.Addr, port int) (net.PacketConn, error) {
	conn, err := (&net.ListenConfig{}).ListenPacket(context.Background(), network, net.JoinHostPort(bindIP.String(), strconv.Itoa(port)))
	if err != nil {
		return nil, fmt.Errorf("open relay socket: %w", err)
	}
	return conn, nil
}

// bindEven opens a relay socket on an even port and, when pair is set, one
// on the port above it too (nil otherwise). The system picks a free port;
// its even-odd neighbour is then asked for, and the search starts again
// when that one is taken.
func bindEven(network string, bindIP netip.Addr, pair bool) (even, next net.PacketConn, err error) {
	for range evenPortTries {
		c, err := bindRelay(network, bindIP, 0)
		if err != nil {
			return nil, nil, err
		}
		p := netaddr.AddrPort(c.LocalAddr()).Port()
		switch {
		case p%2 == 0 && !pair:
			return c, nil, nil
		case p%2 == 0:
			if n, err := bindRelay(network, bindIP, int(p)+1); err == nil {
				return c, n, nil
			}
		case p > 1024: // odd: the port below is the even one
			if e, err := bindRelay(network, bindIP, int(p)-1); err == nil {
				if pair {
					return e, c, nil
				}
				c.Close()
				return e, nil, nil
			}
		}
		c.Close()
	}
	return nil, nil, errors.New("open relay socket: no free even port")
}

// reservedFor reports whether token names a reservation of userID that is
// still held: the filter's check before it lets a claim through.
func (a *allocator) reservedFor(token, userID string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	res := a.reserved[token]
	return res != nil && res.userID == userID
}

// noteToken files the reservation of the allocation at relay under the
// token pion put in its success response. A retransmitted answer, or one
// for a reservation already taken or released, changes nothing.
func (a *allocator) noteToken(relay netip.AddrPort, token []byte) {
	a.mu.Lock()
	defer a.mu.Unlock()
	rc := a.live[relay]
	if rc == nil || rc.res == nil || rc.res.token != "" || len(token) != tokenSize {
		return
	}
	if _, taken := a.reserved[string(token)]; taken {
		return // pion drew a token in use: this reservation stays nameless and expires
	}
	rc.res.token = string(token)
	a.reserved[rc.res.token] = rc.res
}

// holdLocked makes next, bound beside rc's even port, rc's reservation for
// Config.ReservationLifetime. a.mu is held; next's slot is counted already.
func (a *allocator) holdLocked(rc *relayConn, next net.PacketConn) {
	res := &reservation{
		conn: next, relay: netip.AddrPortFrom(rc.relay.Addr(), netaddr.AddrPort(next.LocalAddr()).Port()),
		userID: rc.userID, owner: rc,
	}
	res.timer = time.AfterFunc(a.t.cfg.ReservationLifetime, func() {
		a.mu.Lock()
		a.releaseLocked(res)
		a.mu.Unlock()
	})
	rc.res = res
	a.held++
}

// releaseLocked closes a reservation nobody took and gives its slot back.
// a.mu is held.
func (a *allocator) releaseLocked(res *reservation) {
	if res.done {
		return
	}
	a.forgetLocked(res)
	res.conn.Close()
	a.decUserLocked(res.userID)
}

// forgetLocked ends res's bookkeeping, taken or released. a.mu is held.
func (a *allocator) forgetLocked(res *reservation) {
	res.done = true
	res.timer.Stop()
	if res.token != "" {
		delete(a.reserved, res.token)
	}
	if res.owner.res == res {
		res.owner.res = nil
	}
	a.held--
}

// claim opens the allocation of a RESERVATION-TOKEN: the held socket becomes
// its relay socket, and the reservation's quota slot its own.
func (a *allocator) claim(c allocRequest, token string) (net.PacketConn, net.Addr, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	res := a.reserved[token]
	switch {
	case a.closed:
		return nil, nil, net.ErrClosed
	case res == nil || res.userID != c.UserID:
		return nil, nil, errNoReservation
	case c.kind == CredentialDevice && a.revoked[c.name]:
		return nil, nil, errBadCredentials
	}
	a.forgetLocked(res)
	rc := a.newRelayConnLocked(res.conn, c, res.relay)
	return rc, net.UDPAddrFromAddrPort(res.relay), nil
}

package turnserver

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"

	"github.com/nasreach/nasreach/anonymize"
	"github.com/nasreach/nasreach/connlog"
	pion "github.com/pion/stun/v4"
)

// Every request the relay refuses is counted by reason (Stats, and the
// daemon's nasreach_turn_refused_total), logged with the client address
// masked, and sent to Config.Events. pion answers most refusals itself and
// reports them nowhere (its debug log at most), so the relay looks at each
// error response as it leaves (observeAnswer, from the sockets' write
// paths): one place for pion's answers and the filter's own. What decided a
// refusal inside pion's handling leaves a note for the client it answers
// next (answerNotes): the credential check (authenticate, onAuth) and the
// quota check (pion's QuotaHandler). A 401 is a refusal only with such a note
// (a wrong password, an unknown user, expired REST credentials, a wrong
// realm); without one it challenges a request that carries no credentials
// yet, and 438 asks for a fresh nonce: neither is a refusal.
//
// Datagrams dropped without an answer (Send indications and ChannelData
// towards a refused peer or over the bandwidth cap, malformed input) are
// counted only: there is no request to log, and a flood would flood the log.

// Refusal reasons: the values of the daemon's nasreach_turn_refused_total
// reason label for refused requests (bandwidth and malformed count dropped
// datagrams).
const (
	RefusedAuth    = "auth"    // 401: wrong password, unknown user, expired REST credentials, wrong realm
	RefusedQuota   = "quota"   // 486 Allocation Quota Reached, 508 Insufficient Capacity
	RefusedPeer    = "peer"    // 403 Forbidden: a peer the policy refuses
	RefusedRequest = "request" // any other error answer: 400, 420, 437, 440, 442, 443, 447
)

// Refusal logging is rate-limited, so that a client sending bad requests
// as fast as it can cannot turn the relay into a log writer; what is not
// logged is counted and reported on the next line that is.
const (
	refusalLogRate  = 20  // lines per second
	refusalLogBurst = 100 // lines at once
)

// STUN message classes (RFC 8489 §5), as stunMethodClass returns them.
const (
	classRequest = 0
	classSuccess = 2
	classError   = 3
)

// STUN error codes the relay tells apart.
const (
	codeBadRequest   = 400
	codeUnauthorized = 401
	codeStaleNonce   = 438
	codeQuota        = 486
	codeCapacity     = 508
)

// answerReasons are the words logged for an error code, as RFC 8656 and
// RFC 8489 name them; pion sends its error responses without a reason.
var answerReasons = map[int]string{
	300: "try alternate", 400: "bad request", 403: "forbidden", 420: "unknown attribute",
	437: "allocation mismatch", 440: "address family not supported", 441: "wrong credentials",
	442: "unsupported transport protocol", 443: "peer address family mismatch",
	446: "connection already exists", 447: "connection timeout or failure",
	codeQuota: "allocation quota reached", 500: "server error", codeCapacity: "insufficient capacity",
}

// refusal is one refused request.
type refusal struct {
	reason    string // RefusedAuth, ...
	method    string // the request's method, lower-case: "allocate", "refresh", ...
	code      int    // the error code answered
	detail    string // why, when more is known than the code says
	client    netip.AddrPort
	transport string // "udp", "tcp" or "tls"
	user      string // USERNAME and REALM of the request, when it had them
	realm     string
}

// refuse counts, logs and records one refusal.
func (t *Server) refuse(r refusal) {
	switch r.reason {
	case RefusedAuth:
		t.stats.authFailed.Add(1)
	case RefusedQuota:
		t.stats.quotaRefused.Add(1)
	case RefusedPeer:
		t.stats.peerRefused.Add(1)
	default:
		t.stats.requestRefused.Add(1)
	}
	// A name is only ever logged for credentials that exist: an unknown
	// username may be anything, a mistyped password included.
	kind, device := "", ""
	if userID, _, err := t.creds.lookup(r.user, r.realm); err == nil {
		kind, device = splitUserID(userID)
		if kind != CredentialDevice {
			device = ""
		}
	}
	why := r.detail
	if why == "" {
		why = answerReasons[r.code]
	}
	detail := fmt.Sprintf("%s: %d %s", r.method, r.code, why)
	if t.cfg.Events != nil {
		outcome := "refused"
		if r.reason == RefusedAuth {
			outcome = "badauth"
		}
		t.cfg.Events(connlog.Event{
			Time: t.now(), Service: "turn", Kind: "request", Outcome: outcome,
			Device: device, Client: anonymize.AddrPort(r.client), Detail: detail,
		})
	}
	if !t.refusalLogs.Allow() {
		t.unlogged.Add(1)
		return
	}
	ev := t.log.Info().Str("reason", r.reason).Str("detail", detail).
		Str("client", anonymize.AddrPort(r.client).String()).Str("transport", r.transport)
	if kind != "" {
		ev = ev.Str("credential", kind)
	}
	if device != "" {
		ev = ev.Str("device", device)
	}
	if n := t.unlogged.Swap(0); n > 0 {
		ev = ev.Uint64("refusals_not_logged", n)
	}
	ev.Msg("turn request refused")
}

// observeAnswer looks at a STUN response on its way to client: an error
// response is a refusal (401 and 438 aside, see above), and an Allocate
// success response may carry the RESERVATION-TOKEN pion chose for a held
// port. The callers pass only what starts like a STUN response (wantsLook),
// so the data path pays one comparison.
func (t *Server) observeAnswer(b []byte, client netip.AddrPort, transport string) {
	method, class := stunMethodClass(binary.BigEndian.Uint16(b[0:2]))
	if method == methodBinding || binary.BigEndian.Uint32(b[4:8]) != magicCookie {
		return
	}
	var tid [pion.TransactionIDSize]byte
	copy(tid[:], b[8:20])
	who := t.asked.take(tid)
	note, noted := t.notes.take(client)
	m := &pion.Message{Raw: b}
	switch {
	case class == classSuccess && method == methodAllocate && m.Decode() == nil:
		t.noteReservation(m)
		return
	case class != classError || m.Decode() != nil:
		return
	}
	var ec pion.ErrorCodeAttribute
	if ec.GetFrom(m) != nil {
		return
	}
	code := int(ec.Code)
	r := refusal{
		method: strings.ToLower(pion.Method(method).String()), code: code, detail: who.detail,
		client: client, transport: transport, user: who.user, realm: who.realm,
	}
	switch {
	case code == codeUnauthorized && m.Contains(pion.AttrMessageIntegrity):
		// Signed, so not a challenge: pion's answer to a ChannelBind
		// its permission handler refused (the filter answers 403 first).
		r.reason = RefusedPeer
	case code == codeUnauthorized:
		if !noted || !errors.Is(note, errBadCredentials) {
			return // a challenge
		}
		r.reason, r.detail = RefusedAuth, authDetail(note)
	case code == codeStaleNonce:
		return
	case code == codeQuota, code == codeCapacity:
		r.reason = RefusedQuota
		if noted && errors.Is(note, errQuota) {
			r.detail = note.Error()
		}
	case code == codeForbidden:
		r.reason = RefusedPeer
	default:
		r.reason = RefusedRequest
	}
	t.refuse(r)
}

// wantsLook reports whether b, about to be sent to a client, is a STUN
// response (the top bits clear, the class's C1 bit set), which
// observeAnswer looks at. ChannelData and Data indications are not.
func wantsLook(b []byte) bool { return len(b) >= 20 && b[0]&0xC1 == 0x01 }

// noteReservation passes the RESERVATION-TOKEN of an Allocate success
// response to the allocator, which files the reservation of the relayed
// address under it.
func (t *Server) noteReservation(m *pion.Message) {
	token, err := m.Get(pion.AttrReservationToken)
	if err != nil {
		return
	}
	var relayed pion.XORMappedAddress
	if relayed.GetFromAs(m, pion.AttrXORRelayedAddress) != nil {
		return
	}
	ip, ok := netip.AddrFromSlice(relayed.IP)
	if !ok || relayed.Port <= 0 || relayed.Port > 0xffff {
		return
	}
	t.alloc.noteToken(netip.AddrPortFrom(ip.Unmap(), uint16(relayed.Port)), token)
}

// maxAsked bounds the requests in flight whose sender is remembered;
// requests pion never answers are forgotten oldest first.
const maxAsked = 1024

// asker is who sent a request, and why the filter refused it when it did.
type asker struct{ user, realm, detail string }

// askedTable remembers the username and realm of requests in flight by
// transaction ID, so that a refusal, seen as its answer leaves, can name
// the device it concerns.
type askedTable struct {
	mu    sync.Mutex
	m     map[[pion.TransactionIDSize]byte]asker
	order [maxAsked][pion.TransactionIDSize]byte // a ring, oldest at next
	next  int
}

// note remembers who sent m, a request.
func (a *askedTable) note(m *pion.Message) {
	var user pion.Username
	var realm pion.Realm
	if user.GetFrom(m) != nil {
		return
	}
	realm.GetFrom(m) //nolint:errcheck // no realm, no lookup
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.m == nil {
		a.m = make(map[[pion.TransactionIDSize]byte]asker, maxAsked)
	}
	delete(a.m, a.order[a.next])
	a.order[a.next] = m.TransactionID
	a.next = (a.next + 1) % maxAsked
	a.m[m.TransactionID] = asker{user: user.String(), realm: realm.String()}
}

// explain records why the filter refuses request tid.
func (a *askedTable) explain(tid [pion.TransactionIDSize]byte, detail string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if w, ok := a.m[tid]; ok {
		w.detail = detail
		a.m[tid] = w
	}
}

// take returns and forgets who sent request tid.
func (a *askedTable) take(tid [pion.TransactionIDSize]byte) asker {
	a.mu.Lock()
	defer a.mu.Unlock()
	w := a.m[tid]
	delete(a.m, tid)
	return w
}

// maxNotes bounds answerNotes; pion answers each noted request at once, so
// only a failed send leaves a note behind.
const maxNotes = 1024

// answerNotes hold why pion is about to refuse a client's request, until
// the answer to that client leaves (any answer: a note never outlives the
// request it was made for). A client address is served by one goroutine at
// a time (one socket or connection), so a note and its answer follow each
// other.
type answerNotes struct {
	mu sync.Mutex
	m  map[netip.AddrPort]error
}

func (n *answerNotes) note(client netip.AddrPort, why error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.m == nil || len(n.m) >= maxNotes {
		n.m = map[netip.AddrPort]error{} // stale notes of answers never sent
	}
	n.m[client] = why
}

func (n *answerNotes) take(client netip.AddrPort) (error, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.m) == 0 {
		return nil, false
	}
	why, ok := n.m[client]
	delete(n.m, client)
	return why, ok
}

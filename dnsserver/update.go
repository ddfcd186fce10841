package dnsserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/store"
)

// Dynamic update (RFC 2136): a device keeps its own records current with
// UPDATE messages signed with its TSIG key, as BIND's nsupdate, ddclient's
// nsupdate protocol and the rfc2136 plugins of certbot and lego send them.
//
// Who may change what. The key named <device>.<zone>, the device's own
// (issued through the API, held by the store, found by DeviceKeys), may add
// and delete
//
//	<device>.<zone>                  A, AAAA   at most one address of each family
//	_acme-challenge.<device>.<zone>  TXT       ACME DNS-01 values (acme.go), one
//	                                           string each, as the REST API takes them
//
// and nothing else, as BIND's "update-policy { grant * self * A AAAA;
// grant * selfsub * TXT; }" would allow (narrower: TXT at the challenge
// name only): any other name or type is REFUSED, and so is every update
// signed with a key of the configuration (a secondary's). An unsigned
// UPDATE is NOTAUTH, as Knot answers one its ACL does not admit; a badly
// signed one is NOTAUTH with the TSIG error (BADKEY, BADSIG, BADTIME).
//
// An UPDATE is processed in this order, the first failure answering it:
//
//  1. TSIG: unsigned or not verified → NOTAUTH (above).
//  2. The zone section: one SOA question, else FORMERR; our zone in class
//     IN, else NOTAUTH.
//  3. The prerequisite and update sections are checked for form (RFC 2136
//     §3.2 and §3.4.1: TTLs, classes, empty data where the class asks for
//     it) → FORMERR, and every name must be in the zone → NOTZONE.
//  4. Every update must be one the key may make → REFUSED.
//  5. In one store transaction (store.EditRecords), so that nothing comes
//     in between: the prerequisites (RFC 2136 §2.4) are evaluated in order
//     → NXDOMAIN, YXDOMAIN, NXRRSET, YXRRSET; then the updates are applied
//     in order (class IN adds, class ANY deletes an RRset or, with type
//     ANY, every RRset at the name, class NONE deletes one record). A
//     result with two addresses of one family, an address that may not be
//     published (store.ValidateAddress, the API's rule), or a challenge
//     value the API would refuse (store.ValidateChallenge, more than
//     store.MaxChallenges) → REFUSED. All of it commits, or none: the
//     addresses and the challenge values are one record's, written as
//     SetAddress and SetChallenges write them (each value published for
//     store.ChallengeLifetime).
//  6. NOERROR, signed with the request's key, is sent once the change is
//     committed and in the next answer, as dyndns2's "good" is.
//
// The prerequisites about the device's own names are evaluated against what
// the store holds for it, whether or not it resolves: a device with DDNS off
// keeps its addresses up to date (as dyndns2 does) and its own prerequisites
// see them. Prerequisites about any other name see the zone as a query
// would. The TTL of an added record is not kept: every device record is
// served with the zone's TTL (--ttl), as every other way of setting an
// address does, and challenge values with ChallengeTTL.

// UpdateConfig turns on dynamic update. The zero value leaves it off: UPDATE
// is answered NOTIMP.
type UpdateConfig struct {
	// Store applies the updates; nil turns dynamic update off. The devices'
	// keys must be among Transfer.Keys (DeviceKeys).
	Store Editor
	// OnUpdate, if set, is told how each UPDATE ended (metrics, the
	// connection log). It must not block.
	OnUpdate func(UpdateEvent)
}

// Editor is the write side of the store that dynamic update needs.
// *store.Store is one.
type Editor interface {
	EditRecords(ctx context.Context, name string, decide func(cur store.Device) (store.RecordEdit, error)) (store.Device, bool, error)
}

// UpdateEvent describes one UPDATE for OnUpdate.
type UpdateEvent struct {
	Remote net.Addr // the client's address and port, as the socket gave it
	// Device is the device whose key signed the UPDATE; "" when no device
	// key did.
	Device string
	// Outcome is "good" (committed, something changed), "nochg" (nothing
	// to change), "badauth" (unsigned, or the signature did not verify) or
	// the lower-case name of the rcode that refused it: "refused",
	// "formerr", "notauth", "notzone", "nxdomain", "yxdomain", "nxrrset",
	// "yxrrset", "servfail" (the store could not commit).
	Outcome string
	// Detail says why it was refused, for the operator; "" when it was not.
	Detail string
	TCP    bool
}

// updateTimeout bounds how long an UPDATE waits for the store.
const updateTimeout = 10 * time.Second

// updateResult is how one UPDATE ends.
type updateResult struct {
	rcode   int
	tsigErr error // the signature did not verify: answered NOTAUTH with the TSIG error
	device  string
	outcome string
	detail  string
}

// updateError is a refusal decided while the store transaction runs.
type updateError struct {
	rcode  int
	detail string
}

func (e *updateError) Error() string { return e.detail }

func refuse(rcode int, format string, args ...any) *updateError {
	return &updateError{rcode: rcode, detail: fmt.Sprintf(format, args...)}
}

// accept is the first check of every packet: acceptQuery's, except that an
// UPDATE is admitted when dynamic update is on (with a zone section of one
// record, else FORMERR).
func (s *Server) accept(dh dns.Header) dns.MsgAcceptAction {
	if s.updates != nil && int(dh.Bits>>11)&0xF == dns.OpcodeUpdate && dh.Bits&(1<<15) == 0 {
		if dh.Qdcount != 1 {
			return dns.MsgReject
		}
		return dns.MsgAccept
	}
	return acceptQuery(dh)
}

// serveUpdate answers an UPDATE and reports it.
func (s *Server) serveUpdate(w dns.ResponseWriter, r *dns.Msg) {
	res := s.update(w, r)
	if res.tsigErr != nil {
		res.detail = "TSIG " + dns.RcodeToString[writeTSIGError(w, r, res.tsigErr)]
	} else {
		m := new(dns.Msg)
		m.SetRcode(r, res.rcode)
		m.RecursionAvailable = false
		if r.IsEdns0() != nil {
			o := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
			o.SetUDPSize(s.udpSize)
			if res.rcode == dns.RcodeRefused && res.detail != "" {
				o.Option = append(o.Option, &dns.EDNS0_EDE{InfoCode: dns.ExtendedErrorCodeProhibited, ExtraText: res.detail})
			}
			m.Extra = append(m.Extra, o)
		}
		if t := r.IsTsig(); t != nil {
			sign(m, t)
		}
		if err := w.WriteMsg(m); err != nil {
			s.log.Debug().Err(err).Msg("dns write failed")
		}
	}
	switch {
	case res.outcome == "good":
		s.log.Info().Str("device", res.device).Msg("address updated (rfc2136)")
	case res.device != "" && res.outcome != "nochg":
		s.log.Info().Str("device", res.device).Str("rcode", dns.RcodeToString[res.rcode]).Str("reason", res.detail).Msg("dns update refused")
	case res.device == "":
		s.log.Debug().Str("outcome", res.outcome).Str("reason", res.detail).Msg("dns update refused")
	}
	if s.onUpdate != nil {
		s.onUpdate(UpdateEvent{Remote: w.RemoteAddr(), Device: res.device, Outcome: res.outcome, Detail: res.detail, TCP: isTCP(w)})
	}
}

// update decides and applies an UPDATE (steps 1 to 5 above).
func (s *Server) update(w dns.ResponseWriter, r *dns.Msg) updateResult {
	fail := func(device string, e *updateError) updateResult {
		return updateResult{rcode: e.rcode, device: device, outcome: strings.ToLower(dns.RcodeToString[e.rcode]), detail: e.detail}
	}
	t := r.IsTsig()
	if t == nil {
		return updateResult{rcode: dns.RcodeNotAuth, outcome: "badauth", detail: "unsigned: sign updates with the device's TSIG key"}
	}
	if err := w.TsigStatus(); err != nil {
		return updateResult{tsigErr: err, outcome: "badauth"}
	}
	key, _ := s.keys().Key(t.Hdr.Name) // verified: the key exists
	if len(r.Question) != 1 || r.Question[0].Qtype != dns.TypeSOA {
		return fail(key.Device, refuse(dns.RcodeFormatError, "the zone section must be the zone's SOA"))
	}
	if z := r.Question[0]; !strings.EqualFold(dns.Fqdn(z.Name), s.zone) || z.Qclass != dns.ClassINET {
		return fail(key.Device, refuse(dns.RcodeNotAuth, "this server is not authoritative for zone %s", strings.TrimSuffix(z.Name, ".")))
	}
	if key.Device == "" {
		return fail("", refuse(dns.RcodeRefused, "key %s is not a device's: it may not update", strings.TrimSuffix(key.Name, ".")))
	}
	for _, rr := range r.Answer {
		if e := s.checkPrerequisite(rr); e != nil {
			return fail(key.Device, e)
		}
	}
	for _, rr := range r.Ns {
		if e := s.checkUpdate(rr); e != nil {
			return fail(key.Device, e)
		}
	}
	own := s.ownNames(key.Device)
	for _, rr := range r.Ns {
		if e := own.permits(rr); e != nil {
			return fail(key.Device, e)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), updateTimeout)
	defer cancel()
	_, changed, err := s.updates.EditRecords(ctx, key.Device, func(cur store.Device) (store.RecordEdit, error) {
		if err := s.prerequisites(own, cur, r.Answer); err != nil {
			return store.RecordEdit{}, err
		}
		return own.apply(cur, r.Ns)
	})
	var ue *updateError
	switch {
	case errors.As(err, &ue):
		return fail(key.Device, ue)
	case errors.Is(err, store.ErrInvalid):
		return fail(key.Device, refuse(dns.RcodeRefused, "%v", err))
	case errors.Is(err, store.ErrNotFound): // deleted since its key was checked
		return updateResult{rcode: dns.RcodeNotAuth, outcome: "badauth", detail: "the device is deleted"}
	case err != nil:
		s.log.Error().Err(err).Str("device", key.Device).Msg("dns update not committed")
		return fail(key.Device, refuse(dns.RcodeServerFailure, "the change could not be saved; try again"))
	case changed:
		return updateResult{rcode: dns.RcodeSuccess, device: key.Device, outcome: "good"}
	}
	return updateResult{rcode: dns.RcodeSuccess, device: key.Device, outcome: "nochg"}
}

// isMeta reports whether t is a type that is never a record in a zone
// (RFC 2136 §3.4.1.2 names ANY, AXFR, MAILA and MAILB).
func isMeta(t uint16) bool {
	switch t {
	case dns.TypeANY, dns.TypeAXFR, dns.TypeIXFR, dns.TypeMAILA, dns.TypeMAILB, dns.TypeOPT, dns.TypeTSIG:
		return true
	}
	return false
}

// inZone returns rr's owner in canonical form, or NOTZONE.
func (s *Server) inZone(rr dns.RR) (string, *updateError) {
	name := dns.CanonicalName(rr.Header().Name)
	if !dns.IsSubDomain(s.zone, name) {
		return "", refuse(dns.RcodeNotZone, "%s is not in zone %s", strings.TrimSuffix(name, "."), strings.TrimSuffix(s.zone, "."))
	}
	return name, nil
}

// checkPrerequisite checks the form of one prerequisite (RFC 2136 §3.2.1).
func (s *Server) checkPrerequisite(rr dns.RR) *updateError {
	if _, e := s.inZone(rr); e != nil {
		return e
	}
	h := rr.Header()
	switch {
	case h.Ttl != 0:
		return refuse(dns.RcodeFormatError, "a prerequisite's TTL must be 0")
	case (h.Class == dns.ClassANY || h.Class == dns.ClassNONE) && h.Rdlength != 0:
		return refuse(dns.RcodeFormatError, "a prerequisite of class %s has no data", dns.ClassToString[h.Class])
	case h.Class == dns.ClassINET && isMeta(h.Rrtype):
		return refuse(dns.RcodeFormatError, "a prerequisite of class IN cannot have type %s", dns.TypeToString[h.Rrtype])
	case h.Class != dns.ClassANY && h.Class != dns.ClassNONE && h.Class != dns.ClassINET:
		return refuse(dns.RcodeFormatError, "a prerequisite's class must be IN, ANY or NONE")
	}
	return nil
}

// checkUpdate checks the form of one update (RFC 2136 §3.4.1).
func (s *Server) checkUpdate(rr dns.RR) *updateError {
	if _, e := s.inZone(rr); e != nil {
		return e
	}
	h := rr.Header()
	switch h.Class {
	case dns.ClassINET:
		if isMeta(h.Rrtype) {
			return refuse(dns.RcodeFormatError, "type %s cannot be added", dns.TypeToString[h.Rrtype])
		}
	case dns.ClassANY:
		if h.Ttl != 0 || h.Rdlength != 0 || (h.Rrtype != dns.TypeANY && isMeta(h.Rrtype)) {
			return refuse(dns.RcodeFormatError, "a deletion of an RRset has TTL 0 and no data")
		}
	case dns.ClassNONE:
		if h.Ttl != 0 || isMeta(h.Rrtype) {
			return refuse(dns.RcodeFormatError, "a deletion of a record has TTL 0 and a type of record")
		}
	default:
		return refuse(dns.RcodeFormatError, "an update's class must be IN, ANY or NONE")
	}
	return nil
}

// ownNames are the names a device's key may update.
type ownNames struct {
	device    string // the device's label
	name      string // <device>.<zone>., canonical
	challenge string // _acme-challenge.<device>.<zone>., canonical
}

func (s *Server) ownNames(device string) ownNames {
	name := device + "." + s.zone
	return ownNames{device: device, name: name, challenge: challengeLabel + "." + name}
}

// permits returns nil if the device's key may make update rr (its form
// checked), else REFUSED saying what the key may change.
func (o ownNames) permits(rr dns.RR) *updateError {
	h := rr.Header()
	name := dns.CanonicalName(h.Name)
	deleteAll := h.Class == dns.ClassANY && h.Rrtype == dns.TypeANY
	switch {
	case name == o.name && (h.Rrtype == dns.TypeA || h.Rrtype == dns.TypeAAAA || deleteAll):
		return nil
	case name == o.challenge && (h.Rrtype == dns.TypeTXT || deleteAll):
		return nil
	}
	what := dns.TypeToString[h.Rrtype]
	if what == "" {
		what = fmt.Sprintf("TYPE%d", h.Rrtype)
	}
	return refuse(dns.RcodeRefused, "%s at %s is not for the key of %s to change: it may change A and AAAA at %s and TXT at %s",
		what, strings.TrimSuffix(name, "."), o.device, strings.TrimSuffix(o.name, "."), strings.TrimSuffix(o.challenge, "."))
}

// records returns the device's own records at name (canonical) as the store
// holds them, and whether name is one of its own names.
func (o ownNames) records(cur store.Device, name string) ([]dns.RR, bool) {
	if name != o.name && name != o.challenge {
		return nil, false
	}
	all := deviceRecords(o.name, store.Record{IPv4: cur.IPv4, IPv6: cur.IPv6, ACME: challengeValues(cur)}, 0)
	return slices.DeleteFunc(all, func(rr dns.RR) bool { return rr.Header().Name != name }), true
}

// challengeValues are the values cur publishes at its challenge name, in
// order.
func challengeValues(cur store.Device) []string {
	var out []string
	for _, c := range cur.ACMEChallenges {
		out = append(out, c.Value)
	}
	return out
}

// published returns the records of type t at name (canonical) that a query
// would get: the zone as everyone sees it. For t ANY that is one RRset of
// those at name (RFC 8482), none only when it has none.
func (s *Server) published(name string, t uint16) []dns.RR {
	q := new(dns.Msg).SetQuestion(name, t)
	m, _ := s.answer(q)
	if m.Rcode != dns.RcodeSuccess {
		return nil
	}
	return slices.DeleteFunc(m.Answer, func(rr dns.RR) bool { return !strings.EqualFold(rr.Header().Name, name) })
}

// prerequisites evaluates the prerequisite section against cur, the device
// as stored, and the zone as published for other names (RFC 2136 §3.2).
func (s *Server) prerequisites(own ownNames, cur store.Device, prereqs []dns.RR) error {
	// at returns the records of type t (ANY: some of any type, if there
	// are any) at name.
	at := func(name string, t uint16) []dns.RR {
		rrs, ok := own.records(cur, name)
		if !ok {
			return s.published(name, t)
		}
		if t == dns.TypeANY {
			return rrs
		}
		return slices.DeleteFunc(rrs, func(rr dns.RR) bool { return rr.Header().Rrtype != t })
	}
	type rrset struct {
		name string
		t    uint16
	}
	var order []rrset
	want := map[rrset][]dns.RR{} // value-dependent prerequisites, by RRset
	for _, rr := range prereqs {
		h := rr.Header()
		name := dns.CanonicalName(h.Name)
		show := strings.TrimSuffix(name, ".")
		switch {
		case h.Class == dns.ClassANY && h.Rrtype == dns.TypeANY:
			if len(at(name, dns.TypeANY)) == 0 {
				return refuse(dns.RcodeNameError, "prerequisite failed: %s has no records", show)
			}
		case h.Class == dns.ClassANY:
			if len(at(name, h.Rrtype)) == 0 {
				return refuse(dns.RcodeNXRrset, "prerequisite failed: %s has no %s records", show, dns.TypeToString[h.Rrtype])
			}
		case h.Class == dns.ClassNONE && h.Rrtype == dns.TypeANY:
			if len(at(name, dns.TypeANY)) > 0 {
				return refuse(dns.RcodeYXDomain, "prerequisite failed: %s has records", show)
			}
		case h.Class == dns.ClassNONE:
			if len(at(name, h.Rrtype)) > 0 {
				return refuse(dns.RcodeYXRrset, "prerequisite failed: %s has %s records", show, dns.TypeToString[h.Rrtype])
			}
		default: // class IN: the RRset must be exactly these records
			k := rrset{name, h.Rrtype}
			if _, ok := want[k]; !ok {
				order = append(order, k)
			}
			if !slices.ContainsFunc(want[k], func(o dns.RR) bool { return dns.IsDuplicate(o, rr) }) {
				want[k] = append(want[k], rr)
			}
		}
	}
	for _, k := range order {
		have := at(k.name, k.t)
		same := len(have) == len(want[k])
		for _, rr := range have {
			same = same && slices.ContainsFunc(want[k], func(o dns.RR) bool { return dns.IsDuplicate(o, rr) })
		}
		if !same {
			return refuse(dns.RcodeNXRrset, "prerequisite failed: the %s records of %s are not the ones given", dns.TypeToString[k.t], strings.TrimSuffix(k.name, "."))
		}
	}
	return nil
}

// apply applies the update section, in order, to the device's records as
// cur holds them and returns the edit that stores the result (RFC 2136
// §3.4.2). Every update is one permits allowed.
func (o ownNames) apply(cur store.Device, updates []dns.RR) (store.RecordEdit, error) {
	var v4, v6 []netip.Addr
	if cur.IPv4.IsValid() {
		v4 = append(v4, cur.IPv4)
	}
	if cur.IPv6.IsValid() {
		v6 = append(v6, cur.IPv6)
	}
	before := challengeValues(cur)
	txt := slices.Clone(before)
	for _, rr := range updates {
		h := rr.Header()
		if dns.CanonicalName(h.Name) == o.challenge {
			if err := applyTXT(&txt, rr); err != nil {
				return store.RecordEdit{}, err
			}
			continue
		}
		set := &v4
		if h.Rrtype == dns.TypeAAAA {
			set = &v6
		}
		switch h.Class {
		case dns.ClassANY:
			if h.Rrtype == dns.TypeANY {
				v4, v6 = nil, nil
			} else {
				*set = nil
			}
			continue
		}
		ip, ok := rdataAddr(rr)
		if !ok {
			return store.RecordEdit{}, refuse(dns.RcodeFormatError, "%s record without an address", dns.TypeToString[h.Rrtype])
		}
		if h.Class == dns.ClassNONE {
			*set = slices.DeleteFunc(*set, func(a netip.Addr) bool { return a == ip })
		} else if !slices.Contains(*set, ip) {
			*set = append(*set, ip)
		}
	}
	if len(v4) > 1 || len(v6) > 1 {
		return store.RecordEdit{}, refuse(dns.RcodeRefused,
			"%s would have two addresses of one family, and a device has one of each: delete the old one in the same update (update delete NAME A)", strings.TrimSuffix(o.name, "."))
	}
	var e store.RecordEdit
	if len(v4) == 1 {
		e.Address.IPv4 = v4[0]
	} else {
		e.Address.ClearIPv4 = true
	}
	if len(v6) == 1 {
		e.Address.IPv6 = v6[0]
	} else {
		e.Address.ClearIPv6 = true
	}
	// The values that went and those that came; those that stayed keep
	// their expiry.
	for _, v := range before {
		if !slices.Contains(txt, v) {
			e.Challenges.Remove = append(e.Challenges.Remove, v)
		}
	}
	for _, v := range txt {
		if !slices.Contains(before, v) {
			e.Challenges.Add = append(e.Challenges.Add, v)
		}
	}
	return e, nil
}

// applyTXT applies one update at the challenge name (TXT, or the deletion
// of every RRset there) to the values in txt.
func applyTXT(txt *[]string, rr dns.RR) error {
	h := rr.Header()
	if h.Class == dns.ClassANY { // the TXT RRset, or every RRset: the same here
		*txt = nil
		return nil
	}
	t, ok := rr.(*dns.TXT)
	if !ok || len(t.Txt) != 1 {
		return refuse(dns.RcodeRefused, "a challenge value is one TXT string, as an ACME client computes it")
	}
	v := t.Txt[0]
	if h.Class == dns.ClassNONE {
		*txt = slices.DeleteFunc(*txt, func(o string) bool { return o == v })
		return nil
	}
	if !slices.Contains(*txt, v) {
		*txt = append(*txt, v)
	}
	return nil
}

// rdataAddr is the address of an A or AAAA record, false when it has none.
func rdataAddr(rr dns.RR) (netip.Addr, bool) {
	switch rr := rr.(type) {
	case *dns.A:
		if a, ok := netip.AddrFromSlice(rr.A.To4()); ok {
			return a, true
		}
	case *dns.AAAA:
		if len(rr.AAAA) == net.IPv6len {
			a, ok := netip.AddrFromSlice(rr.AAAA)
			return a, ok
		}
	}
	return netip.Addr{}, false
}

package dnsserver

import (
	"cmp"
	"errors"
	"fmt"
	"iter"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/internal/netaddr"
	"github.com/nasreach/nasreach/store"
)

// Zone transfers to secondaries: AXFR (RFC 5936) of the whole zone and IXFR
// (RFC 1995) of what changed since a serial, over TCP only, to a listed
// secondary's address or to a request signed with a TSIG key that may
// transfer (tsig.go); everyone else is REFUSED. NOTIFY (RFC 1996) tells the
// listed secondaries of each change (notify.go).
//
// The zone as transferred:
//
//	<zone> SOA   ns1 hostmaster <serial> 1800 300 1209600 <ttl>
//	<zone> NS    each nameserver, then the glue A/AAAA of in-zone ones
//	<device>.<zone> A / AAAA   for each device that resolves (DDNS on), TTL --ttl
//	<zone> SOA   (again: the end)
//
// AXFR streams a store.ZoneSnapshot: one committed state, decoded device by
// device as it is written, in messages of about maxXFRMessage bytes, so
// that a million devices need no second copy of the zone in memory. IXFR
// answers from the journal (journal.go) in the condensed form, one
// difference sequence from the client's serial to ours; a serial the
// journal does not reach back to gets the whole zone in the IXFR answer
// (RFC 1995 §4), and over UDP an IXFR gets our SOA alone, which tells the
// client to come back over TCP (RFC 1995 §2).

// TransferConfig says who may transfer the zone and who is told of changes.
// The zero value allows no transfer and sends no NOTIFY.
type TransferConfig struct {
	// Secondaries may transfer from their address without a key, and each
	// gets a NOTIFY at its address and port after every change.
	Secondaries []Secondary
	// Keys are the TSIG keys the server verifies signed requests with and
	// signs NOTIFYs with. A request signed with a key whose Transfer is set
	// may transfer from any address. nil: every signed request is NOTAUTH
	// (BADKEY).
	Keys KeySource
	// JournalLen bounds the IXFR history; zero means DefaultJournalLen.
	JournalLen int
	// NotifyTimeout is how long a NOTIFY waits for its answer before it is
	// sent again; zero means DefaultNotifyTimeout.
	NotifyTimeout time.Duration
	// NotifyTries bounds how often one NOTIFY is sent; zero means
	// DefaultNotifyTries.
	NotifyTries int
	// NotifyInterval is the least time between two NOTIFYs to one
	// secondary (changes in between are coalesced into the next); zero
	// means DefaultNotifyInterval.
	NotifyInterval time.Duration
	// OnTransfer, if set, is told about every transfer request, served or
	// refused (metrics). It must not block.
	OnTransfer func(TransferEvent)
	// OnNotify, if set, is told how each NOTIFY ended. It must not block.
	OnNotify func(NotifyEvent)
}

// Secondary is a secondary nameserver of the zone.
type Secondary struct {
	// Addr is where NOTIFYs go; its address may transfer without a key.
	Addr netip.AddrPort
	// Key is the name of the TSIG key NOTIFYs to it are signed with; ""
	// sends them unsigned.
	Key string
}

// String is the secondary as --secondary takes it.
func (s Secondary) String() string {
	if s.Key == "" {
		return s.Addr.String()
	}
	return s.Addr.String() + " key=" + strings.TrimSuffix(s.Key, ".")
}

// TransferEvent describes one transfer request for OnTransfer.
type TransferEvent struct {
	Kind    string // "axfr", "ixfr" (incremental), "ixfr-full" (an IXFR answered with the whole zone)
	Outcome string // "ok", "uptodate", "refused", "notauth", "formerr", "udp", "failed"
	Serial  uint32 // the serial sent (ok, uptodate)
	Records int    // records sent
}

// maxXFRMessage is the estimated size at which a transfer message is sent
// and the next started: well under the 65,535 bytes a TCP message may have,
// with room for the question and a TSIG record.
const maxXFRMessage = 60 << 10

// xfrWriteTimeout bounds each write to a transfer client: one that stops
// reading for this long is dropped, which also ends the store snapshot the
// transfer holds open.
const xfrWriteTimeout = 20 * time.Second

// transfers is the Server's state for zone transfers and NOTIFY.
type transfers struct {
	journal     *journal
	journaling  atomic.Bool               // someone may transfer: keep the IXFR history
	keySource   atomic.Pointer[KeySource] // SetTransfer swaps it
	secondaries atomic.Pointer[[]Secondary]
	onTransfer  func(TransferEvent)
	stopXFR     chan struct{} // closed by Shutdown: transfers stop between messages
	notify      notifiers
}

// initTransfers sets up transfers from a validated cfg.
func (s *Server) initTransfers(cfg TransferConfig, serial uint32) {
	s.setTransfer(cfg.Secondaries, cfg.Keys)
	s.journal = newJournal(cfg.journalLen(), serial)
	s.onTransfer = cfg.OnTransfer
	s.stopXFR = make(chan struct{})
	s.notify.cfg = cfg
}

func (s *Server) setTransfer(secondaries []Secondary, keys KeySource) {
	if keys == nil {
		keys = Keys{}
	}
	secondaries = slices.Clone(secondaries)
	s.keySource.Store(&keys)
	s.secondaries.Store(&secondaries)
	// Without secondaries or transfer keys nobody can transfer: no history
	// is kept. When that changes the history starts afresh, since changes
	// made meanwhile are not in it.
	on := len(secondaries) > 0 || mayTransfer(keys)
	if s.journaling.Swap(on) != on && s.journal != nil {
		s.journal.reset()
	}
}

// mayTransfer reports whether ks may know a key that may transfer the
// zone: the devices' keys never do, a source of another kind always may.
func mayTransfer(ks KeySource) bool {
	switch k := ks.(type) {
	case nil, DeviceKeys:
		return false
	case StaticKeys:
		return slices.ContainsFunc(slices.Collect(maps.Values(k)), func(k Key) bool { return k.Transfer })
	case Keys:
		return slices.ContainsFunc(k, mayTransfer)
	}
	return true
}

// keys are the TSIG keys in force; the servers' TsigProvider reads them
// through this, so SetTransfer changes them for the next message.
func (s *Server) keys() KeySource { return *s.keySource.Load() }

// currentKeys is a KeySource that asks the server's keys in force.
type currentKeys struct{ s *Server }

// Key implements KeySource.
func (c currentKeys) Key(name string) (Key, bool) { return c.s.keys().Key(name) }

// SetTransfer replaces who may transfer and who gets NOTIFYs, as a reload
// does: the next request is judged by the new secondaries and keys, and the
// NOTIFY senders restart for the new list (each sending one NOTIFY). The
// other TransferConfig settings stay as New set them. An invalid list
// changes nothing.
func (s *Server) SetTransfer(secondaries []Secondary, keys KeySource) error {
	cfg := s.notify.cfg
	cfg.Secondaries, cfg.Keys = secondaries, keys
	if err := cfg.validate(); err != nil {
		return fmt.Errorf("dnsserver: %w", err)
	}
	s.setTransfer(secondaries, keys)
	s.restartNotifiers()
	return nil
}

// soaAt is the apex SOA with serial.
func (s *Server) soaAt(serial uint32) dns.RR {
	rr := s.soa(s.zone, s.soaTTL).(*dns.SOA)
	rr.Serial = serial
	return rr
}

// ZoneChanged takes one committed store change: a change to the zone
// (Serial set) goes into the IXFR history and wakes the NOTIFY senders.
// Register it with the store's OnChange; it does not block.
func (s *Server) ZoneChanged(c store.Change) {
	if c.Serial == 0 || !s.journaling.Load() {
		return
	}
	d := delta{serial: c.Serial, name: c.Device.Name}
	d.before, d.had = store.Resolvable(c.Before)
	if c.Kind != store.Deleted && c.Kind != store.Expired {
		d.after, d.has = store.Resolvable(&c.Device)
	}
	if s.journal.add(d, time.Now()) {
		s.notifyAll()
	}
}

// ZoneReloaded takes word that the store reloaded the zone whole, without
// the changes in between (an etcd watch that fell behind a compaction of
// the cluster's history): no delta describes them, so the IXFR history
// starts afresh (an IXFR from before is answered with the whole zone) and
// the secondaries are sent a NOTIFY of the serial now. Register it with the
// store's OnReload; it does not block.
func (s *Server) ZoneReloaded() {
	if !s.journaling.Load() {
		return
	}
	s.journal.reset()
	s.notifyAll()
}

// serveSpecial handles what the plain answer path does not: zone transfers
// and TSIG-signed requests. It reports whether it answered r.
func (s *Server) serveSpecial(w dns.ResponseWriter, r *dns.Msg) bool {
	if len(r.Question) != 1 {
		return false
	}
	qtype := r.Question[0].Qtype
	xfr := qtype == dns.TypeAXFR || qtype == dns.TypeIXFR
	tsig := r.IsTsig()
	if !xfr && tsig == nil {
		return false
	}
	if tsig != nil {
		if err := w.TsigStatus(); err != nil {
			rcode := writeTSIGError(w, r, err)
			s.log.Debug().Str("key", tsig.Hdr.Name).Str("tsig_error", dns.RcodeToString[rcode]).Msg("tsig-signed request refused")
			if xfr {
				s.transferEvent(TransferEvent{Kind: kindOf(qtype), Outcome: "notauth"})
			}
			return true
		}
	}
	if !xfr {
		s.answerSigned(w, r)
		return true
	}
	s.serveTransfer(w, r)
	return true
}

// answerSigned answers a signed query as ServeDNS would, signed with the
// request's key (RFC 8945 §5.3).
func (s *Server) answerSigned(w dns.ResponseWriter, r *dns.Msg) {
	m, size := s.answer(r)
	tcp := isTCP(w)
	if tcp {
		size = dns.MaxMsgSize
	}
	t := r.IsTsig()
	// Room for our TSIG record: its header, algorithm name and a MAC as
	// long as the request's.
	m.Truncate(size - (len(t.Hdr.Name) + len(t.Algorithm) + 32 + len(t.MAC)/2))
	m.Compress = true
	sign(m, t)
	if err := w.WriteMsg(m); err != nil {
		s.log.Debug().Err(err).Msg("dns write failed")
	}
	if s.onQuery != nil {
		s.onQuery(Query{Remote: netaddr.AddrPort(w.RemoteAddr()), name: r.Question[0].Name, Type: r.Question[0].Qtype, Rcode: m.Rcode, TCP: tcp})
	}
}

func isTCP(w dns.ResponseWriter) bool {
	_, tcp := w.LocalAddr().(*net.TCPAddr)
	return tcp
}

func kindOf(qtype uint16) string {
	if qtype == dns.TypeAXFR {
		return "axfr"
	}
	return "ixfr"
}

// transferAllowed says whether r may transfer the zone, and who asks (for
// the log): a request signed with a transfer key (the signature is
// verified by then), or one from a listed secondary's address.
func (s *Server) transferAllowed(w dns.ResponseWriter, r *dns.Msg) (who string, ok bool) {
	if t := r.IsTsig(); t != nil {
		if k, found := s.keys().Key(t.Hdr.Name); found && k.Transfer {
			return "key " + strings.TrimSuffix(k.Name, "."), true
		}
	}
	ip := netaddr.Addr(w.RemoteAddr())
	for _, sec := range *s.secondaries.Load() {
		if sec.Addr.Addr() == ip {
			return "secondary " + sec.Addr.Addr().String(), true
		}
	}
	return "", false
}

// serveTransfer answers an AXFR or IXFR query.
func (s *Server) serveTransfer(w dns.ResponseWriter, r *dns.Msg) {
	q := r.Question[0]
	kind := kindOf(q.Qtype)
	fail := func(rcode int, outcome string) {
		m := new(dns.Msg)
		m.SetRcode(r, rcode)
		m.RecursionAvailable = false
		if t := r.IsTsig(); t != nil {
			sign(m, t)
		}
		_ = w.WriteMsg(m)
		s.transferEvent(TransferEvent{Kind: kind, Outcome: outcome})
	}
	who, ok := s.transferAllowed(w, r)
	if !ok {
		fail(dns.RcodeRefused, "refused")
		return
	}
	if !strings.EqualFold(q.Name, s.zone) || (q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY) {
		fail(dns.RcodeNotAuth, "notauth") // not a zone we serve (RFC 5936 §2.2.1)
		return
	}
	tcp := isTCP(w)
	if q.Qtype == dns.TypeAXFR {
		if !tcp {
			fail(dns.RcodeRefused, "udp") // RFC 5936 §4.2: AXFR is TCP only
			return
		}
		s.sendFullZone(w, r, kind, who)
		return
	}
	// IXFR: the client's SOA is in the authority section (RFC 1995 §3).
	var clientSOA *dns.SOA
	for _, rr := range r.Ns {
		if soa, ok := rr.(*dns.SOA); ok && strings.EqualFold(soa.Hdr.Name, s.zone) {
			clientSOA = soa
		}
	}
	if clientSOA == nil {
		fail(dns.RcodeFormatError, "formerr")
		return
	}
	sp, ok := s.journal.since(clientSOA.Serial)
	switch {
	case ok && sp.from == sp.to, !tcp:
		// Up to date, or over UDP: our SOA alone (RFC 1995 §2, §4).
		serial := sp.to
		if !ok {
			serial = s.src.Serial()
		}
		out := s.newTransferWriter(w, r)
		out.add(s.soaAt(serial))
		err := out.flush()
		s.transferDone(kind, "uptodate", serial, out, err, who)
	case ok:
		s.sendIncremental(w, r, sp, who)
	default:
		s.sendFullZone(w, r, "ixfr-full", who)
	}
}

// sendFullZone streams the whole zone from one store snapshot.
func (s *Server) sendFullZone(w dns.ResponseWriter, r *dns.Msg, kind, who string) {
	out := s.newTransferWriter(w, r)
	var serial uint32
	err := s.src.ZoneSnapshot(func(snap uint32, devices iter.Seq2[string, store.Record]) error {
		serial = snap
		soa := s.soaAt(serial)
		out.add(soa)
		out.add(s.nsRecords(s.zone)...)
		out.add(s.caaRecords(s.zone)...)
		out.add(s.glueRecords()...)
		ttl := s.ttl.Load()
		for name, rec := range devices {
			out.add(deviceRecords(name+"."+s.zone, rec, ttl)...)
			if out.err != nil {
				return out.err
			}
		}
		out.add(soa)
		return out.flush()
	})
	s.transferDone(kind, "ok", serial, out, err, who)
}

// sendIncremental streams one condensed difference sequence (RFC 1995 §4):
// our SOA, the client's SOA, the records to delete, our SOA, the records
// to add, our SOA.
func (s *Server) sendIncremental(w dns.ResponseWriter, r *dns.Msg, sp span, who string) {
	out := s.newTransferWriter(w, r)
	newSOA := s.soaAt(sp.to)
	ttl := s.ttl.Load()
	out.add(newSOA, s.soaAt(sp.from))
	var added []dns.RR
	for _, c := range sp.devices {
		owner := c.name + "." + s.zone
		var before, after []dns.RR
		if c.had {
			before = deviceRecords(owner, c.before, ttl)
		}
		if c.has {
			after = deviceRecords(owner, c.after, ttl)
		}
		out.add(without(before, after)...)
		added = append(added, without(after, before)...)
	}
	out.add(newSOA)
	out.add(added...)
	out.add(newSOA)
	err := out.flush()
	s.transferDone("ixfr", "ok", sp.to, out, err, who)
}

// without returns the records of a that are not in b (same type and data).
func without(a, b []dns.RR) []dns.RR {
	var out []dns.RR
	for _, rr := range a {
		if !slices.ContainsFunc(b, func(o dns.RR) bool { return dns.IsDuplicate(rr, o) }) {
			out = append(out, rr)
		}
	}
	return out
}

// deviceRecords are a resolvable device's records in the zone. Every
// record kind a device has is listed here, once: AXFR and IXFR both use it.
func deviceRecords(owner string, rec store.Record, ttl uint32) []dns.RR {
	var out []dns.RR
	h := dns.RR_Header{Name: owner, Class: dns.ClassINET, Ttl: ttl}
	if a := rec.IPv4.Unmap(); a.Is4() {
		h.Rrtype = dns.TypeA
		out = append(out, &dns.A{Hdr: h, A: a.AsSlice()})
	}
	if a := rec.IPv6; a.Is6() && !a.Is4In6() {
		h.Rrtype = dns.TypeAAAA
		out = append(out, &dns.AAAA{Hdr: h, AAAA: a.AsSlice()})
	}
	return append(out, challengeRecords(owner, rec, ttl)...)
}

// transferDone logs and counts a finished transfer.
func (s *Server) transferDone(kind, outcome string, serial uint32, out *transferWriter, err error, who string) {
	if err != nil {
		s.log.Warn().Err(err).Str("kind", kind).Str("peer", who).Int("records", out.records).Msg("zone transfer failed")
		outcome = "failed"
	} else {
		s.recordTransfer(netaddr.Addr(out.w.RemoteAddr()), serial)
		s.log.Info().Str("kind", kind).Str("peer", who).Uint32("serial", serial).Int("records", out.records).
			Int("messages", out.messages).Str("took", time.Since(out.started).Round(time.Millisecond).String()).Msg("zone transfer")
	}
	s.transferEvent(TransferEvent{Kind: kind, Outcome: outcome, Serial: serial, Records: out.records})
}

func (s *Server) transferEvent(e TransferEvent) {
	if s.onTransfer != nil {
		s.onTransfer(e)
	}
}

// transferWriter packs records into messages of about maxXFRMessage bytes
// and writes each as it fills, signed when the request was (every message:
// RFC 8945 §5.3.1 chains each MAC to the one before).
type transferWriter struct {
	w        dns.ResponseWriter
	r        *dns.Msg
	zone     string
	stop     <-chan struct{}
	pending  []dns.RR
	size     int
	records  int
	messages int
	started  time.Time
	err      error
}

func (s *Server) newTransferWriter(w dns.ResponseWriter, r *dns.Msg) *transferWriter {
	return &transferWriter{w: w, r: r, zone: s.zone, stop: s.stopXFR, started: time.Now()}
}

func (t *transferWriter) add(rrs ...dns.RR) {
	for _, rr := range rrs {
		if t.err != nil {
			return
		}
		n := compressedLen(rr, t.zone)
		if t.size+n > maxXFRMessage {
			t.err = t.flush()
		}
		t.pending = append(t.pending, rr)
		t.size += n
	}
}

// flush writes the records added so far as one message.
func (t *transferWriter) flush() error {
	if t.err != nil || len(t.pending) == 0 {
		return t.err
	}
	select {
	case <-t.stop:
		t.err = errors.New("server shutting down")
		return t.err
	default:
	}
	m := new(dns.Msg)
	m.SetReply(t.r)
	m.Authoritative, m.RecursionAvailable, m.Compress = true, false, true
	m.Answer = t.pending
	if tsig := t.r.IsTsig(); tsig != nil {
		sign(m, tsig)
	}
	if err := t.w.WriteMsg(m); err != nil {
		t.err = fmt.Errorf("write message %d: %w", t.messages+1, err)
		return t.err
	}
	t.w.TsigTimersOnly(true)
	t.messages++
	t.records += len(t.pending)
	t.pending, t.size = t.pending[:0], 0
	return nil
}

// compressedLen bounds the size of rr in a message whose question names
// the zone: an owner below the zone is its own labels and a pointer.
func compressedLen(rr dns.RR, zone string) int {
	n := dns.Len(rr)
	owner := rr.Header().Name
	if len(owner) > len(zone) && strings.HasSuffix(owner, zone) {
		n -= len(zone) - 2 // the zone's labels become a 2-byte pointer
	}
	return n
}

// writeDeadlineListener gives every accepted TCP connection a deadline on
// each write, so that a client which stops reading (a transfer that
// stalls) is dropped instead of holding its handler forever.
type writeDeadlineListener struct {
	net.Listener
	timeout time.Duration
}

func (l writeDeadlineListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return writeDeadlineConn{Conn: c, timeout: l.timeout}, nil
}

type writeDeadlineConn struct {
	net.Conn
	timeout time.Duration
}

func (c writeDeadlineConn) Write(p []byte) (int, error) {
	if err := c.SetWriteDeadline(time.Now().Add(c.timeout)); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

// validateTransfer checks the secondaries and that each NOTIFY key exists.
func (cfg TransferConfig) validate() error {
	var errs []error
	seen := map[netip.AddrPort]bool{}
	for _, sec := range cfg.Secondaries {
		if !sec.Addr.IsValid() || sec.Addr.Port() == 0 || sec.Addr.Addr().IsUnspecified() {
			errs = append(errs, fmt.Errorf("secondary %q: want IP[:PORT] of one secondary", sec.Addr))
			continue
		}
		if seen[sec.Addr] {
			errs = append(errs, fmt.Errorf("secondary %s is given twice", sec.Addr))
		}
		seen[sec.Addr] = true
		if sec.Key != "" {
			if cfg.Keys == nil {
				errs = append(errs, fmt.Errorf("secondary %s: no TSIG key %s is configured", sec.Addr, sec.Key))
			} else if _, ok := cfg.Keys.Key(dns.CanonicalName(sec.Key)); !ok {
				errs = append(errs, fmt.Errorf("secondary %s: no TSIG key %s is configured", sec.Addr, sec.Key))
			}
		}
	}
	if cfg.JournalLen < 0 || cfg.NotifyTries < 0 || cfg.NotifyTimeout < 0 || cfg.NotifyInterval < 0 {
		errs = append(errs, errors.New("transfer: JournalLen, NotifyTries, NotifyTimeout and NotifyInterval must not be negative"))
	}
	return errors.Join(errs...)
}

// journalLen is the configured journal length or its default.
func (cfg TransferConfig) journalLen() int { return cmp.Or(cfg.JournalLen, DefaultJournalLen) }

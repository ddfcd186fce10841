package dnsserver

import (
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/store"
)

const (
	xfrZone   = "myqnapcloud.com."
	xfrKey    = "xfr.example."
	xfrSecret = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTMyYnk=" // 32 bytes
)

// xfrKeys is the one transfer key the tests configure.
func xfrKeys(t testing.TB) StaticKeys {
	t.Helper()
	k, err := ParseKey("xfr.example:hmac-sha256:" + xfrSecret)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := NewStaticKeys([]Key{k})
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// startXFRServer starts a server on st with tc and feeds it st's changes, as
// the daemon does.
func startXFRServer(t testing.TB, st *store.Store, tc TransferConfig) *Server {
	t.Helper()
	s := startServer(t, Config{Source: st, Transfer: tc, NameServers: []NameServer{{Name: "ns1", Addrs: mustAddrs("192.0.2.53")}}})
	st.OnChange(s.ZoneChanged)
	return s
}

// secondaryAt lists addr (port 53) as a secondary.
func secondaryAt(addr string) []Secondary {
	return []Secondary{{Addr: netip.AddrPortFrom(netip.MustParseAddr(addr), 53)}}
}

// transfer runs a zone transfer query m against s over TCP and returns the
// records of every message, the number of messages and the error.
func transfer(t testing.TB, s *Server, m *dns.Msg, tsig map[string]string) (rrs []dns.RR, messages int, err error) {
	t.Helper()
	tr := &dns.Transfer{TsigSecret: tsig, ReadTimeout: 10 * time.Second}
	ch, err := tr.In(m, s.Addr().String())
	if err != nil {
		return nil, 0, err
	}
	for env := range ch {
		if env.Error != nil {
			err = env.Error
			continue
		}
		messages++
		rrs = append(rrs, env.RR...)
	}
	return rrs, messages, err
}

func axfrQuery() *dns.Msg { return new(dns.Msg).SetAxfr(xfrZone) }

func ixfrQuery(serial uint32) *dns.Msg {
	return new(dns.Msg).SetIxfr(xfrZone, serial, "ns1."+xfrZone, "hostmaster."+xfrZone)
}

func signed(m *dns.Msg, key string) *dns.Msg {
	m.SetTsig(key, dns.HmacSHA256, 300, time.Now().Unix())
	return m
}

// strs is rrs in presentation format, the SOA serial replaced by {serial}.
func strs(rrs []dns.RR) []string {
	var out []string
	for _, rr := range rrs {
		if soa, ok := rr.(*dns.SOA); ok {
			c := *soa
			c.Serial = 0
			out = append(out, strings.Replace(strings.ReplaceAll(c.String(), "\t", " "), " 0 1800", " {serial} 1800", 1))
			continue
		}
		out = append(out, strings.ReplaceAll(rr.String(), "\t", " "))
	}
	return out
}

func TestAXFRIsTheWholeZoneAtOneSerialWithoutDDNSOffDevices(t *testing.T) {
	st := openStore(t)
	addDevice(t, st, "nas1", "198.51.100.1", "2001:db8:1::1")
	addDevice(t, st, "cam", "198.51.100.2", "")
	addDevice(t, st, "fresh", "", "")
	addDevice(t, st, "sleepy", "198.51.100.3", "")
	setDDNS(t, st, "sleepy", false)
	s := startXFRServer(t, st, TransferConfig{Secondaries: secondaryAt("127.0.0.1")})

	rrs, _, err := transfer(t, s, axfrQuery(), nil)
	if err != nil {
		t.Fatalf("AXFR from a listed secondary: %v", err)
	}
	if got := strs(rrs); !slices.Equal(got, []string{
		soaApex,
		"myqnapcloud.com. 3600 IN NS ns1.myqnapcloud.com.",
		"ns1.myqnapcloud.com. 3600 IN A 192.0.2.53",
		"cam.myqnapcloud.com. 60 IN A 198.51.100.2",
		"nas1.myqnapcloud.com. 60 IN A 198.51.100.1",
		"nas1.myqnapcloud.com. 60 IN AAAA 2001:db8:1::1",
		soaApex,
	}) {
		t.Errorf("AXFR is\n%s\nwant the SOA, NS, glue, cam and nas1 (no sleepy: DDNS off), the SOA", strings.Join(got, "\n"))
	}
	if soa := rrs[0].(*dns.SOA); soa.Serial != st.Serial() {
		t.Errorf("AXFR serial %d, zone serial %d", soa.Serial, st.Serial())
	}
}

func TestTransfersAreRefusedUnlessListedOrSigned(t *testing.T) {
	st := openStore(t)
	addDevice(t, st, "nas1", "198.51.100.1", "")
	// The test's client is 127.0.0.1, which is not listed.
	s := startXFRServer(t, st, TransferConfig{Secondaries: secondaryAt("127.0.0.2"), Keys: xfrKeys(t)})
	for _, q := range []*dns.Msg{axfrQuery(), ixfrQuery(1)} {
		if _, _, err := transfer(t, s, q, nil); err == nil || !strings.Contains(err.Error(), fmt.Sprint(dns.RcodeRefused)) {
			t.Errorf("unsigned %s from an address not listed: %v, want REFUSED", dns.TypeToString[q.Question[0].Qtype], err)
		}
	}
	// Over UDP not even a listed secondary gets the zone.
	listed := startXFRServer(t, st, TransferConfig{Secondaries: secondaryAt("127.0.0.1")})
	r, _, err := (&dns.Client{Net: "udp", Timeout: 2 * time.Second}).Exchange(axfrQuery(), listed.Addr().String())
	if err != nil || r.Rcode != dns.RcodeRefused || len(r.Answer) != 0 {
		t.Errorf("AXFR over UDP: %v %v, want REFUSED", r, err)
	}
	// Another zone's transfer is NOTAUTH for whoever asks.
	if _, _, err := transfer(t, listed, new(dns.Msg).SetAxfr("example.org."), nil); err == nil || !strings.Contains(err.Error(), fmt.Sprint(dns.RcodeNotAuth)) {
		t.Errorf("AXFR of another zone: %v, want NOTAUTH", err)
	}
}

func TestTSIGSignedTransferFromAnywhereAndBadKeysAreNotAuth(t *testing.T) {
	st := openStore(t)
	addDevice(t, st, "nas1", "198.51.100.1", "")
	s := startXFRServer(t, st, TransferConfig{Secondaries: secondaryAt("127.0.0.2"), Keys: xfrKeys(t)})

	// Signed with the key: allowed from an address not listed, and every
	// message's signature verifies (dns.Transfer checks each one).
	rrs, _, err := transfer(t, s, signed(axfrQuery(), xfrKey), map[string]string{xfrKey: xfrSecret})
	if err != nil || len(rrs) != 5 {
		t.Fatalf("signed AXFR: %d records, %v; want the zone's 5", len(rrs), err)
	}

	otherSecret := base64.StdEncoding.EncodeToString([]byte("another-secret-another-secret-32"))
	for _, c := range []struct {
		what, key, secret string
		tsigErr           uint16
	}{
		{"an unknown key", "nosuch.example.", xfrSecret, dns.RcodeBadKey},
		{"the right key with the wrong secret", xfrKey, otherSecret, dns.RcodeBadSig},
	} {
		q := signed(axfrQuery(), c.key)
		c1 := &dns.Client{Net: "tcp", Timeout: 2 * time.Second, TsigSecret: map[string]string{c.key: c.secret}}
		r, _, err := c1.Exchange(q, s.Addr().String())
		if r == nil {
			t.Fatalf("AXFR signed with %s: no answer: %v", c.what, err)
		}
		tsig := r.IsTsig()
		if r.Rcode != dns.RcodeNotAuth || tsig == nil || tsig.Error != c.tsigErr || len(r.Answer) != 0 {
			t.Errorf("AXFR signed with %s: rcode %s, TSIG %v; want NOTAUTH with TSIG error %s", c.what, dns.RcodeToString[r.Rcode], tsig, dns.RcodeToString[int(c.tsigErr)])
		}
	}

	// A signed ordinary query gets a signed answer.
	c := &dns.Client{Net: "udp", Timeout: 2 * time.Second, TsigSecret: map[string]string{xfrKey: xfrSecret}}
	r, _, err := c.Exchange(signed(new(dns.Msg).SetQuestion("nas1."+xfrZone, dns.TypeA), xfrKey), s.Addr().String())
	if err != nil || r.IsTsig() == nil || len(r.Answer) != 1 {
		t.Errorf("signed A query: %v %v; want the answer, signed", r, err)
	}
}

func TestIXFRSendsWhatChangedSinceTheClientsSerial(t *testing.T) {
	st := openStore(t)
	addDevice(t, st, "nas1", "198.51.100.1", "2001:db8:1::1")
	addDevice(t, st, "cam", "198.51.100.2", "")
	addDevice(t, st, "sleepy", "198.51.100.3", "")
	setDDNS(t, st, "sleepy", false)
	s := startXFRServer(t, st, TransferConfig{Secondaries: secondaryAt("127.0.0.1")})
	start := st.Serial()
	ctx := t.Context()

	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(setAddr(ctx, st, "nas1", "203.0.113.1"))
	must(st.Delete(ctx, "cam"))
	addDevice(t, st, "new", "203.0.113.9", "")
	must(setAddr(ctx, st, "nas1", "203.0.113.2")) // condensed: 198.51.100.1 → 203.0.113.2
	must(ddns(ctx, st, "sleepy", true))
	end := st.Serial()

	rrs, _, err := transfer(t, s, ixfrQuery(start), nil)
	if err != nil {
		t.Fatal(err)
	}
	got := strs(rrs)
	want := []string{soaApex, soaApex,
		"nas1.myqnapcloud.com. 60 IN A 198.51.100.1",
		"cam.myqnapcloud.com. 60 IN A 198.51.100.2",
		soaApex,
		"nas1.myqnapcloud.com. 60 IN A 203.0.113.2",
		"new.myqnapcloud.com. 60 IN A 203.0.113.9",
		"sleepy.myqnapcloud.com. 60 IN A 198.51.100.3",
		soaApex,
	}
	if !slices.Equal(got, want) {
		t.Errorf("IXFR from %d is\n%s\nwant\n%s", start, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	serials := []uint32{rrs[0].(*dns.SOA).Serial, rrs[1].(*dns.SOA).Serial, rrs[4].(*dns.SOA).Serial, rrs[len(rrs)-1].(*dns.SOA).Serial}
	if !slices.Equal(serials, []uint32{end, start, end, end}) {
		t.Errorf("IXFR SOA serials %v, want %v", serials, []uint32{end, start, end, end})
	}

	// Up to date: our SOA alone.
	if rrs, _, err := transfer(t, s, ixfrQuery(end), nil); err != nil || len(rrs) != 1 || rrs[0].(*dns.SOA).Serial != end {
		t.Errorf("IXFR from the current serial: %v %v, want the SOA alone", rrs, err)
	}
	// Over UDP: our SOA alone, whatever the serial (RFC 1995 §2).
	r, _, err := (&dns.Client{Net: "udp", Timeout: 2 * time.Second}).Exchange(ixfrQuery(start), s.Addr().String())
	if err != nil || len(r.Answer) != 1 || r.Answer[0].(*dns.SOA).Serial != end {
		t.Errorf("IXFR over UDP: %v %v, want our SOA alone", r, err)
	}
	// A serial from before the history: the whole zone, in the IXFR answer.
	rrs, _, err = transfer(t, s, ixfrQuery(start-1), nil)
	if err != nil || len(rrs) < 2 || rrs[0].(*dns.SOA).Serial != end || rrs[len(rrs)-1].(*dns.SOA).Serial != end ||
		!slices.Contains(strs(rrs), "new.myqnapcloud.com. 60 IN A 203.0.113.9") || slices.Contains(strs(rrs), soaApex+"x") {
		t.Errorf("IXFR from before the history: %v %v, want the whole zone", strs(rrs), err)
	}
	// Without an SOA in the authority section: FORMERR.
	bad := new(dns.Msg).SetQuestion(xfrZone, dns.TypeIXFR)
	if r, _, err := (&dns.Client{Net: "tcp", Timeout: 2 * time.Second}).Exchange(bad, s.Addr().String()); err != nil || r.Rcode != dns.RcodeFormatError {
		t.Errorf("IXFR without the client's SOA: %v %v, want FORMERR", r, err)
	}
}

func TestIXFRFallsBackToTheWholeZoneWhenTheHistoryIsTooShortOrTheTTLChanged(t *testing.T) {
	st := openStore(t)
	addDevice(t, st, "nas1", "198.51.100.1", "")
	s := startXFRServer(t, st, TransferConfig{Secondaries: secondaryAt("127.0.0.1"), JournalLen: 2})
	start := st.Serial()
	ctx := t.Context()
	for i := range 3 {
		if err := setAddr(ctx, st, "nas1", fmt.Sprintf("203.0.113.%d", i+1)); err != nil {
			t.Fatal(err)
		}
	}
	isFull := func(rrs []dns.RR) bool {
		return slices.Contains(strs(rrs), "ns1.myqnapcloud.com. 3600 IN A 192.0.2.53")
	}
	if rrs, _, err := transfer(t, s, ixfrQuery(start), nil); err != nil || !isFull(rrs) {
		t.Errorf("IXFR three changes back with a history of two: %v %v, want the whole zone", strs(rrs), err)
	}
	if rrs, _, err := transfer(t, s, ixfrQuery(start+1), nil); err != nil || isFull(rrs) || len(rrs) != 6 {
		t.Errorf("IXFR two changes back: %v %v, want the difference", strs(rrs), err)
	}
	// A new TTL changes every record: the next change goes out whole.
	if err := s.SetTTL(2 * time.Minute); err != nil {
		t.Fatal(err)
	}
	before := st.Serial()
	if err := setAddr(ctx, st, "nas1", "203.0.113.99"); err != nil {
		t.Fatal(err)
	}
	rrs, _, err := transfer(t, s, ixfrQuery(before), nil)
	if err != nil || !isFull(rrs) || !slices.Contains(strs(rrs), "nas1.myqnapcloud.com. 120 IN A 203.0.113.99") {
		t.Errorf("IXFR across a TTL change: %v %v, want the whole zone with TTL 120", strs(rrs), err)
	}
}

// addDevices creates n devices named d0000… with address base+i, several
// at a time so that the store batches their commits.
func addDevices(t testing.TB, st *store.Store, n int, addr func(i int) netip.Addr) []string {
	t.Helper()
	names := make([]string, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				names[i] = fmt.Sprintf("d%05d", i)
				if _, _, err := st.Create(context.Background(), names[i], store.CreateOptions{}); err != nil {
					errs <- err
					return
				}
				if _, _, err := st.SetAddress(context.Background(), names[i], store.AddressUpdate{IPv4: addr(i)}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return names
}

func addrA(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}) }
func addrB(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 2, byte(i >> 8), byte(i)}) }

// TestAXFRStreamsInSeveralMessagesConsistentWhileUpdatesGoOn: updates made
// during a transfer do not show in it; what it holds is exactly the zone at
// its serial.
func TestAXFRStreamsInSeveralMessagesConsistentWhileUpdatesGoOn(t *testing.T) {
	const n = 5000
	st := openStore(t)
	names := addDevices(t, st, n, addrA)
	s := startXFRServer(t, st, TransferConfig{Secondaries: secondaryAt("127.0.0.1")})
	start := st.Serial()

	// One writer moves the devices to addrB in order: the state at serial
	// start+k has exactly the first k moved. The transfer starts once it is
	// under way.
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		for i := n - 1; i >= 0; i-- {
			select {
			case <-stop:
				return
			default:
			}
			if _, _, err := st.SetAddress(context.Background(), names[i], store.AddressUpdate{IPv4: addrB(i)}); err != nil {
				t.Error(err)
				return
			}
		}
	})
	testutil.WaitFor(t, 10*time.Second, "the updates to begin", func() bool { return st.Serial()-start >= 20 })
	rrs, messages, err := transfer(t, s, axfrQuery(), nil)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if messages < 2 {
		t.Errorf("%d devices came in %d messages, want several of about 60 KiB", n, messages)
	}
	serial := rrs[0].(*dns.SOA).Serial
	moved := int(serial - start)
	var devices int
	for _, rr := range rrs {
		a, ok := rr.(*dns.A)
		if !ok || !strings.HasPrefix(a.Hdr.Name, "d") {
			continue
		}
		devices++
		var i int
		fmt.Sscanf(a.Hdr.Name, "d%05d.", &i)
		got, _ := netip.AddrFromSlice(a.A.To4())
		want := addrA(i)
		if i >= n-moved {
			want = addrB(i)
		}
		if got != want {
			t.Fatalf("at serial %d (%d moved) %s is %s, want %s: the transfer mixes states", serial, moved, a.Hdr.Name, got, want)
		}
	}
	if devices != n {
		t.Errorf("%d devices transferred, want %d", devices, n)
	}
	t.Logf("%d devices in %d messages at serial %d, %d updates in by then, %d by the end", n, messages, serial, moved, st.Serial()-start)
}

// notifyListener is a secondary's NOTIFY port: it records every NOTIFY and
// answers those that answer(i) allows (i counts from 0).
type notifyListener struct {
	pc   net.PacketConn
	mu   sync.Mutex
	msgs []*dns.Msg
	keys map[string]string
	// primary, once set, is asked for an IXFR from each answered NOTIFY's
	// serial, as a secondary that is up to date asks.
	primary atomic.Pointer[Server]
}

func listenNotify(t *testing.T, answer func(i int) bool, tsig map[string]string) *notifyListener {
	t.Helper()
	nl := &notifyListener{pc: testutil.ListenUDP(t), keys: tsig}
	go func() {
		buf := make([]byte, 65535)
		for i := 0; ; i++ {
			n, from, err := nl.pc.ReadFrom(buf)
			if err != nil {
				return
			}
			m := new(dns.Msg)
			if m.Unpack(buf[:n]) != nil {
				continue
			}
			if m.IsTsig() != nil {
				if err := dns.TsigVerify(buf[:n], tsig[m.IsTsig().Hdr.Name], "", false); err != nil {
					t.Errorf("NOTIFY signature: %v", err)
				}
			}
			nl.mu.Lock()
			nl.msgs = append(nl.msgs, m)
			nl.mu.Unlock()
			if answer(i) {
				r := new(dns.Msg).SetReply(m)
				out, _ := r.Pack()
				nl.pc.WriteTo(out, from)
				if p := nl.primary.Load(); p != nil && len(m.Answer) == 1 {
					tr := &dns.Transfer{TsigSecret: tsig}
					q := ixfrQuery(m.Answer[0].(*dns.SOA).Serial)
					if len(tsig) > 0 {
						signed(q, xfrKey)
					}
					if ch, err := tr.In(q, p.Addr().String()); err == nil {
						for range ch {
						}
					}
				}
			}
		}
	}()
	return nl
}

func (nl *notifyListener) got() []*dns.Msg {
	nl.mu.Lock()
	defer nl.mu.Unlock()
	return slices.Clone(nl.msgs)
}

func (nl *notifyListener) secondary(key string) Secondary {
	return Secondary{Addr: netip.MustParseAddrPort(nl.pc.LocalAddr().String()), Key: key}
}

func lastSerial(msgs []*dns.Msg) uint32 {
	if len(msgs) == 0 || len(msgs[len(msgs)-1].Answer) != 1 {
		return 0
	}
	return msgs[len(msgs)-1].Answer[0].(*dns.SOA).Serial
}

func TestNotifyIsSentAtStartAndCoalescedOverABurst(t *testing.T) {
	st := openStore(t)
	addDevice(t, st, "nas1", "198.51.100.1", "")
	nl := listenNotify(t, func(int) bool { return true }, nil)
	var events sync.Map
	nl.primary.Store(startXFRServer(t, st, TransferConfig{Secondaries: []Secondary{nl.secondary("")}, OnNotify: func(e NotifyEvent) {
		v, _ := events.LoadOrStore(e.Outcome, new(atomic.Int64))
		v.(*atomic.Int64).Add(1)
	}}))
	testutil.WaitFor(t, 5*time.Second, "the NOTIFY at start", func() bool { return lastSerial(nl.got()) == st.Serial() })
	m := nl.got()[0]
	if m.Opcode != dns.OpcodeNotify || !m.Authoritative || m.Question[0].Name != xfrZone || m.Question[0].Qtype != dns.TypeSOA {
		t.Errorf("NOTIFY is %v, want opcode NOTIFY, AA, question %s SOA", m, xfrZone)
	}

	const burst = 1000
	ctx := t.Context()
	began := time.Now()
	for i := range burst {
		if err := setAddr(ctx, st, "nas1", addrA(i).String()); err != nil {
			t.Fatal(err)
		}
	}
	took := time.Since(began)
	testutil.WaitFor(t, 5*time.Second, "a NOTIFY with the last serial", func() bool { return lastSerial(nl.got()) == st.Serial() })
	time.Sleep(2 * DefaultNotifyInterval) // any NOTIFY still to come
	sent := len(nl.got()) - 1
	t.Logf("%d updates in %s cost %d NOTIFYs", burst, took.Round(time.Millisecond), sent)
	if most := int(took/DefaultNotifyInterval) + 2; sent > most {
		t.Errorf("%d updates in %s sent %d NOTIFYs, want at most one per %s (%d)", burst, took, sent, DefaultNotifyInterval, most)
	}
	if v, _ := events.Load("ok"); v == nil || v.(*atomic.Int64).Load() != int64(sent+1) {
		t.Errorf("OnNotify counted %v ok, want %d", v, sent+1)
	}
}

func TestNotifyIsSentAgainUntilAnsweredAndSigned(t *testing.T) {
	st := openStore(t)
	nl := listenNotify(t, func(i int) bool { return i >= 2 }, map[string]string{xfrKey: xfrSecret})
	nl.primary.Store(startXFRServer(t, st, TransferConfig{Secondaries: []Secondary{nl.secondary(xfrKey)}, Keys: xfrKeys(t),
		NotifyTimeout: 100 * time.Millisecond}))
	testutil.WaitFor(t, 5*time.Second, "three tries of the first NOTIFY", func() bool { return len(nl.got()) >= 3 })
	time.Sleep(300 * time.Millisecond)
	msgs := nl.got()
	if len(msgs) != 3 {
		t.Errorf("%d NOTIFYs, want 3: two unanswered, the third answered and the last", len(msgs))
	}
	for _, m := range msgs {
		if m.IsTsig() == nil || m.IsTsig().Hdr.Name != xfrKey {
			t.Errorf("NOTIFY not signed with %s: %v", xfrKey, m)
		}
	}
}

// TestNotifyIsSentAgainWhenTheSecondaryDoesNotTransfer: a secondary that
// answers but does not transfer (Knot drops a NOTIFY while it transfers)
// is told again.
func TestNotifyIsSentAgainWhenTheSecondaryDoesNotTransfer(t *testing.T) {
	st := openStore(t)
	nl := listenNotify(t, func(int) bool { return true }, nil)
	startXFRServer(t, st, TransferConfig{Secondaries: []Secondary{nl.secondary("")}})
	testutil.WaitFor(t, 5*time.Second, "the NOTIFY and its resends", func() bool { return len(nl.got()) == 1+notifyResends })
	time.Sleep(2 * notifyConfirmWait)
	if n := len(nl.got()); n != 1+notifyResends {
		t.Errorf("%d NOTIFYs to a secondary that never transfers, want %d", n, 1+notifyResends)
	}
}

func TestShutdownStopsTheNotifySenders(t *testing.T) {
	st := openStore(t)
	nl := listenNotify(t, func(int) bool { return false }, nil) // never answers: the sender waits
	before := settledGoroutines()
	s, err := newTestServer(Config{Addr: "127.0.0.1:0", Source: st, Transfer: TransferConfig{Secondaries: []Secondary{nl.secondary("")}}})
	if err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 5*time.Second, "a NOTIFY", func() bool { return len(nl.got()) > 0 })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	waitGoroutines(t, before)
}

func TestParseKeyTakesBothOrdersAndRefusesWeakOnes(t *testing.T) {
	for _, c := range []struct {
		in, err string
	}{
		{"xfr.example:hmac-sha256:" + xfrSecret, ""},
		{"hmac-sha256:xfr.example:" + xfrSecret, ""},
		{"XFR.Example.:HMAC-SHA256:" + xfrSecret, ""},
		{"xfr.example:" + xfrSecret, "want NAME:hmac-sha256:BASE64SECRET"},
		{"xfr.example:" + xfrSecret + ":hmac-sha256", "no algorithm"},
		{"xfr.example:hmac-md5:" + xfrSecret, "unknown algorithm"},
		{"xfr.example:hmac-sha256:not base64!", "not base64"},
		{"xfr.example:hmac-sha256:c2hvcnQ=", "want at least 16"},
		{"bad..name:hmac-sha256:" + xfrSecret, "not a domain name"},
	} {
		k, err := ParseKey(c.in)
		if c.err == "" {
			if err != nil || k.Name != xfrKey || k.Algorithm != dns.HmacSHA256 || len(k.Secret) != 32 || !k.Transfer {
				t.Errorf("ParseKey(%q) = %+v, %v", c.in, k, err)
			}
			if strings.Contains(k.String(), xfrSecret) {
				t.Errorf("Key.String shows the secret: %s", k)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("ParseKey(%q) = %v, want an error with %q", c.in, err, c.err)
		}
	}
}

func TestJournalOrdersLateChangesAndForgetsAGapThatStays(t *testing.T) {
	now := time.Now()
	j := newJournal(4, 10)
	d := func(serial uint32) delta { return delta{serial: serial, name: fmt.Sprint("d", serial), has: true} }
	j.add(d(12), now) // ahead of 11: waits
	if sp, _ := j.since(10); sp.to != 10 {
		t.Fatalf("head moved to %d past a missing serial", sp.to)
	}
	j.add(d(11), now)
	if sp, ok := j.since(10); !ok || sp.to != 12 || len(sp.devices) != 2 {
		t.Fatalf("after the late change: %+v %v, want 11 and 12", sp, ok)
	}
	for s := uint32(13); s <= 16; s++ {
		j.add(d(s), now)
	}
	if _, ok := j.since(11); ok {
		t.Error("a history of 4 still reaches back 5 changes")
	}
	if sp, ok := j.since(12); !ok || len(sp.devices) != 4 {
		t.Errorf("since 12: %+v %v, want 4 changes", sp, ok)
	}
	// 17 never comes; 18 waits, then gives up and starts the history anew.
	j.add(d(18), now)
	j.add(d(19), now.Add(3*time.Second))
	if _, ok := j.since(16); ok {
		t.Error("the history still claims to reach across a gap that never closed")
	}
	if sp, ok := j.since(19); !ok || sp.to != 19 {
		t.Errorf("after the gap: %+v %v, want the history to start at 19", sp, ok)
	}
	// The serial skips 0 when it wraps, as the store counts.
	w := newJournal(4, 0xFFFFFFFF)
	w.add(d(1), now)
	if sp, ok := w.since(0xFFFFFFFF); !ok || sp.to != 1 {
		t.Errorf("across the wrap: %+v %v", sp, ok)
	}
}

func TestSetTransferChangesWhoMayTransferAndWhoIsNotified(t *testing.T) {
	st := openStore(t)
	addDevice(t, st, "nas1", "198.51.100.1", "")
	old := listenNotify(t, func(int) bool { return true }, nil)
	s := startXFRServer(t, st, TransferConfig{Secondaries: []Secondary{{Addr: netip.MustParseAddrPort("127.0.0.2:53")}, old.secondary("")}})
	testutil.WaitFor(t, 5*time.Second, "the NOTIFY at start", func() bool { return len(old.got()) > 0 })
	if _, _, err := transfer(t, s, signed(axfrQuery(), xfrKey), map[string]string{xfrKey: xfrSecret}); err == nil {
		t.Fatal("a transfer signed with a key not yet configured succeeded")
	}

	if err := s.SetTransfer([]Secondary{{Addr: netip.MustParseAddrPort("127.0.0.2:53"), Key: "nosuch"}}, nil); err == nil {
		t.Error("SetTransfer took a secondary whose NOTIFY key is not configured")
	}
	nl := listenNotify(t, func(int) bool { return true }, nil)
	if err := s.SetTransfer([]Secondary{nl.secondary("")}, xfrKeys(t)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := transfer(t, s, signed(axfrQuery(), xfrKey), map[string]string{xfrKey: xfrSecret}); err != nil {
		t.Errorf("a transfer signed with the key the reload added: %v", err)
	}
	testutil.WaitFor(t, 5*time.Second, "a NOTIFY to the new secondary", func() bool { return len(nl.got()) > 0 })
	before := len(old.got())
	if err := setAddr(t.Context(), st, "nas1", "203.0.113.1"); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 5*time.Second, "the change's NOTIFY to the new secondary", func() bool { return lastSerial(nl.got()) == st.Serial() })
	time.Sleep(2 * DefaultNotifyInterval)
	if n := len(old.got()); n != before {
		t.Errorf("the secondary the reload removed got %d more NOTIFYs", n-before)
	}
}

func TestNoHistoryIsKeptWhenNobodyMayTransfer(t *testing.T) {
	st := openStore(t)
	addDevice(t, st, "nas1", "198.51.100.1", "")
	s := startXFRServer(t, st, TransferConfig{})
	for i := range 3 {
		if err := setAddr(t.Context(), st, "nas1", addrA(i).String()); err != nil {
			t.Fatal(err)
		}
	}
	if s.journal.n != 0 {
		t.Errorf("%d changes kept with no secondary and no key", s.journal.n)
	}
	// A reload that adds a secondary starts the history with the next change.
	if err := s.SetTransfer(secondaryAt("127.0.0.1"), nil); err != nil {
		t.Fatal(err)
	}
	before := st.Serial()
	if rrs, _, err := transfer(t, s, ixfrQuery(before), nil); err != nil || len(rrs) < 3 {
		t.Errorf("IXFR before any change is kept: %v %v, want the whole zone", strs(rrs), err)
	}
	for i := range 2 {
		if err := setAddr(t.Context(), st, "nas1", addrB(i).String()); err != nil {
			t.Fatal(err)
		}
	}
	if rrs, _, err := transfer(t, s, ixfrQuery(before+1), nil); err != nil || len(rrs) != 6 {
		t.Errorf("IXFR across the change after the reload: %v %v, want the difference", strs(rrs), err)
	}
}

// TestZoneReloadedStartsTheHistoryAfreshAndNotifies: after the store says
// it reloaded the zone without the changes in between (etcd's watch behind
// a compaction), an IXFR from a serial before is answered with the whole
// zone, never with a difference that misses those changes, and the
// secondaries get a NOTIFY of the serial now.
func TestZoneReloadedStartsTheHistoryAfreshAndNotifies(t *testing.T) {
	st := openStore(t)
	addDevice(t, st, "nas1", "198.51.100.1", "")
	nl := listenNotify(t, func(int) bool { return true }, nil)
	s := startXFRServer(t, st, TransferConfig{Secondaries: []Secondary{nl.secondary("")}})
	testutil.WaitFor(t, 5*time.Second, "the NOTIFY at start", func() bool { return lastSerial(nl.got()) == st.Serial() })
	start := st.Serial()
	if err := setAddr(t.Context(), st, "nas1", "203.0.113.1"); err != nil {
		t.Fatal(err)
	}
	isFull := func(rrs []dns.RR) bool {
		return slices.Contains(strs(rrs), "ns1.myqnapcloud.com. 3600 IN A 192.0.2.53")
	}
	if rrs, _, err := transfer(t, s, ixfrQuery(start), nil); err != nil || isFull(rrs) {
		t.Fatalf("IXFR one change back: %v %v, want the difference", strs(rrs), err)
	}
	testutil.WaitFor(t, 5*time.Second, "the NOTIFY of the change", func() bool { return lastSerial(nl.got()) == st.Serial() })
	sent := len(nl.got())

	s.ZoneReloaded()
	testutil.WaitFor(t, 5*time.Second, "a NOTIFY after the reload", func() bool {
		return len(nl.got()) > sent && lastSerial(nl.got()) == st.Serial()
	})
	rrs, _, err := transfer(t, s, ixfrQuery(start), nil)
	if err != nil || !isFull(rrs) || !slices.Contains(strs(rrs), "nas1.myqnapcloud.com. 60 IN A 203.0.113.1") {
		t.Errorf("IXFR from before the reload: %v %v, want the whole zone", strs(rrs), err)
	}
}

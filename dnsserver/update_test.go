package dnsserver

import (
	"context"
	"encoding/base64"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/store"
)

const updZone = "myqnapcloud.com."

// updateFixture is a server taking dynamic updates, over a store with
// nas1 and nas2 (each with its key), and cam (no key, DDNS off).
type updateFixture struct {
	st      *store.Store
	srv     *Server
	secrets map[string]string // key name -> base64 secret, for the client
	mu      sync.Mutex
	events  []UpdateEvent
}

func startUpdateServer(t testing.TB) *updateFixture {
	t.Helper()
	fx := &updateFixture{st: openStore(t), secrets: map[string]string{xfrKey: xfrSecret}}
	addDevice(t, fx.st, "nas1", "198.51.100.1", "2001:db8:1::1")
	addDevice(t, fx.st, "nas2", "198.51.100.2", "")
	addDevice(t, fx.st, "cam", "198.51.100.3", "")
	setDDNS(t, fx.st, "cam", false)
	for _, d := range []string{"nas1", "nas2"} {
		k, err := fx.st.IssueTSIGKey(context.Background(), d)
		if err != nil {
			t.Fatal(err)
		}
		fx.secrets[d+"."+updZone] = base64.StdEncoding.EncodeToString(k.Secret)
	}
	fx.srv = startServer(t, Config{
		Source:   fx.st,
		Transfer: TransferConfig{Keys: Keys{xfrKeys(t), DeviceKeys{Zone: updZone, Store: fx.st}}},
		Update: UpdateConfig{Store: fx.st, OnUpdate: func(e UpdateEvent) {
			fx.mu.Lock()
			fx.events = append(fx.events, e)
			fx.mu.Unlock()
		}},
	})
	return fx
}

// eventCount is how many UpdateEvents were reported.
func (fx *updateFixture) eventCount() int {
	fx.mu.Lock()
	defer fx.mu.Unlock()
	return len(fx.events)
}

// event waits for the nth UpdateEvent (from 1), which the server reports
// after it answered.
func (fx *updateFixture) event(t *testing.T, n int) UpdateEvent {
	t.Helper()
	testutil.WaitFor(t, 2*time.Second, "the update to be reported", func() bool { return fx.eventCount() >= n })
	fx.mu.Lock()
	defer fx.mu.Unlock()
	return fx.events[n-1]
}

// send sends m over network, signed with key (unless ""); the client
// signs with secret, or the key's own one when secret is "". The error is
// the client's check of the answer's signature.
func (fx *updateFixture) send(t *testing.T, network string, m *dns.Msg, key, secret string) (*dns.Msg, error) {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 5 * time.Second}
	if key != "" {
		if secret == "" {
			secret = fx.secrets[key]
		}
		c.TsigSecret = map[string]string{key: secret}
		m.SetTsig(key, dns.HmacSHA256, 300, time.Now().Unix())
	}
	r, _, err := c.Exchange(m, fx.srv.Addr().String())
	if r == nil {
		t.Fatalf("no answer to the update over %s: %v", network, err)
	}
	return r, err
}

// addrs are nas1's addresses as the store holds them, "" for none.
func (fx *updateFixture) addrs(t *testing.T, device string) (string, string) {
	t.Helper()
	d, err := fx.st.Get(device)
	if err != nil {
		t.Fatal(err)
	}
	s := func(a netip.Addr) string {
		if !a.IsValid() {
			return ""
		}
		return a.String()
	}
	return s(d.IPv4), s(d.IPv6)
}

// rrs parses records in presentation format, NAME TTL CLASS TYPE [DATA];
// the class may be ANY or NONE and the data left out, as in an update.
func rrs(ss ...string) []dns.RR {
	var out []dns.RR
	for _, s := range ss {
		f := strings.Fields(s)
		class := dns.StringToClass[f[2]]
		f[2] = "IN"      // the zone file parser takes ANY for a type
		if len(f) == 4 { // no data: the header alone, as dns.Msg.RemoveRRset makes it
			out = append(out, &dns.RR_Header{Name: f[0], Rrtype: dns.StringToType[f[3]], Class: class, Ttl: uint32(mustAtoi(f[1]))})
			continue
		}
		rr := mustRR(strings.Join(f, " "))
		rr.Header().Class = class
		out = append(out, rr)
	}
	return out
}

func mustAtoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		panic(err)
	}
	return n
}

const (
	nas1 = "nas1." + updZone
	key1 = nas1
)

func TestDynamicUpdateOverUDPAndTCP(t *testing.T) {
	otherSecret := base64.StdEncoding.EncodeToString([]byte("another-secret-another-secret-32"))
	cases := []struct {
		name     string
		key      string // "" sends it unsigned
		secret   string // signs with this instead of the key's secret
		zone     string // the zone section; "" is ours
		ztype    uint16 // the zone section's type; 0 is SOA
		prereq   []dns.RR
		update   []dns.RR
		rcode    int
		tsigErr  uint16
		outcome  string
		v4, v6   string // nas1's addresses afterwards
		reasonIs string // in the event's detail
	}{
		// What ddclient and nsupdate send.
		{name: "ddclient replaces A: delete the RRset, add", key: key1,
			update: rrs(nas1+" 0 ANY A", nas1+" 600 IN A 203.0.113.9"), outcome: "good", v4: "203.0.113.9", v6: "2001:db8:1::1"},
		{name: "AAAA replaced the same way", key: key1,
			update: rrs(nas1+" 0 ANY AAAA", nas1+" 60 IN AAAA 2001:db8:9::9"), outcome: "good", v4: "198.51.100.1", v6: "2001:db8:9::9"},
		{name: "the address it has already: nochg", key: key1,
			update: rrs(nas1+" 0 ANY A", nas1+" 600 IN A 198.51.100.1"), outcome: "nochg", v4: "198.51.100.1", v6: "2001:db8:1::1"},
		{name: "add without delete when it is the same address", key: key1,
			update: rrs(nas1 + " 60 IN A 198.51.100.1"), outcome: "nochg", v4: "198.51.100.1", v6: "2001:db8:1::1"},
		{name: "delete every RRset at the name", key: key1,
			update: rrs(nas1 + " 0 ANY ANY"), outcome: "good"},
		{name: "delete one record", key: key1,
			update: rrs(nas1 + " 0 NONE A 198.51.100.1"), outcome: "good", v6: "2001:db8:1::1"},
		{name: "delete a record it does not have", key: key1,
			update: rrs(nas1 + " 0 NONE A 192.0.2.77"), outcome: "nochg", v4: "198.51.100.1", v6: "2001:db8:1::1"},
		{name: "updates apply in order: add then delete", key: key1,
			update: rrs(nas1+" 0 ANY A", nas1+" 60 IN A 192.0.2.8", nas1+" 0 NONE A 192.0.2.8"), outcome: "good", v6: "2001:db8:1::1"},
		{name: "names compare case-insensitively", key: key1,
			update: rrs("Nas1.MYQNAPCLOUD.com. 0 ANY A", "nAS1.myqnapcloud.COM. 60 IN A 192.0.2.10"), outcome: "good", v4: "192.0.2.10", v6: "2001:db8:1::1"},

		// What the key may not change: REFUSED, nothing changes.
		{name: "a second address of one family", key: key1,
			update: rrs(nas1 + " 60 IN A 203.0.113.9"), rcode: dns.RcodeRefused, outcome: "refused", v4: "198.51.100.1", v6: "2001:db8:1::1", reasonIs: "one of each"},
		{name: "an address that may not be published", key: key1,
			update: rrs(nas1+" 0 ANY A", nas1+" 60 IN A 0.0.0.0"), rcode: dns.RcodeRefused, outcome: "refused", v4: "198.51.100.1", v6: "2001:db8:1::1", reasonIs: "names no host"},
		{name: "another device's name", key: key1,
			update: rrs("nas2." + updZone + " 60 IN A 203.0.113.9"), rcode: dns.RcodeRefused, outcome: "refused", v4: "198.51.100.1", v6: "2001:db8:1::1", reasonIs: "it may change A and AAAA at nas1.myqnapcloud.com"},
		{name: "all allowed but one: none applied", key: key1,
			update: rrs(nas1+" 0 ANY A", nas1+" 60 IN A 203.0.113.9", "nas2."+updZone+" 0 ANY A"), rcode: dns.RcodeRefused, outcome: "refused", v4: "198.51.100.1", v6: "2001:db8:1::1"},
		{name: "a type other than A and AAAA", key: key1,
			update: rrs(nas1 + " 60 IN MX 10 mail.example."), rcode: dns.RcodeRefused, outcome: "refused", v4: "198.51.100.1", v6: "2001:db8:1::1"},
		{name: "a name below the device", key: key1,
			update: rrs("www." + nas1 + " 60 IN A 203.0.113.9"), rcode: dns.RcodeRefused, outcome: "refused", v4: "198.51.100.1", v6: "2001:db8:1::1"},
		{name: "the apex", key: key1,
			update: rrs(updZone + " 60 IN NS ns9.example."), rcode: dns.RcodeRefused, outcome: "refused", v4: "198.51.100.1", v6: "2001:db8:1::1"},
		{name: "a transfer key may not update", key: xfrKey,
			update: rrs(nas1 + " 0 ANY A"), rcode: dns.RcodeRefused, outcome: "refused", v4: "198.51.100.1", v6: "2001:db8:1::1"},

		// Authentication.
		{name: "unsigned", update: rrs(nas1 + " 0 ANY A"), rcode: dns.RcodeNotAuth, outcome: "badauth", v4: "198.51.100.1", v6: "2001:db8:1::1"},
		{name: "an unknown key", key: "nas9." + updZone, secret: otherSecret,
			update: rrs(nas1 + " 0 ANY A"), rcode: dns.RcodeNotAuth, tsigErr: dns.RcodeBadKey, outcome: "badauth", v4: "198.51.100.1", v6: "2001:db8:1::1"},
		{name: "the device's key name with a wrong secret", key: key1, secret: otherSecret,
			update: rrs(nas1 + " 0 ANY A"), rcode: dns.RcodeNotAuth, tsigErr: dns.RcodeBadSig, outcome: "badauth", v4: "198.51.100.1", v6: "2001:db8:1::1"},
		{name: "a device without a key", key: "cam." + updZone, secret: otherSecret,
			update: rrs("cam." + updZone + " 0 ANY A"), rcode: dns.RcodeNotAuth, tsigErr: dns.RcodeBadKey, outcome: "badauth", v4: "198.51.100.1", v6: "2001:db8:1::1"},

		// The zone section and the form of each record.
		{name: "another zone", key: key1, zone: "example.org.",
			update: rrs("nas1.example.org. 0 ANY A"), rcode: dns.RcodeNotAuth, outcome: "notauth", v4: "198.51.100.1", v6: "2001:db8:1::1"},
		{name: "a zone section that is not SOA", key: key1, ztype: dns.TypeA,
			update: rrs(nas1 + " 0 ANY A"), rcode: dns.RcodeFormatError, outcome: "formerr", v4: "198.51.100.1", v6: "2001:db8:1::1"},
		{name: "an update outside the zone", key: key1,
			update: rrs("nas1.example.org. 60 IN A 203.0.113.9"), rcode: dns.RcodeNotZone, outcome: "notzone", v4: "198.51.100.1", v6: "2001:db8:1::1"},
		{name: "a prerequisite outside the zone", key: key1, prereq: rrs("example.org. 0 ANY ANY"),
			update: rrs(nas1 + " 0 ANY A"), rcode: dns.RcodeNotZone, outcome: "notzone", v4: "198.51.100.1", v6: "2001:db8:1::1"},
		{name: "a deletion of an RRset with a TTL", key: key1,
			update: rrs(nas1 + " 60 ANY A"), rcode: dns.RcodeFormatError, outcome: "formerr", v4: "198.51.100.1", v6: "2001:db8:1::1"},
		{name: "a deletion of an RRset with data", key: key1,
			update: rrs(nas1 + " 0 ANY A 198.51.100.1"), rcode: dns.RcodeFormatError, outcome: "formerr", v4: "198.51.100.1", v6: "2001:db8:1::1"},
		{name: "a prerequisite with a TTL", key: key1, prereq: rrs(nas1 + " 60 ANY A"),
			update: rrs(nas1 + " 0 ANY A"), rcode: dns.RcodeFormatError, outcome: "formerr", v4: "198.51.100.1", v6: "2001:db8:1::1"},
		{name: "class CH", key: key1,
			update: rrs(nas1 + " 60 CH A 203.0.113.9"), rcode: dns.RcodeFormatError, outcome: "formerr", v4: "198.51.100.1", v6: "2001:db8:1::1"},
		{name: "an added record of type ANY", key: key1,
			update: rrs(nas1 + " 60 IN ANY"), rcode: dns.RcodeFormatError, outcome: "formerr", v4: "198.51.100.1", v6: "2001:db8:1::1"},

		// Prerequisites (RFC 2136 §2.4), evaluated before any update.
		{name: "RRset exists: yes", key: key1, prereq: rrs(nas1 + " 0 ANY A"),
			update: rrs(nas1+" 0 ANY A", nas1+" 60 IN A 203.0.113.9"), outcome: "good", v4: "203.0.113.9", v6: "2001:db8:1::1"},
		{name: "RRset exists: no", key: key1, prereq: rrs(nas1 + " 0 ANY TXT"),
			update: rrs(nas1 + " 0 ANY A"), rcode: dns.RcodeNXRrset, outcome: "nxrrset", v4: "198.51.100.1", v6: "2001:db8:1::1"},
		{name: "RRset does not exist: it does", key: key1, prereq: rrs(nas1 + " 0 NONE A"),
			update: rrs(nas1 + " 0 ANY A"), rcode: dns.RcodeYXRrset, outcome: "yxrrset", v4: "198.51.100.1", v6: "2001:db8:1::1"},
		{name: "RRset does not exist: it does not", key: key1, prereq: rrs(nas1 + " 0 NONE TXT"),
			update: rrs(nas1 + " 0 ANY AAAA"), outcome: "good", v4: "198.51.100.1"},
		{name: "name in use: yes", key: key1, prereq: rrs(nas1 + " 0 ANY ANY"),
			update: rrs(nas1 + " 0 ANY AAAA"), outcome: "good", v4: "198.51.100.1"},
		{name: "name in use: no", key: key1, prereq: rrs("nosuch." + updZone + " 0 ANY ANY"),
			update: rrs(nas1 + " 0 ANY A"), rcode: dns.RcodeNameError, outcome: "nxdomain", v4: "198.51.100.1", v6: "2001:db8:1::1"},
		{name: "name not in use: it is", key: key1, prereq: rrs(nas1 + " 0 NONE ANY"),
			update: rrs(nas1 + " 0 ANY A"), rcode: dns.RcodeYXDomain, outcome: "yxdomain", v4: "198.51.100.1", v6: "2001:db8:1::1"},
		{name: "RRset exists with these values: yes", key: key1, prereq: rrs(nas1 + " 0 IN A 198.51.100.1"),
			update: rrs(nas1+" 0 ANY A", nas1+" 60 IN A 203.0.113.9"), outcome: "good", v4: "203.0.113.9", v6: "2001:db8:1::1"},
		{name: "RRset exists with these values: other values", key: key1, prereq: rrs(nas1 + " 0 IN A 192.0.2.1"),
			update: rrs(nas1+" 0 ANY A", nas1+" 60 IN A 203.0.113.9"), rcode: dns.RcodeNXRrset, outcome: "nxrrset", v4: "198.51.100.1", v6: "2001:db8:1::1"},
		{name: "RRset exists with these values: one more", key: key1, prereq: rrs(nas1+" 0 IN A 198.51.100.1", nas1+" 0 IN A 192.0.2.1"),
			update: rrs(nas1 + " 0 ANY A"), rcode: dns.RcodeNXRrset, outcome: "nxrrset", v4: "198.51.100.1", v6: "2001:db8:1::1"},
		{name: "another device's name, as published", key: key1, prereq: rrs("nas2." + updZone + " 0 ANY A"),
			update: rrs(nas1 + " 0 ANY AAAA"), outcome: "good", v4: "198.51.100.1"},
		{name: "a device with DDNS off is not published", key: key1, prereq: rrs("cam." + updZone + " 0 NONE ANY"),
			update: rrs(nas1 + " 0 ANY AAAA"), outcome: "good", v4: "198.51.100.1"},
		{name: "the apex's SOA", key: key1, prereq: rrs(updZone + " 0 ANY SOA"),
			update: rrs(nas1 + " 0 ANY AAAA"), outcome: "good", v4: "198.51.100.1"},
		{name: "the apex's NS, which an ANY query does not show", key: key1, prereq: rrs(updZone + " 0 ANY NS"),
			update: rrs(nas1 + " 0 ANY AAAA"), outcome: "good", v4: "198.51.100.1"},
		{name: "the apex's NS with its value", key: key1, prereq: rrs(updZone + " 0 IN NS ns1." + updZone),
			update: rrs(nas1 + " 0 ANY AAAA"), outcome: "good", v4: "198.51.100.1"},
		{name: "a name below another device, as published", key: key1, prereq: rrs("www.nas2." + updZone + " 0 IN A 198.51.100.2"),
			update: rrs(nas1 + " 0 ANY AAAA"), outcome: "good", v4: "198.51.100.1"},
	}
	fx := startUpdateServer(t)
	ctx := context.Background()
	for _, network := range []string{"udp", "tcp"} {
		for _, c := range cases {
			t.Run(network+"/"+c.name, func(t *testing.T) {
				if _, _, err := fx.st.SetAddress(ctx, "nas1", store.AddressUpdate{IPv4: netip.MustParseAddr("198.51.100.1"), IPv6: netip.MustParseAddr("2001:db8:1::1")}); err != nil {
					t.Fatal(err)
				}
				m := new(dns.Msg).SetUpdate(cmpOr(c.zone, updZone))
				if c.ztype != 0 {
					m.Question[0].Qtype = c.ztype
				}
				m.Answer, m.Ns = c.prereq, c.update
				n := fx.eventCount() + 1
				r, err := fx.send(t, network, m, c.key, c.secret)
				if r.Rcode != c.rcode || !r.Response || r.Opcode != dns.OpcodeUpdate {
					t.Fatalf("rcode %s (opcode %s), want %s", dns.RcodeToString[r.Rcode], dns.OpcodeToString[r.Opcode], dns.RcodeToString[c.rcode])
				}
				tsig := r.IsTsig()
				switch {
				case c.tsigErr != 0:
					if tsig == nil || tsig.Error != c.tsigErr {
						t.Errorf("TSIG %v, want error %s", tsig, dns.RcodeToString[int(c.tsigErr)])
					}
				case c.key != "":
					// miekg/dns's client checks no signature on a NOTAUTH answer.
					if tsig == nil || (err != nil && c.rcode != dns.RcodeNotAuth) {
						t.Errorf("the answer is not signed with the request's key: %v, %v", tsig, err)
					}
				case tsig != nil:
					t.Errorf("an unsigned update got a signed answer")
				}
				if v4, v6 := fx.addrs(t, "nas1"); v4 != c.v4 || v6 != c.v6 {
					t.Errorf("nas1 holds %q %q, want %q %q", v4, v6, c.v4, c.v6)
				}
				// The answer left once the change was in the index: the
				// next query answers it.
				q := new(dns.Msg).SetQuestion(nas1, dns.TypeA)
				a, _, err := (&dns.Client{Net: network, Timeout: 2 * time.Second}).Exchange(q, fx.srv.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				var got string
				if len(a.Answer) == 1 {
					got = a.Answer[0].(*dns.A).A.String()
				}
				if got != c.v4 {
					t.Errorf("the next query answers A %q, want %q", got, c.v4)
				}
				e := fx.event(t, n)
				if e.Outcome != c.outcome || e.TCP != (network == "tcp") || !strings.Contains(e.Detail, c.reasonIs) {
					t.Errorf("event %+v, want outcome %s with a reason containing %q", e, c.outcome, c.reasonIs)
				}
				if wantDevice := c.key == key1 && c.tsigErr == 0; wantDevice != (e.Device == "nas1") {
					t.Errorf("event names device %q", e.Device)
				}
			})
		}
	}
}

// A device with DDNS off keeps its addresses current by UPDATE, as by
// dyndns2, and its own prerequisites see them; the name stays unpublished.
func TestDynamicUpdateOfADeviceWithDDNSOffIsStored(t *testing.T) {
	fx := startUpdateServer(t)
	setDDNS(t, fx.st, "nas2", false)
	name := "nas2." + updZone
	m := new(dns.Msg).SetUpdate(updZone)
	m.Answer = rrs(name + " 0 IN A 198.51.100.2")
	m.Ns = rrs(name+" 0 ANY A", name+" 60 IN A 203.0.113.22")
	if r, err := fx.send(t, "udp", m, name, ""); r.Rcode != dns.RcodeSuccess || err != nil {
		t.Fatalf("update with DDNS off: %s, %v", dns.RcodeToString[r.Rcode], err)
	}
	if v4, _ := fx.addrs(t, "nas2"); v4 != "203.0.113.22" {
		t.Fatalf("nas2 holds %q, want the updated address", v4)
	}
	q, _, err := (&dns.Client{Timeout: 2 * time.Second}).Exchange(new(dns.Msg).SetQuestion(name, dns.TypeA), fx.srv.Addr().String())
	if err != nil || q.Rcode != dns.RcodeNameError {
		t.Fatalf("nas2 with DDNS off answers %v (%v), want NXDOMAIN", q, err)
	}
}

// A rotated or revoked key stops working at once; the new one works.
func TestRotatedAndRevokedKeysStopAtOnce(t *testing.T) {
	fx := startUpdateServer(t)
	ctx := context.Background()
	update := func(secret string) *dns.Msg {
		m := new(dns.Msg).SetUpdate(updZone)
		m.Ns = rrs(nas1+" 0 ANY A", nas1+" 60 IN A 203.0.113.1")
		r, _ := fx.send(t, "udp", m, key1, secret)
		return r
	}
	old := fx.secrets[key1]
	k, err := fx.st.IssueTSIGKey(ctx, "nas1")
	if err != nil {
		t.Fatal(err)
	}
	if r := update(old); r.Rcode != dns.RcodeNotAuth || r.IsTsig() == nil || r.IsTsig().Error != dns.RcodeBadSig {
		t.Fatalf("the old key after rotation: %v, want NOTAUTH BADSIG", r)
	}
	if r := update(base64.StdEncoding.EncodeToString(k.Secret)); r.Rcode != dns.RcodeSuccess {
		t.Fatalf("the new key: %s", dns.RcodeToString[r.Rcode])
	}
	if err := fx.st.RevokeTSIGKey(ctx, "nas1"); err != nil {
		t.Fatal(err)
	}
	if r := update(base64.StdEncoding.EncodeToString(k.Secret)); r.Rcode != dns.RcodeNotAuth || r.IsTsig() == nil || r.IsTsig().Error != dns.RcodeBadKey {
		t.Fatalf("a revoked key: %v, want NOTAUTH BADKEY", r)
	}
}

// Without UpdateConfig.Store an UPDATE is not implemented, signed or not.
func TestUpdateIsNotImplementedWhenOff(t *testing.T) {
	st := openStore(t)
	addDevice(t, st, "nas1", "198.51.100.1", "")
	if _, err := st.IssueTSIGKey(context.Background(), "nas1"); err != nil {
		t.Fatal(err)
	}
	k, _ := st.TSIGKey("nas1")
	s := startServer(t, Config{Source: st, Transfer: TransferConfig{Keys: DeviceKeys{Zone: updZone, Store: st}}})
	m := new(dns.Msg).SetUpdate(updZone)
	m.Ns = rrs(nas1 + " 0 ANY A")
	m.SetTsig(key1, dns.HmacSHA256, 300, time.Now().Unix())
	c := &dns.Client{Timeout: 2 * time.Second, TsigSecret: map[string]string{key1: base64.StdEncoding.EncodeToString(k.Secret)}}
	r, _, _ := c.Exchange(m, s.Addr().String())
	if r == nil || r.Rcode != dns.RcodeNotImplemented {
		t.Fatalf("UPDATE without dynamic update on: %v, want NOTIMP", r)
	}
}

// Devices' keys never let anyone transfer the zone, and do not make the
// server keep a transfer history.
func TestDeviceKeysMayNotTransfer(t *testing.T) {
	fx := startUpdateServer(t)
	if mayTransfer(Keys{StaticKeys{}, DeviceKeys{Zone: updZone, Store: fx.st}}) {
		t.Error("devices' keys count as keys that may transfer: the server would keep an IXFR history for nobody")
	}
	c := &dns.Client{Net: "tcp", Timeout: 2 * time.Second, TsigSecret: map[string]string{key1: fx.secrets[key1]}}
	r, _, err := c.Exchange(signed(new(dns.Msg).SetAxfr(updZone), key1), fx.srv.Addr().String())
	if r == nil || r.Rcode != dns.RcodeRefused {
		t.Fatalf("AXFR signed with a device's key: %v (%v), want REFUSED", r, err)
	}
}

// A signature made outside the TSIG time window (300 s, RFC 8945 §5.2.3) is
// NOTAUTH BADTIME, the answer signed with the server's time, and changes
// nothing: a captured update cannot be replayed later.
func TestStaleSignatureIsBadTime(t *testing.T) {
	fx := startUpdateServer(t)
	m := new(dns.Msg).SetUpdate(updZone)
	m.Ns = rrs(nas1 + " 0 ANY A")
	m.SetTsig(key1, dns.HmacSHA256, 300, time.Now().Add(-time.Hour).Unix())
	c := &dns.Client{Timeout: 2 * time.Second, TsigSecret: map[string]string{key1: fx.secrets[key1]}}
	r, _, _ := c.Exchange(m, fx.srv.Addr().String())
	if r == nil || r.Rcode != dns.RcodeNotAuth || r.IsTsig() == nil || r.IsTsig().Error != dns.RcodeBadTime {
		t.Fatalf("an update signed an hour ago: %v, want NOTAUTH BADTIME", r)
	}
	if v4, _ := fx.addrs(t, "nas1"); v4 != "198.51.100.1" {
		t.Fatalf("a stale update changed nas1 to %q", v4)
	}
}

// The device's key keeps its ACME challenge values at _acme-challenge.<device>
// as certbot-dns-rfc2136 (add, then delete each value) and lego's rfc2136
// provider (delete the TXT RRset and add, in one update) do, by the rules
// of the REST API; each step's result is the next query's answer.
func TestDynamicUpdateOfChallengeValues(t *testing.T) {
	fx := startUpdateServer(t)
	ch := "_acme-challenge." + nas1
	const orig = "198.51.100.1"
	a, b, c := testutil.ChallengeValue(0), testutil.ChallengeValue(1), testutil.ChallengeValue(2)
	txt := func(v string) string { return ch + ` 60 IN TXT "` + v + `"` }
	nine := []dns.RR{rrs(ch + " 0 ANY TXT")[0]}
	for i := range 9 {
		nine = append(nine, rrs(txt(testutil.ChallengeValue(10+i)))...)
	}
	steps := []struct {
		name           string
		prereq, update []dns.RR
		rcode          int
		values         []string // afterwards
		v4             string   // nas1's address afterwards, "" for none
	}{
		{name: "certbot adds a value", update: rrs(txt(a)), values: []string{a}, v4: orig},
		{name: "and the wildcard's", update: rrs(txt(b)), values: []string{a, b}, v4: orig},
		{name: "a value it has", update: rrs(txt(a)), values: []string{a, b}, v4: orig},
		{name: "the RRset is exactly these values", prereq: rrs(ch+` 0 IN TXT "`+b+`"`, ch+` 0 IN TXT "`+a+`"`), update: rrs(ch + ` 0 NONE TXT "` + a + `"`), values: []string{b}, v4: orig},
		{name: "lego replaces the RRset", prereq: rrs(ch + " 0 ANY TXT"), update: rrs(ch+" 0 ANY TXT", txt(c)), values: []string{c}, v4: orig},
		{name: "a value that is not a DNS-01 value", update: rrs(ch + ` 60 IN TXT "hello"`), rcode: dns.RcodeRefused, values: []string{c}, v4: orig},
		{name: "two strings in one record", update: rrs(ch + ` 60 IN TXT "` + a + `" "` + b + `"`), rcode: dns.RcodeRefused, values: []string{c}, v4: orig},
		{name: "more values than a device may publish", update: nine, rcode: dns.RcodeRefused, values: []string{c}, v4: orig},
		{name: "TXT does not exist: it does", prereq: rrs(ch + " 0 NONE TXT"), update: rrs(txt(a)), rcode: dns.RcodeYXRrset, values: []string{c}, v4: orig},
		{name: "an address and a refused value: neither", update: rrs(nas1+" 0 ANY A", nas1+" 60 IN A 203.0.113.7", ch+` 60 IN TXT "x"`), rcode: dns.RcodeRefused, values: []string{c}, v4: orig},
		{name: "an address and a value together", update: rrs(nas1+" 0 ANY A", nas1+" 60 IN A 203.0.113.7", txt(a)), values: []string{c, a}, v4: "203.0.113.7"},
		{name: "deleting the device name's RRsets leaves the challenge name's", update: rrs(nas1 + " 0 ANY ANY"), values: []string{c, a}, v4: ""},
		{name: "another record type at the challenge name", update: rrs(ch + " 60 IN A 203.0.113.8"), rcode: dns.RcodeRefused, values: []string{c, a}, v4: ""},
		{name: "another device's challenge name", update: rrs(`_acme-challenge.nas2.` + updZone + ` 60 IN TXT "` + a + `"`), rcode: dns.RcodeRefused, values: []string{c, a}, v4: ""},
		{name: "every RRset at the challenge name", prereq: rrs(ch + " 0 ANY ANY"), update: rrs(ch + " 0 ANY ANY"), values: nil, v4: ""},
	}
	for _, network := range []string{"udp", "tcp"} {
		if _, err := fx.st.SetChallenges(context.Background(), "nas1", store.ChallengeUpdate{RemoveAll: true}); err != nil {
			t.Fatal(err)
		}
		if _, _, err := fx.st.SetAddress(context.Background(), "nas1", store.AddressUpdate{IPv4: netip.MustParseAddr(orig)}); err != nil {
			t.Fatal(err)
		}
		for _, st := range steps {
			m := new(dns.Msg).SetUpdate(updZone)
			m.Answer, m.Ns = st.prereq, st.update
			r, err := fx.send(t, network, m, key1, "")
			if r.Rcode != st.rcode || err != nil {
				t.Fatalf("%s/%s: rcode %s (%v), want %s", network, st.name, dns.RcodeToString[r.Rcode], err, dns.RcodeToString[st.rcode])
			}
			// With EDNS, as a resolver asks: two values are over 3 times a
			// query without it, and come truncated over UDP.
			query := new(dns.Msg).SetQuestion(ch, dns.TypeTXT)
			query.SetEdns0(1232, false)
			q, _, err := (&dns.Client{Net: network, Timeout: 2 * time.Second}).Exchange(query, fx.srv.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, rr := range q.Answer {
				got = append(got, rr.(*dns.TXT).Txt...)
			}
			if !slices.Equal(got, st.values) {
				t.Fatalf("%s/%s: the next query answers TXT %q, want %q", network, st.name, got, st.values)
			}
			if got, _ := fx.addrs(t, "nas1"); got != st.v4 {
				t.Fatalf("%s/%s: nas1 holds %q, want %q", network, st.name, got, st.v4)
			}
		}
	}
}

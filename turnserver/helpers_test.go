package turnserver

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"math/big"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/nasreach/nasreach/connlog"
	pion "github.com/pion/stun/v4"
	"github.com/pion/turn/v5"
	"github.com/rs/zerolog"
)

const (
	testUser = "alice"
	testPass = "wonderland"
)

var loopbackOnly = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}

// testTURN is a relay on 127.0.0.1:0 whose allocation events and refusal
// events are collected apart.
type testTURN struct {
	*Server
	events   chan connlog.Event // allocations
	refusals chan connlog.Event // refused requests
}

// startTURN starts a relay with one static user and loopback allow-listed
// (tests run their peers on 127.0.0.1); mods adjust the config first.
func startTURN(t *testing.T, mods ...func(*Config)) *testTURN {
	t.Helper()
	tt := &testTURN{events: make(chan connlog.Event, 64), refusals: make(chan connlog.Event, 256)}
	cfg := Config{
		Addr:       "127.0.0.1:0",
		Users:      []string{testUser + ":" + testPass},
		AllowPeers: loopbackOnly,
		Sockets:    2,
		Events: func(ev connlog.Event) {
			ch := tt.events
			if ev.Kind == "request" {
				ch = tt.refusals
			}
			select { // Events must not block; a test that wants them reads them
			case ch <- ev:
			default:
			}
		},
		Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
	}
	for _, m := range mods {
		m(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tt.Server = srv
	t.Cleanup(func() {
		if err := srv.Shutdown(context.Background()); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return tt
}

// nextEvent waits for the next allocation event.
func (tt *testTURN) nextEvent(t *testing.T) connlog.Event {
	t.Helper()
	return waitEvent(t, tt.events, "allocation")
}

// nextRefusal waits for the next refusal event.
func (tt *testTURN) nextRefusal(t *testing.T) connlog.Event {
	t.Helper()
	return waitEvent(t, tt.refusals, "refusal")
}

func waitEvent(t *testing.T, events chan connlog.Event, what string) connlog.Event {
	t.Helper()
	select {
	case ev := <-events:
		return ev
	case <-time.After(5 * time.Second):
		t.Fatalf("no %s event within 5s", what)
		return connlog.Event{}
	}
}

// startEcho runs a UDP echo peer on 127.0.0.1 until the test ends and
// returns its address and a channel that receives every payload it echoes.
func startEcho(t *testing.T) (*net.UDPAddr, chan []byte) {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte, 1024)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			select {
			case got <- append([]byte(nil), buf[:n]...):
			default:
			}
			c.WriteTo(buf[:n], from)
		}
	}()
	t.Cleanup(func() { c.Close(); wg.Wait() })
	return c.LocalAddr().(*net.UDPAddr), got
}

// pionClient is pion's TURN client over UDP, TCP or TLS to srv, closed when
// the test ends.
func pionClient(t *testing.T, transport string, srv netip.AddrPort, user, pass string) *turn.Client {
	t.Helper()
	c := newPionClient(t, transport, srv, user, pass)
	t.Cleanup(c.close)
	return c.client
}

// testClient is a pion client and the socket under it.
type testClient struct {
	client *turn.Client
	conn   net.PacketConn
}

func (c testClient) close() { c.client.Close(); c.conn.Close() }

func newPionClient(t *testing.T, transport string, srv netip.AddrPort, user, pass string) testClient {
	t.Helper()
	var conn net.PacketConn
	switch transport {
	case "udp":
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		conn = c
	case "tcp":
		c, err := net.Dial("tcp", srv.String())
		if err != nil {
			t.Fatal(err)
		}
		conn = turn.NewSTUNConn(c)
	case "tls":
		c, err := tls.Dial("tcp", srv.String(), &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // self-signed test certificate
		if err != nil {
			t.Fatal(err)
		}
		conn = turn.NewSTUNConn(c)
	default:
		t.Fatalf("unknown transport %q", transport)
	}
	client, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr: srv.String(), TURNServerAddr: srv.String(),
		Conn: conn, Username: user, Password: pass, Realm: DefaultRealm,
		RTO: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := client.Listen(); err != nil {
		t.Fatal(err)
	}
	return testClient{client: client, conn: conn}
}

// allocate allocates with a timeout.
func allocate(t *testing.T, c *turn.Client) (net.PacketConn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return c.AllocateWithContext(ctx)
}

// turnErrorCode returns the ERROR-CODE of a pion client error, or 0.
func turnErrorCode(err error) int {
	var te *pion.TurnError
	if errors.As(err, &te) {
		return int(te.ErrorCodeAttr.Code)
	}
	return 0
}

// roundTrip sends payload through relay to peer and waits for the echo.
func roundTrip(t *testing.T, relay net.PacketConn, peer net.Addr, payload []byte) {
	t.Helper()
	buf := make([]byte, 2048)
	for attempt := 0; attempt < 5; attempt++ {
		if _, err := relay.WriteTo(payload, peer); err != nil {
			t.Fatalf("write through relay: %v", err)
		}
		relay.SetReadDeadline(time.Now().Add(time.Second))
		n, from, err := relay.ReadFrom(buf)
		if err != nil {
			continue // UDP may lose the first datagram while the permission settles
		}
		if string(buf[:n]) != string(payload) {
			t.Fatalf("echo %q, want %q", buf[:n], payload)
		}
		if from.String() != peer.String() {
			t.Fatalf("echo from %v, want %v", from, peer)
		}
		return
	}
	t.Fatal("no echo through the relay after 5 tries")
}

// rawClient speaks TURN by hand so that tests can send exactly the request
// they mean and read the exact error code.
type rawClient struct {
	t     *testing.T
	conn  net.Conn
	tcp   bool
	user  string
	pass  string
	realm string
	nonce string
	key   pion.MessageIntegrity
	// fingerprint ends each authenticated request with FINGERPRINT, as
	// coturn's client does.
	fingerprint bool
}

func newRawClient(t *testing.T, network string, srv netip.AddrPort, user, pass string) *rawClient {
	t.Helper()
	c, err := net.Dial(network, srv.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawClient{t: t, conn: c, tcp: network == "tcp", user: user, pass: pass}
}

// request sends a request of type typ with attrs, authenticating as needed
// (one 401/438 challenge is answered), and returns the response.
func (r *rawClient) request(typ pion.MessageType, attrs ...pion.Setter) *pion.Message {
	r.t.Helper()
	for range 2 {
		setters := append([]pion.Setter{pion.TransactionID, typ}, attrs...)
		if r.nonce != "" {
			setters = append(setters, pion.NewUsername(r.user), pion.NewRealm(r.realm), pion.NewNonce(r.nonce), r.key)
			if r.fingerprint {
				setters = append(setters, pion.Fingerprint)
			}
		}
		req, err := pion.Build(setters...)
		if err != nil {
			r.t.Fatal(err)
		}
		resp := r.roundTrip(req)
		if code := errorCode(resp); code == 401 || code == 438 {
			var nonce pion.Nonce
			var realm pion.Realm
			if nonce.GetFrom(resp) == nil && realm.GetFrom(resp) == nil && !resp.Contains(pion.AttrMessageIntegrity) {
				if r.nonce != "" && code == 401 {
					return resp // credentials refused
				}
				r.nonce, r.realm = nonce.String(), realm.String()
				r.key = pion.NewLongTermIntegrity(r.user, r.realm, r.pass)
				continue
			}
		}
		return resp
	}
	r.t.Fatal("still challenged after answering the challenge")
	return nil
}

// challenge sends an Allocate without credentials and keeps the nonce and
// realm of the 401 that answers it.
func (r *rawClient) challenge() {
	r.t.Helper()
	req, err := pion.Build(pion.TransactionID, pion.NewType(pion.MethodAllocate, pion.ClassRequest), requestedTransport(17))
	if err != nil {
		r.t.Fatal(err)
	}
	resp := r.roundTrip(req)
	var nonce pion.Nonce
	var realm pion.Realm
	if errorCode(resp) != 401 || nonce.GetFrom(resp) != nil || realm.GetFrom(resp) != nil {
		r.t.Fatalf("no challenge: error %d", errorCode(resp))
	}
	r.nonce, r.realm = nonce.String(), realm.String()
	r.key = pion.NewLongTermIntegrity(r.user, r.realm, r.pass)
}

// roundTrip sends req and returns the response with its transaction ID,
// retransmitting over UDP.
func (r *rawClient) roundTrip(req *pion.Message) *pion.Message {
	r.t.Helper()
	buf := make([]byte, 2048)
	for range 5 {
		if _, err := r.conn.Write(req.Raw); err != nil {
			r.t.Fatal(err)
		}
		r.conn.SetReadDeadline(time.Now().Add(time.Second))
		for {
			n, err := r.conn.Read(buf)
			if err != nil {
				break
			}
			m := &pion.Message{Raw: append([]byte(nil), buf[:n]...)}
			if m.Decode() == nil && m.TransactionID == req.TransactionID {
				return m
			}
		}
		if r.tcp {
			break
		}
	}
	r.t.Fatalf("no answer to %v", req.Type)
	return nil
}

// send sends an indication (no answer expected).
func (r *rawClient) send(typ pion.MessageType, attrs ...pion.Setter) {
	r.t.Helper()
	m, err := pion.Build(append([]pion.Setter{pion.TransactionID, typ}, attrs...)...)
	if err != nil {
		r.t.Fatal(err)
	}
	if _, err := r.conn.Write(m.Raw); err != nil {
		r.t.Fatal(err)
	}
}

// allocate creates a UDP allocation and returns the relayed address.
func (r *rawClient) allocate() netip.AddrPort {
	r.t.Helper()
	resp := r.request(pion.NewType(pion.MethodAllocate, pion.ClassRequest), requestedTransport(17))
	if resp.Type.Class != pion.ClassSuccessResponse {
		r.t.Fatalf("allocate: error %d", errorCode(resp))
	}
	var relayed pion.XORMappedAddress
	if err := relayed.GetFromAs(resp, pion.AttrXORRelayedAddress); err != nil {
		r.t.Fatal(err)
	}
	ip, _ := netip.AddrFromSlice(relayed.IP)
	return netip.AddrPortFrom(ip.Unmap(), uint16(relayed.Port))
}

// allocateWith sends a UDP Allocate with attrs and returns the answer.
func (r *rawClient) allocateWith(attrs ...pion.Setter) *pion.Message {
	r.t.Helper()
	return r.request(pion.NewType(pion.MethodAllocate, pion.ClassRequest), append([]pion.Setter{requestedTransport(17)}, attrs...)...)
}

type requestedTransport byte

func (p requestedTransport) AddTo(m *pion.Message) error {
	m.Add(pion.AttrRequestedTransport, []byte{byte(p), 0, 0, 0})
	return nil
}

type channelNumber uint16

func (c channelNumber) AddTo(m *pion.Message) error {
	m.Add(pion.AttrChannelNumber, []byte{byte(c >> 8), byte(c), 0, 0})
	return nil
}

// peerAddr is an XOR-PEER-ADDRESS encoded by hand: an IPv4-mapped address
// keeps its IPv6 family on the wire, as an attacker would send it (pion's
// encoder would turn it into IPv4).
func peerAddr(ap netip.AddrPort) pion.Setter {
	return setterFunc(func(m *pion.Message) error {
		ip := ap.Addr().AsSlice()
		family := byte(1)
		if ap.Addr().Is6() {
			family = 2
		}
		xor := append(binary.BigEndian.AppendUint32(nil, magicCookie), m.TransactionID[:]...)
		v := []byte{0, family, 0, 0}
		binary.BigEndian.PutUint16(v[2:], ap.Port()^(magicCookie>>16))
		for i := range ip {
			v = append(v, ip[i]^xor[i])
		}
		m.Add(pion.AttrXORPeerAddress, v)
		return nil
	})
}

type setterFunc func(m *pion.Message) error

func (f setterFunc) AddTo(m *pion.Message) error { return f(m) }

func errorCode(m *pion.Message) int {
	if m.Type.Class != pion.ClassErrorResponse {
		return 0
	}
	var code pion.ErrorCodeAttribute
	if code.GetFrom(m) != nil {
		return -1
	}
	return int(code.Code)
}

// selfSigned returns a TLS config with a fresh certificate for 127.0.0.1.
func selfSigned(t *testing.T) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "nasreach test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, MinVersion: tls.VersionTLS12}
}

func waitGoroutines(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > want && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > want {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines left, want at most %d:\n%s", n, want, buf[:runtime.Stack(buf, true)])
	}
}

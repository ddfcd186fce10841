package natlab_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nasreach/nasreach/connlog"
	"github.com/nasreach/nasreach/internal/natlab"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/link"
	"github.com/nasreach/nasreach/linkserver"
	"github.com/nasreach/nasreach/metrics"
	"github.com/nasreach/nasreach/store"
	"github.com/nasreach/nasreach/stun"
	"github.com/rs/zerolog"
)

// transferSize is what every pair that reaches the NAS moves through its
// path, issue 12's 16 MiB.
const transferSize = 16 << 20

// Bounds of the matrix's waits. Every case runs at once, so the whole
// matrix takes about as long as its slowest case.
const (
	onlineWait  = 20 * time.Second // an agent logging in at the relay (over TCP after labQUICHeadStart of QUIC)
	settleWait  = 20 * time.Second // from the first session to the client's report of its attempt
	transferMax = 60 * time.Second
	// transfersAtOnce keeps the transfers from starving each other (and
	// the lab's timers) of the machine's CPUs.
	transfersAtOnce = 2
)

// outcome is the path a client gets to a device.
type outcome int

const (
	direct outcome = iota + 1
	relayed
	// overTCP: one end's router drops all UDP; that end reaches the relay
	// over its TCP carrier (TLS) after QUIC got no answer, and every
	// session goes through the relay (issue 12 §3).
	overTCP
)

func (o outcome) String() string {
	return map[outcome]string{direct: "direct", relayed: "relay", overTCP: "relay over TCP"}[o]
}

// expectation is a pair's path and, when direct, its candidate pair as the
// client logs it (the client's kind > the agent's).
type expectation struct {
	path outcome
	pair string
}

// expectedPath is issue 12's rule for a client in a home of kind client
// reaching an agent in a home of kind agent: direct wherever one side maps
// endpoint-independently (every kind but Symmetric; UDPBlocked aside),
// the relay where both are symmetric, the relay over TCP where either end's
// UDP is blocked.
func expectedPath(agent, client natlab.Kind) expectation {
	switch {
	case agent == natlab.UDPBlocked || client == natlab.UDPBlocked:
		return expectation{path: overTCP}
	case agent == natlab.Symmetric && client == natlab.Symmetric:
		return expectation{path: relayed}
	case agent == natlab.SameLAN && client == natlab.SameLAN:
		return expectation{direct, "host>host"} // one LAN, no hairpin: the LAN addresses
	case agent == natlab.Symmetric:
		// The symmetric side is reached on a mapping of its own that no
		// STUN server saw (peer-reflexive): the full cone lets the
		// agent's pings from a new mapping in and answers it; the others
		// filter by port, and birthday probing finds one.
		return expectation{direct, "srflx>prflx"}
	case client == natlab.Symmetric:
		return expectation{direct, "prflx>srflx"}
	}
	return expectation{direct, "srflx>srflx"}
}

// matrixCase is one ordered pair: an agent in a home of one kind, a
// client in a home of another, and what happened.
type matrixCase struct {
	agent, client         natlab.Kind
	want                  expectation
	device                string
	agentHost, clientHost *natlab.Namespace

	a *link.Agent
	d *link.Dialer
	// What the case saw.
	err      error         // setting up, dialing or transferring
	path     link.Path     // of the session that carried the transfer
	carrier  string        // the client's carrier to the relay for it: link.TransportQUIC or TCP
	settled  time.Duration // from the first session to the client's report
	moved    time.Duration // the transfer
	reported connlog.Event // the relay's event for the attempt (kind punch), or the refusal
}

func (c *matrixCase) name() string { return c.agent.String() + "/" + c.client.String() }

// TestLinkPathMatrix runs Link between every ordered pair of the lab's
// kinds of home, the agent's first: an agent exposing a local service, a
// Dialer reaching it through the relay first and then, when the pair
// allows it, directly. Each case asserts the path the client settles on
// (and the candidate pair of a direct one), the relay's event for the
// attempt (what its metrics count) and that 16 MiB sent through the path
// arrive intact. Pairs are ordered because the two ends do not play the
// same part: the client starts the exchange and the QUIC handshake, the
// agent accepts it, and a NAT kind may work on one side and not the
// other.
func TestLinkPathMatrix(t *testing.T) {
	lab := natlab.New(t)
	r := startLinkRelay(t, lab)
	sink := startHashSink(t)

	var cases []*matrixCase
	for _, ka := range natlab.Kinds {
		for _, kc := range natlab.Kinds {
			c := &matrixCase{agent: ka, client: kc, want: expectedPath(ka, kc), device: fmt.Sprintf("nas%d", len(cases))}
			ha := lab.AddHome(ka)
			c.agentHost = ha.Host()
			if ka == natlab.SameLAN && kc == natlab.SameLAN {
				c.clientHost = ha.Hosts[1]
			} else {
				c.clientHost = lab.AddHome(kc).Host()
			}
			cases = append(cases, c)
		}
	}
	start := time.Now()
	// Every case sets up and settles on its path at once: mostly waiting.
	var wg sync.WaitGroup
	for _, c := range cases {
		wg.Go(func() { c.err = c.settle(t, r, sink) })
	}
	wg.Wait()
	settled := time.Since(start)
	// The relay's metrics count every client's attempt by the path it
	// settled on. Counted now: a relayed client tries again at a session
	// after DirectRetryMin, which a slow transfer phase may reach.
	// A client over TCP does not try (a direct path needs UDP); one whose
	// agent is over TCP does, and the relay's refusal counts as relay.
	counts := map[outcome]int{}
	for _, c := range cases {
		switch {
		case c.want.path != overTCP:
			counts[c.want.path]++
		case c.client != natlab.UDPBlocked:
			counts[relayed]++
		}
	}
	testutil.Scrape(t, "http://"+r.metrics.Addr().String()+"/metrics", fmt.Sprintf(`nasreach_link_paths_total{path="direct"} %d`, counts[direct]),
		fmt.Sprintf(`nasreach_link_paths_total{path="relay"} %d`, counts[relayed]))
	// The transfers, a few at a time.
	sem := make(chan struct{}, transfersAtOnce)
	for _, c := range cases {
		if c.err != nil {
			continue
		}
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			c.err = c.transfer()
			if c.err != nil && c.want.path == overTCP {
				// What TCP looked like at both ends when it stalled.
				c.err = fmt.Errorf("%w\nagent's host: %s\nclient's host: %s", c.err, tcpInfo(c.agentHost), tcpInfo(c.clientHost))
			}
		})
	}
	wg.Wait()
	for _, c := range cases {
		if c.d != nil {
			c.d.Close()
		}
		if c.a != nil {
			c.a.Close()
		}
	}
	t.Logf("matrix: %d cases settled in %v, transfers done after %v", len(cases), settled.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))

	for _, c := range cases {
		t.Run(c.name(), func(t *testing.T) {
			t.Logf("path %s %v>%v after %v; %s %s (%s); 16 MiB in %v", c.path, c.path.Local, c.path.Remote,
				c.settled.Round(time.Millisecond), c.reported.Kind, c.reported.Outcome, c.reported.Detail, c.moved.Round(time.Millisecond))
			c.check(t, r)
		})
	}
	t.Log("matrix (agent's home ↓, client's home →):\n" + matrixTable(cases))
}

// settle starts the case's agent and client, opens the first session
// (through the relay) and waits for the client's attempt at a direct path
// to end, as the relay hears of it.
func (c *matrixCase) settle(t *testing.T, r *linkRelay, sink string) error {
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel).With().Str("case", c.name()).Logger()
	var err error
	if c.a, c.d, err = startEnds(t, r, c.device, c.agentHost, c.clientHost, sink, log); err != nil {
		return fmt.Errorf("start agent and client: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), onlineWait)
	defer cancel()
	if err := c.a.WaitOnline(ctx); err != nil {
		return err
	}
	start := time.Now()
	dctx, cancel := context.WithTimeout(context.Background(), settleWait)
	defer cancel()
	conn, err := c.d.Dial(dctx, c.device, 22)
	if err != nil {
		return fmt.Errorf("first session, through the relay: %w", err)
	}
	conn.Close()
	if c.want.path == overTCP {
		err = c.viaTCP(r)
		c.settled = time.Since(start)
		return err
	}
	ev, ok := r.events.wait(settleWait, func(e connlog.Event) bool { return e.Kind == "punch" && e.Device == c.device })
	if !ok {
		return fmt.Errorf("no report of the attempt at a direct path within %v", settleWait)
	}
	c.reported, c.settled = ev, time.Since(start)
	return nil
}

// viaTCP checks, from the relay's events, a pair with UDP blocked on one
// side: that side reached the relay over TCP, and no direct path was
// tried (a client over TCP does not ask; an agent over TCP declines, and
// the relay refuses the exchange and counts it as relay).
func (c *matrixCase) viaTCP(r *linkRelay) error {
	if c.agent == natlab.UDPBlocked {
		ev, ok := r.events.wait(settleWait, func(e connlog.Event) bool { return e.Kind == "agent" && e.Device == c.device })
		if !ok || ev.Outcome != "ok" || ev.Detail != "connected over tcp" {
			return fmt.Errorf("the relay's event for the agent behind a UDP-blocked router: %+v, want ok, connected over tcp", ev)
		}
		c.reported = ev
	}
	if c.client == natlab.UDPBlocked {
		// The first session's record, when it ended (closed unread: the
		// client reset it).
		ev, ok := r.events.wait(settleWait, func(e connlog.Event) bool { return e.Kind == "session" && e.Device == c.device })
		if !ok || ev.Outcome == "refused" || !strings.HasSuffix(ev.Detail, "over tcp") {
			return fmt.Errorf("the relay's event for the session of a client behind a UDP-blocked router: %+v, want one over tcp", ev)
		}
		c.reported = ev
		return nil
	}
	ev, ok := r.events.wait(settleWait, func(e connlog.Event) bool { return e.Kind == "exchange" && e.Device == c.device })
	if !ok || ev.Outcome != "refused" || ev.Detail != link.StatusNoDirect.String() {
		return fmt.Errorf("the relay's event for the exchange with an agent over TCP: %+v, want refused, %s", ev, link.StatusNoDirect)
	}
	return nil
}

// transfer opens a session on the path the client settled on and sends
// transferSize pseudo-random bytes through it to the sink, which answers
// their SHA-256.
func (c *matrixCase) transfer() error {
	ctx, cancel := context.WithTimeout(context.Background(), transferMax)
	defer cancel()
	conn, err := c.d.Dial(ctx, c.device, 22)
	if err != nil {
		return fmt.Errorf("session for the transfer: %w", err)
	}
	defer conn.Close()
	c.path, c.carrier = link.PathOf(conn), link.TransportOf(conn)
	conn.SetDeadline(time.Now().Add(transferMax))
	start := time.Now()
	h := sha256.New()
	src := rand.NewChaCha8([32]byte([]byte(fmt.Sprintf("%-32s", c.device))))
	buf := make([]byte, 64<<10)
	for sent := 0; sent < transferSize; sent += len(buf) {
		src.Read(buf)
		h.Write(buf)
		if _, err := conn.Write(buf); err != nil {
			return fmt.Errorf("after %d bytes: %w", sent, err)
		}
	}
	if err := conn.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		return err
	}
	var sum [sha256.Size]byte
	if _, err := io.ReadFull(conn, sum[:]); err != nil {
		return fmt.Errorf("read the sink's hash: %w", err)
	}
	// To the sink's end, so that the session ends cleanly both ways.
	if n, err := io.Copy(io.Discard, conn); err != nil || n != 0 {
		return fmt.Errorf("after the sink's hash: %d bytes more, %v", n, err)
	}
	c.moved = time.Since(start)
	if [sha256.Size]byte(h.Sum(nil)) != sum {
		return errors.New("the 16 MiB arrived altered: the hashes differ")
	}
	return nil
}

// check asserts what the case saw against its expectation.
func (c *matrixCase) check(t *testing.T, r *linkRelay) {
	if c.err != nil {
		t.Fatal(c.err)
	}
	switch c.want.path {
	case overTCP:
		// viaTCP checked the TCP end(s) at the relay; the transfer's own
		// record shows the relay carried its 16 MiB.
		if c.path.Direct {
			t.Errorf("the transfer went direct (%v>%v), want the relay over TCP", c.path.Local, c.path.Remote)
		}
		ev, ok := r.events.wait(time.Second, func(e connlog.Event) bool {
			return e.Kind == "session" && e.Device == c.device && e.BytesIn >= transferSize
		})
		over, carrier := "over tcp", link.TransportTCP
		if c.client != natlab.UDPBlocked {
			over, carrier = "", link.TransportQUIC // the client's own leg is QUIC
		}
		if c.carrier != carrier {
			t.Errorf("the client reached the relay over %s, want %s", c.carrier, carrier)
		}
		if !ok || ev.Outcome != "ok" || ev.Detail != over {
			t.Errorf("the relay's record of the transfer: %+v, want ok, %d bytes in, detail %q", ev, transferSize, over)
		}
	case direct:
		if c.reported.Outcome != "direct" || c.reported.Detail != c.want.pair {
			t.Errorf("relay heard %s %q, want direct %q", c.reported.Outcome, c.reported.Detail, c.want.pair)
		}
		if got := c.path.Local.String() + ">" + c.path.Remote.String(); !c.path.Direct || got != c.want.pair {
			t.Errorf("the transfer went %s (%s), want direct %s", c.path, got, c.want.pair)
		}
	case relayed:
		if c.reported.Outcome != "no_answer" {
			t.Errorf("relay heard %s %q, want no_answer", c.reported.Outcome, c.reported.Detail)
		}
		if c.path.Direct {
			t.Errorf("the transfer went direct (%v>%v), want the relay", c.path.Local, c.path.Remote)
		}
	}
}

// matrixTable draws the paths the cases got: agents' kinds down, clients'
// across.
func matrixTable(cases []*matrixCase) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-12s", "")
	for _, k := range natlab.Kinds {
		fmt.Fprintf(&b, " %-12s", k)
	}
	for i, c := range cases {
		if i%len(natlab.Kinds) == 0 {
			fmt.Fprintf(&b, "\n%-12s", c.agent)
		}
		got := "relay"
		switch {
		case c.err != nil:
			got = "ERROR"
		case c.want.path == overTCP && !c.path.Direct:
			got = "relay (TCP)"
		case c.path.Direct:
			got = "direct"
		}
		fmt.Fprintf(&b, " %-12s", got)
	}
	return b.String()
}

// linkRelay is a Link relay and a STUN server in a lab's internet, the
// store behind them, the relay's events and the metrics they feed.
type linkRelay struct {
	addr    netip.AddrPort
	fp      string
	store   *store.Store
	events  *eventLog
	metrics *metrics.Metrics
}

// startLinkRelay starts the relay at InternetA:7443, UDP and TCP, and STUN at
// InternetA:3478 (which the relay tells agents and clients about), until
// the test ends.
func startLinkRelay(t testing.TB, lab *natlab.Lab) *linkRelay {
	t.Helper()
	stunAddr := netip.AddrPortFrom(natlab.InternetA, 3478)
	ss, err := stun.New(stun.Config{PacketConn: lab.Internet.ListenUDP(t, stunAddr), Listener: lab.Internet.ListenTCP(t, stunAddr)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ss.Shutdown(context.Background()) })
	st, err := store.Open(store.Config{Dir: t.TempDir(), SweepEvery: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	m, err := metrics.New(metrics.Config{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Shutdown(context.Background()) })
	cert, fp, err := linkserver.LoadCert(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r := &linkRelay{addr: netip.AddrPortFrom(natlab.InternetA, 7443), fp: fp, store: st, events: &eventLog{}, metrics: m}
	srv, err := linkserver.New(linkserver.Config{
		PacketConn: lab.Internet.ListenUDP(t, r.addr), TCPListener: lab.Internet.ListenTCP(t, r.addr), Certificate: cert, Store: st,
		STUN:   netip.AddrPortFrom(netip.IPv4Unspecified(), stunAddr.Port()),
		Events: func(e connlog.Event) { m.ObserveEvent(e); r.events.add(e) },
		Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return r
}

// eventLog keeps the relay's events.
type eventLog struct {
	mu     sync.Mutex
	events []connlog.Event
}

func (l *eventLog) add(e connlog.Event) {
	l.mu.Lock()
	l.events = append(l.events, e)
	l.mu.Unlock()
}

// wait returns the first event that match accepts, waiting up to timeout
// for it.
func (l *eventLog) wait(timeout time.Duration, match func(connlog.Event) bool) (connlog.Event, bool) {
	for end := time.Now().Add(timeout); ; time.Sleep(20 * time.Millisecond) {
		l.mu.Lock()
		for _, e := range l.events {
			if match(e) {
				l.mu.Unlock()
				return e, true
			}
		}
		l.mu.Unlock()
		if time.Now().After(end) {
			return connlog.Event{}, false
		}
	}
}

// listenIn opens the UDP sockets of an agent or a client in ns: the main
// one and birthday probing's, which the agent's and the dialer's own
// goroutines open outside any Do.
func listenIn(ns *natlab.Namespace) func(string, *net.UDPAddr) (*net.UDPConn, error) {
	return func(network string, laddr *net.UDPAddr) (c *net.UDPConn, err error) {
		err = ns.Do(func() error {
			c, err = net.ListenUDP(network, laddr)
			return err
		})
		return c, err
	}
}

// tcpInfo is ss(8)'s account of ns's TCP connections: queues, windows,
// retransmissions.
func tcpInfo(ns *natlab.Namespace) string {
	out, err := ns.Command("ss", "-tin").CombinedOutput()
	if err != nil {
		return fmt.Sprintf("ss: %v", err)
	}
	return string(out)
}

// dialIn opens an agent's or a client's TCP connections to the relay in
// ns (its own goroutines would open them outside it).
func dialIn(ns *natlab.Namespace) func(context.Context, string, string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		err = ns.Do(func() error {
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// startHashSink serves, on 127.0.0.1 in the test's own namespace (where
// the agents' goroutines dial their exposed services), TCP connections
// whose bytes it hashes until EOF, then answers their SHA-256.
func startHashSink(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testutil.Serve(t, ln, func(c net.Conn) {
		h := sha256.New()
		if _, err := io.Copy(h, c); err == nil {
			c.Write(h.Sum(nil))
		}
	})
	return ln.Addr().String()
}

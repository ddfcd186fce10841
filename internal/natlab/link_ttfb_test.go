package natlab_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/natlab"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/link"
	"github.com/rs/zerolog"
)

// BenchmarkLabTimeToFirstByte measures, in the lab, what a user of
// `nasreach connect` waits for: b.N attempts, each a new client (a new
// link.Dialer, as a new connect process) reaching an agent across two
// masquerading home routers, the common case (the client in one of eight
// homes in turn). An attempt times its first
// session's first byte, which comes through the relay; the direct path
// being up (from that session's start); and, once it is, a second session's
// first byte over the direct path. Each first byte is the greeting of a TCP
// service behind the agent, end-to-end TLS included. Run it with a count:
//
//	go test -run '^$' -bench LabTimeToFirstByte -benchtime 100x ./internal/natlab
func BenchmarkLabTimeToFirstByte(b *testing.B) {
	lab := natlab.New(b)
	r := startLinkRelay(b, lab)
	var logs testutil.Buffer
	log := zerolog.New(&logs).Level(zerolog.InfoLevel)
	greeter := startGreeter(b)
	const device = "ttfb"
	startLabAgent(b, r, lab.AddHome(natlab.Masquerade).Host(), device, greeter, log)
	// Clients take turns across eight homes: the relay's per-address limit on
	// new streams (linkserver.DefaultStreamBurst) is for one user's clients,
	// not a benchmark's hundreds from one address.
	var clientHosts []*natlab.Namespace
	for range 8 {
		clientHosts = append(clientHosts, lab.AddHome(natlab.Masquerade).Host())
	}

	// firstByte opens a session, which must take the path want, and
	// returns how long its greeting took.
	firstByte := func(ctx context.Context, d *link.Dialer, want bool) (time.Duration, error) {
		start := time.Now()
		conn, err := d.Dial(ctx, device, 22)
		if err != nil {
			return 0, err
		}
		defer conn.Close()
		if _, err := io.ReadFull(conn, make([]byte, 1)); err != nil {
			return 0, fmt.Errorf("greeting: %w", err)
		}
		took := time.Since(start)
		if got := link.PathOf(conn); got.Direct != want {
			return 0, fmt.Errorf("the session took path %v", got)
		}
		return took, nil
	}
	var relayed, toDirect, direct []time.Duration
	attempt := func(clientHost *natlab.Namespace) error {
		d, err := link.NewDialer(link.DialerConfig{
			Server: r.addr.String(), RelayFingerprint: r.fp, KnownDevices: "-",
			Listen: netip.AddrPortFrom(clientHost.Addr, 0).String(), ListenUDP: listenIn(clientHost), Logger: log,
		})
		if err != nil {
			return err
		}
		defer d.Close()
		ctx, cancel := context.WithTimeout(context.Background(), settleWait)
		defer cancel()
		start := time.Now()
		took, err := firstByte(ctx, d, false)
		if err != nil {
			return fmt.Errorf("first session: %w", err)
		}
		relayed = append(relayed, took)
		for !d.PathTo(device).Direct {
			if ctx.Err() != nil {
				return fmt.Errorf("no direct path %v after the first session", settleWait)
			}
			time.Sleep(time.Millisecond)
		}
		toDirect = append(toDirect, time.Since(start))
		if took, err = firstByte(ctx, d, true); err != nil {
			return fmt.Errorf("session on the direct path: %w", err)
		}
		direct = append(direct, took)
		return nil
	}
	b.ResetTimer()
	for i := range b.N {
		mark := len(logs.Bytes())
		if err := attempt(clientHosts[i%len(clientHosts)]); err != nil {
			b.Fatalf("attempt %d: %v; its logs:\n%s", i, err, logs.Bytes()[mark:])
		}
	}
	b.StopTimer()
	pct := func(ds []time.Duration, q float64) float64 {
		s := slices.Clone(ds)
		slices.Sort(s)
		return float64(s[int(q*float64(len(s)-1)+0.5)].Microseconds()) / 1000
	}
	for _, f := range []struct {
		name string
		ds   []time.Duration
	}{{"relayed_first_byte", relayed}, {"to_direct", toDirect}, {"direct_first_byte", direct}} {
		b.ReportMetric(pct(f.ds, 0.5), f.name+"_ms_p50")
		b.ReportMetric(pct(f.ds, 0.99), f.name+"_ms_p99")
	}
	b.Logf("%d new clients across two masquerading routers: first byte through the relay p50 %.1f ms p99 %.1f ms; "+
		"direct path up p50 %.1f ms p99 %.1f ms after it; first byte on the direct path p50 %.1f ms p99 %.1f ms",
		b.N, pct(relayed, 0.5), pct(relayed, 0.99), pct(toDirect, 0.5), pct(toDirect, 0.99), pct(direct, 0.5), pct(direct, 0.99))
}

// startLabAgent creates device in the relay's store and runs an agent for it
// on host, exposing port 22 as the local service at service, until the test
// ends; it returns once the agent is online.
func startLabAgent(t testing.TB, r *linkRelay, host *natlab.Namespace, device, service string, log zerolog.Logger) *link.Agent {
	t.Helper()
	a, err := newLabAgent(t, r, device, host, service, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), onlineWait)
	defer cancel()
	if err := a.WaitOnline(ctx); err != nil {
		t.Fatal(err)
	}
	return a
}

// startGreeter serves, on 127.0.0.1 in the test's own namespace (where the
// agents' goroutines dial their exposed services), TCP connections that get
// one byte at once and are then read until EOF.
func startGreeter(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testutil.Serve(t, ln, func(c net.Conn) {
		if _, err := c.Write([]byte{'>'}); err == nil {
			io.Copy(io.Discard, c) //nolint:errcheck // until the client closes
		}
	})
	return ln.Addr().String()
}

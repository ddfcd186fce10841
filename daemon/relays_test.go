package daemon_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nasreach/nasreach/daemon"
	"github.com/nasreach/nasreach/daemon/daemontest"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/turnserver"
	"github.com/rs/zerolog"
)

// connlogText is everything in the daemon's connection log so far.
func connlogText(t *testing.T, td *daemontest.Daemon) string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(td.Dir, "logs", "conn-*.jsonl"))
	var b strings.Builder
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(data)
	}
	return b.String()
}

// The daemon serves STUN and TURN on one port: a device allocates with its
// own credentials, the allocation shows in the metrics while it lasts, ends
// the moment the owner switches Link off, and leaves one masked record in
// the connection log and its bytes in the metrics.
func TestDaemonServesSTUNAndTURNForDevices(t *testing.T) {
	td := daemontest.Start(t, daemontest.WithTURN)
	token := td.AddDevice("nas1")
	srv := netip.MustParseAddrPort(td.STUN)

	daemontest.CheckSTUN(t, srv)

	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	client := daemontest.TURNClient(t, c, srv, "nas1", turnserver.DevicePassword(token), turnserver.DefaultRealm)
	relayConn, err := client.Allocate()
	if err != nil {
		t.Fatalf("allocate with the device's credentials: %v", err)
	}
	daemontest.EchoThrough(t, relayConn, daemontest.UDPEcho(t))
	fams, _ := scrape(t, td)
	if got := value(t, fams, "nasreach_sessions_active", map[string]string{"service": "turn"}); got != 1 {
		t.Errorf("turn sessions active = %v, want 1", got)
	}

	if code, body := td.Do(http.MethodPatch, "/v1/devices/nas1", td.Admin, map[string]bool{"link": false}); code != http.StatusOK {
		t.Fatalf("PATCH link=false: HTTP %d %s", code, body)
	}
	testutil.WaitFor(t, 10*time.Second, "the allocation's record in the connection log", func() bool {
		return strings.Contains(connlogText(t, td), `"service":"turn"`)
	})
	logged := connlogText(t, td)
	if !strings.Contains(logged, `"device":"nas1"`) || !strings.Contains(logged, `"client":"127.0.0.0"`) {
		t.Errorf("the TURN record lacks the device or the masked client:\n%s", logged)
	}
	if strings.Contains(logged, "127.0.0.1") {
		t.Errorf("the connection log holds an unmasked address:\n%s", logged)
	}
	fams, _ = scrape(t, td)
	if got := value(t, fams, "nasreach_sessions_active", map[string]string{"service": "turn"}); got != 0 {
		t.Errorf("turn sessions active after revocation = %v, want 0", got)
	}
	if got := value(t, fams, "nasreach_relayed_bytes_total", map[string]string{"service": "turn", "direction": "in"}); got < 4 {
		t.Errorf("turn bytes in = %v, want at least the 4 bytes sent", got)
	}

	// New allocations are refused, and the refusal is counted.
	c2, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := daemontest.TURNClient(t, c2, srv, "nas1", turnserver.DevicePassword(token), turnserver.DefaultRealm).Allocate(); err == nil {
		t.Fatal("a device with Link off allocated")
	}
	fams, _ = scrape(t, td)
	if got := value(t, fams, "nasreach_turn_refused_total", map[string]string{"reason": "auth"}); got < 1 {
		t.Errorf("turn auth refusals = %v, want at least 1", got)
	}
}

// The daemon's Link relay reports agents online and sessions in progress, and
// counts a finished session's bytes.
func TestDaemonLinkMetrics(t *testing.T) {
	td := daemontest.Start(t, daemontest.WithLink)
	tl := td.LinkRelay()
	token := td.AddDevice("nas1")
	d := tl.EchoDevice(t, "nas1", token)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.Dial(ctx, "nas1", 22)
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("twelve bytes")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, len(msg))); err != nil {
		t.Fatal(err)
	}
	fams, _ := scrape(t, td)
	if got := value(t, fams, "nasreach_devices_online", nil); got != 1 {
		t.Errorf("devices online = %v, want 1", got)
	}
	if got := value(t, fams, "nasreach_sessions_active", map[string]string{"service": "link"}); got != 1 {
		t.Errorf("link sessions active = %v, want 1", got)
	}
	c.Close()
	testutil.WaitFor(t, 10*time.Second, "the session to end", func() bool { return tl.Relay.Sessions() == 0 })
	testutil.WaitFor(t, 10*time.Second, "the session's bytes in the metrics", func() bool {
		fams, _ := scrape(t, td)
		for _, l := range fams["nasreach_relayed_bytes_total"] {
			if l.labels["service"] == "link" && l.labels["direction"] == "in" && l.value >= float64(len(msg)) {
				return true
			}
		}
		return false
	})
}

// A reload swaps the TURN users and the Link limits and reports it; what cannot change live is
// reported as needing a restart.
func TestReloadChangesTURNUsers(t *testing.T) {
	td := daemontest.Start(t, daemontest.WithTURN, func(c *daemon.Config) { c.TURN.Users = []string{"alice:pw"} })
	srv := netip.MustParseAddrPort(td.STUN)
	allocateAs := func(user, pass string) (net.PacketConn, error) {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		return daemontest.TURNClient(t, c, srv, user, pass, turnserver.DefaultRealm).Allocate()
	}
	alice, err := allocateAs("alice", "pw")
	if err != nil {
		t.Fatal(err)
	}
	peer := daemontest.UDPEcho(t)
	daemontest.EchoThrough(t, alice, peer)

	next := td.Daemon.Config()
	next.TURN.Users = []string{"bob:pw2"}
	next.TURN.MaxAllocations = 7
	next.Link.MaxStreams = 3
	applied, restart := td.Daemon.Reload(next)
	if !slices.Equal(applied, []string{"link-max-streams", "turn-user"}) || !slices.Equal(restart, []string{"turn-max-allocations"}) {
		t.Errorf("reload applied %v, needs restart %v; want link-max-streams and turn-user applied, turn-max-allocations needing a restart", applied, restart)
	}
	testutil.WaitFor(t, 10*time.Second, "alice's allocation to end", func() bool { return td.Daemon.TURNRelay().Stats().Allocations == 0 })
	if _, err := allocateAs("alice", "pw"); err == nil {
		t.Error("alice still allocates after she was removed")
	}
	bob, err := allocateAs("bob", "pw2")
	if err != nil {
		t.Fatalf("bob, added by the reload: %v", err)
	}
	daemontest.EchoThrough(t, bob, peer)
}

// What a TURN client relays (not end-to-end encrypted by us, so the relay
// could read it) reaches neither the data directory nor the daemon's own log,
// even at debug level.
func TestTURNPayloadIsNeverStoredOrLogged(t *testing.T) {
	var daemonLog testutil.Buffer
	// zerolog's global level is the process's: whatever another test left
	// it at must not hide the debug records this one looks through.
	prev := zerolog.GlobalLevel()
	zerolog.SetGlobalLevel(zerolog.DebugLevel)
	t.Cleanup(func() { zerolog.SetGlobalLevel(prev) })
	td := daemontest.Start(t, daemontest.WithTURN, func(c *daemon.Config) {
		c.Logger = zerolog.New(&daemonLog).Level(zerolog.DebugLevel)
		c.LogLevel = zerolog.DebugLevel
	})
	token := td.AddDevice("nas1")
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	relayConn, err := daemontest.TURNClient(t, c, netip.MustParseAddrPort(td.STUN), "nas1", turnserver.DevicePassword(token), turnserver.DefaultRealm).Allocate()
	if err != nil {
		t.Fatal(err)
	}
	const payload = "payload-7f3a-never-on-disk"
	peer := daemontest.UDPEcho(t)
	buf := make([]byte, 100)
	for got := 0; got < 3; {
		relayConn.WriteTo([]byte(payload), peer)
		relayConn.SetReadDeadline(time.Now().Add(time.Second))
		if n, _, err := relayConn.ReadFrom(buf); err == nil && string(buf[:n]) == payload {
			got++
		}
	}
	relayConn.Close()
	testutil.WaitFor(t, 10*time.Second, "the allocation's record", func() bool { return strings.Contains(connlogText(t, td), `"service":"turn"`) })
	td.Stop() // flush and close everything that might hold it
	err = filepath.WalkDir(td.Dir, func(path string, e os.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err == nil && strings.Contains(string(data), payload) {
			t.Errorf("%s holds relayed payload", path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(daemonLog.String(), payload) {
		t.Error("the daemon's log holds relayed payload")
	}
	if !strings.Contains(daemonLog.String(), "turn") {
		t.Error("the daemon's log is empty: is the capture wired?")
	}
}

// A TURN request refused for its credentials or its quota is counted by
// reason in the metrics and recorded, masked, in the connection log; the
// challenge every client gets first is neither.
func TestDaemonCountsAndRecordsTURNRefusals(t *testing.T) {
	td := daemontest.Start(t, daemontest.WithTURN, func(c *daemon.Config) { c.TURN.UserQuota = 1 })
	token := td.AddDevice("nas1")
	srv := netip.MustParseAddrPort(td.STUN)
	allocate := func(pass string) error {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		_, err = daemontest.TURNClient(t, c, srv, "nas1", pass, turnserver.DefaultRealm).Allocate()
		return err
	}
	if err := allocate("not-the-token-hash"); err == nil {
		t.Fatal("a wrong password allocated")
	}
	if err := allocate(turnserver.DevicePassword(token)); err != nil {
		t.Fatalf("allocate: %v", err)
	}
	if err := allocate(turnserver.DevicePassword(token)); err == nil {
		t.Fatal("an allocation beyond the quota of 1")
	}
	fams, _ := scrape(t, td)
	for reason, want := range map[string]float64{"auth": 1, "quota": 1, "peer": 0, "request": 0} {
		if got := value(t, fams, "nasreach_turn_refused_total", map[string]string{"reason": reason}); got != want {
			t.Errorf("turn refusals for %s = %v, want %v", reason, got, want)
		}
	}
	testutil.WaitFor(t, 10*time.Second, "both refusals in the connection log", func() bool {
		return strings.Count(connlogText(t, td), `"kind":"request"`) == 2
	})
	logged := connlogText(t, td)
	for _, want := range []string{
		`"outcome":"badauth","device":"nas1","client":"127.0.0.0","detail":"allocate: 401 wrong password"`,
		`"outcome":"refused","device":"nas1","client":"127.0.0.0","detail":"allocate: 486 allocation quota reached: the user has 1 of 1, 1 asked"`,
	} {
		if !strings.Contains(logged, want) {
			t.Errorf("the connection log lacks %s:\n%s", want, logged)
		}
	}
	if strings.Contains(logged, "127.0.0.1") {
		t.Errorf("the connection log holds an unmasked address:\n%s", logged)
	}
}

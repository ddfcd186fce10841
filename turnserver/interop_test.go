package turnserver

import (
	"context"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/stun"
)

// echoPort starts an echo peer on 127.0.0.1 and returns its port.
func echoPort(t *testing.T) int {
	t.Helper()
	addr, _ := startEcho(t)
	return addr.Port
}

var (
	uclientTotalsRE = regexp.MustCompile(`start_mclient: tot_send_msgs=(\d+), tot_recv_msgs=(\d+)`)
	uclientLostRE   = regexp.MustCompile(`Total lost packets (\d+)`)
)

// uclientCounts runs turnutils_uclient and returns its final counts. The
// exit status says little (it is 0 even when every packet was lost).
func uclientCounts(t *testing.T, args ...string) (sent, received, lost int, out []byte, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err = exec.CommandContext(ctx, testutil.NeedTool(t, "turnutils_uclient"), args...).CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("turnutils_uclient timed out:\n%s", out)
	}
	if m := uclientTotalsRE.FindSubmatch(out); m != nil {
		sent, _ = strconv.Atoi(string(m[1]))
		received, _ = strconv.Atoi(string(m[2]))
	}
	if m := uclientLostRE.FindSubmatch(out); m != nil {
		lost, _ = strconv.Atoi(string(m[1]))
	} else {
		lost = -1
	}
	return sent, received, lost, out, err
}

// TestCoturnUclientThroughTheRelay drives coturn's TURN client against the
// relay: allocation, permissions, channels or Send indications, and data to
// an echo peer and back, over each transport and credential kind. The peer
// is startEcho's, not coturn's turnutils_peer: that one only takes a port
// number, which the test would have to find free, release and hope to get
// back, while startEcho holds its socket from the start.
func TestCoturnUclientThroughTheRelay(t *testing.T) {
	testutil.NeedTool(t, "turnutils_uclient")
	const secret = "rest-secret"
	tt := startTURN(t, func(c *Config) {
		c.Secret = secret
		c.MaxAllocationsPerUser = 100 // the subtests run in parallel as one user
		c.TLS = selfSigned(t)
		c.TLSAddr = "127.0.0.1:0"
	})
	peer := echoPort(t)
	const n = 10
	port := strconv.Itoa(int(tt.Addr().Port()))
	tlsPort := strconv.Itoa(int(tt.TLSAddr().Port()))
	tests := []struct {
		name    string
		args    []string
		clients int
	}{
		{"udp channels", []string{"-p", port}, 1},
		{"udp send indications", []string{"-p", port, "-s"}, 1},
		{"tcp", []string{"-p", port, "-t"}, 1},
		{"tls", []string{"-p", tlsPort, "-t", "-S"}, 1},
		{"rest credentials", []string{"-p", port, "-W", secret}, 1},
		{"several clients", []string{"-p", port, "-m", "3"}, 3},
		// Two clients talking to each other through their relay addresses:
		// this works under the default peer policy too; see below.
		{"client to client", []string{"-p", port, "-y"}, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel() // uclient mostly waits on its own timers
			args := append([]string{"-u", testUser, "-w", testPass, "-L", "127.0.0.1", "-X", "-c",
				"-e", "127.0.0.1", "-r", strconv.Itoa(peer), "-n", strconv.Itoa(n), "-l", "100"}, tc.args...)
			sent, received, lost, out, err := uclientCounts(t, append(args, "127.0.0.1")...)
			if err != nil {
				t.Fatalf("turnutils_uclient: %v\n%s", err, out)
			}
			if want := n * tc.clients; sent != want || received != want || lost != 0 {
				t.Fatalf("sent %d, received %d, lost %d; want %d, %d, 0\n%s", sent, received, lost, want, want, out)
			}
		})
	}
}

// TestCoturnUclientUnderTheDefaultPolicy: without an allow-list, coturn's
// client can still relay to another client of the same server, but its
// ChannelBind to the echo peer on 127.0.0.1 gets 403.
func TestCoturnUclientUnderTheDefaultPolicy(t *testing.T) {
	testutil.NeedTool(t, "turnutils_uclient")
	tt := startTURN(t, func(c *Config) { c.AllowPeers = nil })
	peer := echoPort(t)
	base := []string{"-u", testUser, "-w", testPass, "-L", "127.0.0.1", "-X", "-c", "-n", "10", "-l", "100",
		"-p", strconv.Itoa(int(tt.Addr().Port())), "-e", "127.0.0.1", "-r", strconv.Itoa(peer)}

	sent, received, lost, out, err := uclientCounts(t, append(base, "-y", "127.0.0.1")...)
	if err != nil || sent != 20 || received != 20 || lost != 0 {
		t.Errorf("client to client: sent %d, received %d, lost %d (%v)\n%s", sent, received, lost, err, out)
	}
	_, received, _, out, _ = uclientCounts(t, append(base, "127.0.0.1")...)
	if received != 0 || !regexp.MustCompile(`channel bind: error 403`).Match(out) {
		t.Errorf("to a loopback peer: received %d, want a 403 refusal\n%s", received, out)
	}
}

// TestCoturnStunclientOnTheTURNPort: coturn's STUN client learns its address
// from the TURN port, answered by the stun package's Responder.
func TestCoturnStunclientOnTheTURNPort(t *testing.T) {
	bin := testutil.NeedTool(t, "turnutils_stunclient")
	r, err := stun.NewResponder(stun.ResponderConfig{})
	if err != nil {
		t.Fatal(err)
	}
	tt := startTURN(t, func(c *Config) { c.Binding = r.Answer })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "-L", "127.0.0.1", "-p", strconv.Itoa(int(tt.Addr().Port())), "127.0.0.1").CombinedOutput()
	if err != nil {
		t.Fatalf("turnutils_stunclient: %v\n%s", err, out)
	}
	if !regexp.MustCompile(`UDP reflexive addr: 127\.0\.0\.1:\d+`).Match(out) {
		t.Fatalf("no reflexive address in output:\n%s", out)
	}
	if st := r.Stats(); st.Answered == 0 {
		t.Errorf("responder stats %+v, want answers", st)
	}
}

package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nasreach/nasreach/daemon/daemontest"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/link"
	"github.com/rs/zerolog"
	"github.com/urfave/cli/v3"
)

// runLinkCLI runs the agent or connect subcommand in the background until the
// test ends and returns its log, which the test shows if it fails.
func runLinkCLI(t *testing.T, args ...string) *testutil.Buffer {
	t.Helper()
	log := &testutil.Buffer{}
	app := &cli.Command{Name: "nasreach", Writer: io.Discard, ErrWriter: log,
		Commands: []*cli.Command{agentCommand(), connectCommand()}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- app.Run(ctx, append([]string{"nasreach"}, args...)) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("nasreach %s: %v", args[0], err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("nasreach %s did not stop within 10s", args[0])
		}
		if t.Failed() {
			t.Logf("nasreach %s log:\n%s", args[0], log)
		}
	})
	return log
}

func TestAgentAndConnectCommandsServeHTTPThroughTheDaemonsRelay(t *testing.T) {
	td := daemontest.Start(t, daemontest.WithLink, daemontest.WithTURN)
	tl := td.LinkRelay()
	tok := td.AddDevice("nas1")
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "hello from the NAS")
	}))
	defer backend.Close()
	state := t.TempDir()
	runLinkCLI(t, "agent", "--server", tl.Relay.Addr().String(), "--relay-fingerprint", tl.Fingerprint, "--device", "nas1", "--token", tok,
		"--expose", "443="+strings.TrimPrefix(backend.URL, "http://"), "--api", td.HTTP, "--state", state, "--log-level", "error")
	testutil.WaitFor(t, 10*time.Second, "the agent at the relay", func() bool { return tl.Relay.Agents() == 1 })

	// The agent published its key and the device's address.
	var dev struct {
		PublicKey string `json:"public_key"`
		IPv4      string `json:"ipv4"`
	}
	testutil.WaitFor(t, 10*time.Second, "the agent's key and address in the store", func() bool {
		_, body := td.Do(http.MethodGet, "/v1/devices/nas1", td.Admin, nil)
		return json.Unmarshal(body, &dev) == nil && dev.PublicKey != "" && dev.IPv4 == "127.0.0.1"
	})
	if fi, err := os.Stat(filepath.Join(state, link.KeyFileName)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("device key file: %v, mode %v; want 0600", err, fi.Mode())
	}

	known := filepath.Join(t.TempDir(), "known_devices")
	// connect binds port 0 itself and logs the address: no port is freed
	// and bound again, which another process could take in between.
	connectLog := runLinkCLI(t, "connect", "--server", tl.Relay.Addr().String(), "--relay-fingerprint", tl.Fingerprint, "nas1:443",
		"--listen", "127.0.0.1:0", "--known-devices", known, "--log-level", "info", "--log-format", "json")
	listen := logField(t, connectLog, "forwarding connections", "listen")
	var body string
	get := func() bool {
		resp, err := (&http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}).Get("http://" + listen + "/")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		return true
	}
	testutil.WaitFor(t, 10*time.Second, "a GET through connect", get)
	if body != "hello from the NAS" {
		t.Fatalf("body = %q", body)
	}
	if path := logField(t, connectLog, "link session", "path"); path != "relay" {
		t.Errorf("the first session took path=%s, want relay (at once, while punching starts)", path)
	}
	// The next sessions go straight to the agent on this machine, and
	// connect says so, with the candidate kinds but no address.
	testutil.WaitFor(t, 10*time.Second, "a session with path=direct in connect's log", func() bool {
		return get() && body == "hello from the NAS" && strings.Contains(connectLog.String(), `"path":"direct"`)
	})
	for _, line := range strings.Split(connectLog.String(), "\n") {
		if strings.Contains(line, `"path":"direct"`) && (!strings.Contains(line, `"pair":"host>host"`) || strings.Contains(line, "127.0.0.1")) {
			t.Errorf("connect logged %s; want the pair's kinds and no address", line)
		}
	}
	// The key the client pinned on first use is the one the agent published.
	der, _ := base64.StdEncoding.DecodeString(dev.PublicKey)
	if b, _ := os.ReadFile(known); !strings.Contains(string(b), link.Fingerprint(der)) {
		t.Errorf("known_devices %q does not hold the published key %s", b, link.Fingerprint(der))
	}
	// One connection-log record, with the client address masked.
	testutil.WaitFor(t, 10*time.Second, "the session in the connection log", func() bool {
		files, _ := filepath.Glob(filepath.Join(td.Dir, "logs", "conn-*.jsonl"))
		for _, f := range files {
			b, _ := os.ReadFile(f)
			if strings.Contains(string(b), `"service":"link"`) && strings.Contains(string(b), `"kind":"session"`) {
				if strings.Contains(string(b), "127.0.0.1") {
					t.Errorf("connection log holds an unmasked address: %s", b)
				}
				return true
			}
		}
		return false
	})
}

func TestLinkFlagsAreChecked(t *testing.T) {
	for _, tc := range []struct {
		expose []string
		want   string
	}{
		{[]string{"443"}, "want PORT=HOST:PORT"},
		{[]string{"0=127.0.0.1:1"}, "want PORT=HOST:PORT"},
		{[]string{"22=127.0.0.1:22", "22=127.0.0.1:2222"}, "given twice"},
	} {
		if _, err := parseExpose(tc.expose); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseExpose(%q) = %v, want %q", tc.expose, err, tc.want)
		}
	}
	if _, _, err := parseTarget("nas1"); err == nil {
		t.Error("parseTarget accepted a target without a port")
	}
	if d, p, err := parseTarget("NAS1:443"); err != nil || d != "nas1" || p != 443 {
		t.Errorf("parseTarget(NAS1:443) = %s %d %v", d, p, err)
	}
}

func TestDirectFlagTakesAutoOrNever(t *testing.T) {
	for arg, want := range map[string]string{"auto": "false", "never": "true", "sometimes": `--direct "sometimes": want auto or never`} {
		var got string
		cmd := &cli.Command{Name: "connect", Flags: linkClientFlags(), Writer: io.Discard, ErrWriter: io.Discard,
			Action: func(_ context.Context, cmd *cli.Command) error {
				off, err := disableDirect(cmd)
				got = fmt.Sprint(off)
				return err
			}}
		if err := cmd.Run(context.Background(), []string{"connect", "--direct", arg}); err != nil {
			got = err.Error()
		}
		if got != want {
			t.Errorf("--direct %s: %s, want %s", arg, got, want)
		}
	}
}

// TestConnectOpensPlainSessionsToAnAgentThatPredatesThem: connect reaches
// an agent that answers as one before resumable sessions (TLS right after
// the OK Result) without any flag, saying once that its sessions are
// plain; with --no-resume (or NASREACH_NO_RESUME) it offers no resumable
// session at all.
func TestConnectOpensPlainSessionsToAnAgentThatPredatesThem(t *testing.T) {
	td := daemontest.Start(t, daemontest.WithLink)
	tl := td.LinkRelay()
	echo := testutil.ListenTCP(t)
	testutil.Serve(t, echo, func(c net.Conn) { io.Copy(c, c) })
	agentLog := &testutil.Buffer{}
	tl.StartAgent(t, link.AgentConfig{Device: "nas1", Token: td.AddDevice("nas1"), Expose: map[uint16]string{22: echo.Addr().String()},
		DisableResume: true, Logger: zerolog.New(agentLog)})
	const refused = "end-to-end handshake failed" // the agent's TLS server, given a Session frame
	const predates = "the device's agent serves no resumable sessions"
	for _, tc := range []struct {
		name  string
		flags []string
		env   string
		logs  int // lines saying the agent predates resumable sessions
	}{
		{"found out", nil, "", 1},
		{"--no-resume", []string{"--no-resume"}, "", 0},
		{"NASREACH_NO_RESUME", nil, "true", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env != "" {
				t.Setenv("NASREACH_NO_RESUME", tc.env)
			}
			before := strings.Count(agentLog.String(), refused)
			log := runLinkCLI(t, append([]string{"connect", "--server", tl.Relay.Addr().String(), "--relay-fingerprint", tl.Fingerprint,
				"--known-devices", "-", "--direct", "never", "--listen", "127.0.0.1:0", "--log-level", "info", "--log-format", "json"},
				append(tc.flags, "nas1:22")...)...)
			listen := logField(t, log, "forwarding connections", "listen")
			echoConnections(t, listen, 2)
			if n := strings.Count(log.String(), predates); n != tc.logs {
				t.Errorf("connect said %d times that the agent predates resumable sessions, want %d:\n%s", n, tc.logs, log)
			}
			if n := strings.Count(agentLog.String(), refused) - before; n != tc.logs {
				t.Errorf("connect offered %d resumable sessions, want %d", n, tc.logs)
			}
		})
	}
}

// TestAgentNoResumeServesPlainSessions: an agent run with --no-resume
// keeps no session buffers; connect, with no flag, finds that out on its
// first connection, says so once, and serves every connection.
func TestAgentNoResumeServesPlainSessions(t *testing.T) {
	td := daemontest.Start(t, daemontest.WithLink)
	tl := td.LinkRelay()
	tok := td.AddDevice("nas1")
	echo := testutil.ListenTCP(t)
	testutil.Serve(t, echo, func(c net.Conn) { io.Copy(c, c) })
	runLinkCLI(t, "agent", "--server", tl.Relay.Addr().String(), "--relay-fingerprint", tl.Fingerprint, "--device", "nas1", "--token", tok,
		"--expose", "22="+echo.Addr().String(), "--state", t.TempDir(), "--no-resume", "--log-level", "error")
	testutil.WaitFor(t, 10*time.Second, "the agent at the relay", func() bool { return tl.Relay.Agents() == 1 })
	log := runLinkCLI(t, "connect", "--server", tl.Relay.Addr().String(), "--relay-fingerprint", tl.Fingerprint,
		"--known-devices", "-", "--direct", "never", "--listen", "127.0.0.1:0", "--log-level", "info", "--log-format", "json", "nas1:22")
	listen := logField(t, log, "forwarding connections", "listen")
	echoConnections(t, listen, 3)
	if n := strings.Count(log.String(), "the device's agent serves no resumable sessions"); n != 1 {
		t.Errorf("connect said %d times that the agent serves plain sessions, want 1:\n%s", n, log)
	}
}

// echoConnections opens n connections in turn to connect listening at
// listen, each echoing one message through it to an echo service.
func echoConnections(t *testing.T, listen string, n int) {
	t.Helper()
	for i := range n {
		c, err := net.Dial("tcp", listen)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		msg := fmt.Sprintf("hello %d", i)
		got := make([]byte, len(msg))
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
			t.Fatalf("connection %d: echo %q, %v", i+1, got, err)
		}
		c.Close()
	}
}

package natlab_test

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/natlab"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/linkserver"
)

// TestLinkAgentBehindUDPBlockedReachesTheRelayOverTCP runs the real
// binary: the daemon in the internet with its Link relay on one port for
// UDP and TCP, an agent behind a router that drops all UDP, and connect
// behind a Masquerade router. The agent's QUIC gets no answer; it reaches
// the relay over TCP within a few seconds, with no flag naming TCP, and
// the client's session (over QUIC) reaches the agent's service.
func TestLinkAgentBehindUDPBlockedReachesTheRelayOverTCP(t *testing.T) {
	lab := natlab.New(t) // first: it skips without root, before the build
	bin := testutil.BuildNasreach(t)
	blocked, open := lab.AddHome(natlab.UDPBlocked), lab.AddHome(natlab.Masquerade)
	relay := netip.AddrPortFrom(natlab.InternetA, 7443).String()
	data := t.TempDir()
	serve, _ := run(t, lab.Internet.Command(bin, "serve", "--data", data, "--log-format", "json", "--link", relay, "--link-tcp", relay))

	var token string
	testutil.WaitFor(t, 15*time.Second, "the daemon to register a device", func() bool {
		out, err := exec.Command(bin, "device", "--data", data, "add", "nas1").Output()
		m := regexp.MustCompile(`token: (\S+)`).FindSubmatch(out)
		if err == nil && m != nil {
			token = string(m[1])
		}
		return token != ""
	})
	_, fp, err := linkserver.LoadCert(data) // the daemon generated it at start
	if err != nil {
		t.Fatal(err)
	}

	host := blocked.Host()
	echo := host.ListenTCP(t, netip.AddrPortFrom(host.Addr, 0))
	testutil.Serve(t, echo, func(c net.Conn) { io.Copy(c, c) })
	agentCmd := host.Command(bin, "agent", "--server", relay, "--relay-fingerprint", fp, "--device", "nas1",
		"--expose", "22="+echo.Addr().String(), "--state", t.TempDir())
	agentCmd.Env = append(os.Environ(), "NASREACH_TOKEN="+token)
	start := time.Now()
	agent, _ := run(t, agentCmd)
	testutil.WaitFor(t, 10*time.Second, "the agent online over TCP", func() bool {
		return strings.Contains(agent.String(), "connected to link relay") && strings.Contains(agent.String(), `"transport":"tcp"`)
	})
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("the agent came online over TCP after %v", el)
	}
	t.Logf("agent behind %s online over TCP after %v", blocked.Kind, time.Since(start).Round(time.Millisecond))

	client := open.Host()
	listen := netip.AddrPortFrom(client.Addr, 8443)
	run(t, client.Command(bin, "connect", "--server", relay, "--relay-fingerprint", fp,
		"--known-devices", filepath.Join(t.TempDir(), "known_devices"), "nas1:22", "--listen", listen.String()))
	var got string
	testutil.WaitFor(t, 15*time.Second, "an echo through the relay", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		c, err := client.DialTCP(ctx, listen)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "ping")
		b := make([]byte, 4)
		io.ReadFull(c, b)
		got = string(b)
		return got == "ping"
	})
	if !strings.Contains(serve.String(), "over tcp") && !strings.Contains(serve.String(), `"transport":"tcp"`) {
		t.Errorf("the relay's log does not show the agent over TCP:\n%s", serve.String())
	}
}

// run starts cmd with its output in the returned buffer; exited receives
// its end if it ends before the test does. When the test ends it is stopped
// with SIGTERM, and must exit cleanly within 10 s.
func run(t *testing.T, cmd *exec.Cmd) (out *testutil.Buffer, exited <-chan error) {
	t.Helper()
	out = &testutil.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ended := make(chan error, 1) // for the test
	done := make(chan struct{})  // for the cleanup
	var err error
	go func() {
		err = cmd.Wait()
		ended <- err
		close(done)
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
			if err != nil {
				t.Errorf("%s ended with %v after SIGTERM\n%s", strings.Join(cmd.Args, " "), err, out.String())
			}
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("%s did not stop within 10 s of SIGTERM\n%s", strings.Join(cmd.Args, " "), out.String())
		}
	})
	return out, ended
}

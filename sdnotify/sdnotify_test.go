package sdnotify

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// listen binds a unix datagram socket the way systemd does for NOTIFY_SOCKET
// and returns its address and a function that waits for the next datagram.
func listen(t *testing.T, addr string) (recv func(timeout time.Duration) (string, bool)) {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatalf("bind notify socket %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	return func(timeout time.Duration) (string, bool) {
		buf := make([]byte, MaxMessageSize+1)
		_ = conn.SetReadDeadline(time.Now().Add(timeout))
		n, err := conn.Read(buf)
		if err != nil {
			return "", false
		}
		return string(buf[:n]), true
	}
}

func socketPath(t *testing.T) string {
	return filepath.Join(t.TempDir(), "notify")
}

func TestNotifySendsStatesAsOneDatagram(t *testing.T) {
	path := socketPath(t)
	recv := listen(t, path)
	n := Notifier{Socket: path}
	if err := n.Notify(t.Context(), Ready, Status("serving\nzone example.org")); err != nil {
		t.Fatalf("notify: %v", err)
	}
	got, ok := recv(2 * time.Second)
	if !ok {
		t.Fatal("no datagram arrived on the notify socket")
	}
	if want := "READY=1\nSTATUS=serving zone example.org"; got != want {
		t.Fatalf("datagram = %q, want %q", got, want)
	}
}

func TestNotifyReachesAbstractSocket(t *testing.T) {
	var b [8]byte
	_, _ = rand.Read(b[:])
	name := "@nasreach-sdnotify-test-" + hex.EncodeToString(b[:])
	recv := listen(t, name)
	t.Setenv("NOTIFY_SOCKET", name)
	t.Setenv("WATCHDOG_USEC", "")
	n, err := FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Notify(t.Context(), Stopping); err != nil {
		t.Fatalf("notify %s: %v", name, err)
	}
	if got, ok := recv(2 * time.Second); !ok || got != Stopping {
		t.Fatalf("abstract socket received %q (arrived: %v), want %q", got, ok, Stopping)
	}
}

func TestNotifyOutsideSystemdDoesNothing(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	t.Setenv("WATCHDOG_USEC", "")
	n, err := FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if n.Enabled() {
		t.Fatalf("enabled without NOTIFY_SOCKET: %+v", n)
	}
	if err := n.Notify(t.Context(), Ready); err != nil {
		t.Fatalf("notify without systemd: %v", err)
	}
	done := make(chan struct{})
	go func() { n.Watchdog(t.Context(), nil, nil); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("Watchdog without systemd did not return at once")
	}
}

func TestNotifyErrorNamesTheSocket(t *testing.T) {
	path := socketPath(t) // nobody listens there
	err := Notifier{Socket: path}.Notify(t.Context(), Ready)
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("notify to a missing socket: err = %v, want one naming %s", err, path)
	}
}

func TestNotifyRefusesMessageSystemdWouldCut(t *testing.T) {
	path := socketPath(t)
	recv := listen(t, path)
	err := Notifier{Socket: path}.Notify(t.Context(), Status(strings.Repeat("x", MaxMessageSize)))
	if err == nil {
		t.Fatal("an over-long message was accepted")
	}
	if got, ok := recv(100 * time.Millisecond); ok {
		t.Fatalf("a truncated message was sent anyway: %d bytes", len(got))
	}
}

func TestFromEnv(t *testing.T) {
	self := strconv.Itoa(os.Getpid())
	for _, tc := range []struct {
		name              string
		socket, usec, pid string
		wantSocket        string
		wantInterval      time.Duration
		wantErr           bool
	}{
		{name: "path", socket: "/run/systemd/notify", wantSocket: "/run/systemd/notify"},
		{name: "abstract", socket: "@/org/freedesktop/systemd1/notify", wantSocket: "@/org/freedesktop/systemd1/notify"},
		{name: "relative path", socket: "notify", wantErr: true},
		{name: "watchdog for us", socket: "/n", usec: "30000000", pid: self, wantSocket: "/n", wantInterval: 30 * time.Second},
		{name: "watchdog without pid", socket: "/n", usec: "500000", wantSocket: "/n", wantInterval: 500 * time.Millisecond},
		{name: "watchdog for another process", socket: "/n", usec: "30000000", pid: "1", wantSocket: "/n"},
		{name: "watchdog not a number", socket: "/n", usec: "30s", wantErr: true},
		{name: "watchdog zero", socket: "/n", usec: "0", wantErr: true},
		{name: "watchdog pid not a number", socket: "/n", usec: "1000", pid: "me", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("NOTIFY_SOCKET", tc.socket)
			t.Setenv("WATCHDOG_USEC", tc.usec)
			t.Setenv("WATCHDOG_PID", tc.pid)
			n, err := FromEnv()
			if tc.wantErr {
				if err == nil {
					t.Fatalf("no error for NOTIFY_SOCKET=%q WATCHDOG_USEC=%q WATCHDOG_PID=%q", tc.socket, tc.usec, tc.pid)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if n.Socket != tc.wantSocket || n.WatchdogInterval != tc.wantInterval {
				t.Fatalf("got socket %q interval %v, want %q %v", n.Socket, n.WatchdogInterval, tc.wantSocket, tc.wantInterval)
			}
		})
	}
}

func TestWatchdogPingsOnlyWhileHealthy(t *testing.T) {
	path := socketPath(t)
	recv := listen(t, path)
	var sick atomic.Bool
	reported := make(chan error, 100)
	n := Notifier{Socket: path, WatchdogInterval: 100 * time.Millisecond}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.Watchdog(ctx, func(context.Context) error {
			if sick.Load() {
				return errors.New("dns port does not answer")
			}
			return nil
		}, func(err error) { reported <- err })
	}()
	defer func() { cancel(); <-done }()

	// Healthy: a ping about every 50ms.
	start := time.Now()
	for i := range 4 {
		got, ok := recv(time.Second)
		if !ok || got != WatchdogPing {
			t.Fatalf("ping %d: got %q (arrived: %v), want %q", i, got, ok, WatchdogPing)
		}
	}
	if el := time.Since(start); el > time.Second {
		t.Fatalf("4 pings took %v, want about 150ms at half the 100ms interval", el)
	}

	// Unhealthy: the pings stop and the failure is reported.
	sick.Store(true)
	select {
	case err := <-reported:
		if !errors.Is(err, ErrUnhealthy) || !strings.Contains(err.Error(), "dns port does not answer") {
			t.Fatalf("reported %v, want ErrUnhealthy with the check's reason", err)
		}
	case <-time.After(time.Second):
		t.Fatal("failed health check was not reported")
	}
	for { // drain a ping sent before the switch
		if _, ok := recv(10 * time.Millisecond); !ok {
			break
		}
	}
	if got, ok := recv(300 * time.Millisecond); ok {
		t.Fatalf("watchdog pinged %q while unhealthy", got)
	}

	// Healthy again: pings resume.
	sick.Store(false)
	if got, ok := recv(time.Second); !ok || got != WatchdogPing {
		t.Fatalf("after recovery got %q (arrived: %v), want %q", got, ok, WatchdogPing)
	}
}

func TestWatchdogStopsWithContext(t *testing.T) {
	path := socketPath(t)
	recv := listen(t, path)
	n := Notifier{Socket: path, WatchdogInterval: 40 * time.Millisecond}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { n.Watchdog(ctx, nil, nil); close(done) }()
	if _, ok := recv(time.Second); !ok {
		t.Fatal("no first ping")
	}
	cancel()
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatal("Watchdog still running after its context ended")
	}
	for { // drain what was in flight
		if _, ok := recv(10 * time.Millisecond); !ok {
			break
		}
	}
	if got, ok := recv(150 * time.Millisecond); ok {
		t.Fatalf("ping %q after the context ended", got)
	}
}

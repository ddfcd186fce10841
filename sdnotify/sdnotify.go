// Package sdnotify tells systemd how the daemon is doing: READY=1 once it
// serves, STOPPING=1 when it shuts down, WATCHDOG=1 while it is healthy.
// Outside systemd every call is a no-op.
//
// The protocol (sd_notify(3)), implemented here directly instead of linking
// libsystemd:
//
//   - The service manager puts the address of a unix datagram socket in
//     $NOTIFY_SOCKET: an absolute path, or a name in the abstract namespace
//     written with a leading '@' (the kernel's leading NUL byte).
//   - Each update is one datagram of newline-separated KEY=VALUE assignments,
//     at most MaxMessageSize bytes, e.g. "READY=1\nSTATUS=serving".
//   - With WatchdogSec= set, $WATCHDOG_USEC holds the interval in microseconds
//     and $WATCHDOG_PID the process it is meant for. That process must send
//     WATCHDOG=1 more often than the interval, or systemd kills it with SIGABRT
//     and restarts it as Restart= says. sd_watchdog_enabled(3) advises pinging
//     at half the interval, which Watchdog does.
package sdnotify

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// States a service sends; combine several in one Notify call to have systemd
// see them together.
const (
	// Ready says start-up is finished: with Type=notify, systemd considers the
	// unit started (and starts what is ordered after it) only now.
	Ready = "READY=1"
	// Stopping says the service is shutting down, so systemd reports
	// "deactivating" instead of waiting for the process to exit to notice.
	Stopping = "STOPPING=1"
	// Reloading says the service is re-reading its configuration; Ready
	// follows when it is done.
	Reloading = "RELOADING=1"
	// WatchdogPing resets the watchdog timer of WatchdogSec=.
	WatchdogPing = "WATCHDOG=1"
)

// MaxMessageSize is the largest datagram systemd reads from the notify socket
// (its NOTIFY_BUFFER_MAX); anything longer would be cut, so Notify refuses it.
const MaxMessageSize = 4096

// sendTimeout bounds one send: a datagram to a live systemd is queued at
// once, so waiting longer only means the manager is stuck.
const sendTimeout = 2 * time.Second

// Status returns the STATUS= assignment that `systemctl status` shows as the
// unit's one-line status. Newlines in s would end the assignment, so they
// become spaces.
func Status(s string) string {
	return "STATUS=" + strings.ReplaceAll(s, "\n", " ")
}

// Notifier sends state updates to the service manager. The zero Notifier is
// valid and sends nothing: that is the daemon outside systemd.
type Notifier struct {
	// Socket is the notify socket: an absolute path, or an abstract socket
	// name starting with '@'. Empty disables every update.
	Socket string
	// WatchdogInterval is WatchdogSec= of the unit: systemd wants WatchdogPing
	// more often than that. Zero turns the watchdog off.
	WatchdogInterval time.Duration
}

// FromEnv returns the Notifier systemd set up for this process through
// NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID; it is the zero Notifier when
// they are unset. A watchdog meant for another process (WATCHDOG_PID) is off.
// Malformed values are an error rather than silently ignored, because systemd
// never writes them: someone set them by hand.
func FromEnv() (Notifier, error) {
	var n Notifier
	if s := os.Getenv("NOTIFY_SOCKET"); s != "" {
		if !strings.HasPrefix(s, "/") && !strings.HasPrefix(s, "@") {
			return Notifier{}, fmt.Errorf("NOTIFY_SOCKET=%q: want an absolute path or an abstract socket name starting with '@'", s)
		}
		n.Socket = s
	}
	usec := os.Getenv("WATCHDOG_USEC")
	if usec == "" {
		return n, nil
	}
	us, err := strconv.ParseUint(usec, 10, 63)
	if err != nil || us == 0 {
		return Notifier{}, fmt.Errorf("WATCHDOG_USEC=%q: want a positive number of microseconds", usec)
	}
	if p := os.Getenv("WATCHDOG_PID"); p != "" {
		pid, err := strconv.Atoi(p)
		if err != nil {
			return Notifier{}, fmt.Errorf("WATCHDOG_PID=%q: want a process id", p)
		}
		if pid != os.Getpid() {
			return n, nil // the watchdog belongs to a parent process
		}
	}
	n.WatchdogInterval = time.Duration(us) * time.Microsecond
	return n, nil
}

// Enabled reports whether updates go anywhere, that is whether the process
// runs under a service manager that listens.
func (n Notifier) Enabled() bool { return n.Socket != "" }

// Notify sends the states (e.g. Ready, Status("serving")) as one datagram. It
// does nothing and returns nil when the Notifier is not Enabled. It waits for
// the socket at most until ctx ends and never longer than two seconds.
func (n Notifier) Notify(ctx context.Context, states ...string) error {
	if !n.Enabled() {
		return nil
	}
	msg := strings.Join(states, "\n")
	if len(msg) > MaxMessageSize {
		return fmt.Errorf("notify systemd: message of %d bytes is over the %d-byte limit", len(msg), MaxMessageSize)
	}
	ctx, cancel := context.WithTimeout(ctx, sendTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unixgram", n.Socket)
	if err != nil {
		return fmt.Errorf("notify systemd on %s: %w", n.Socket, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		if err := conn.SetWriteDeadline(dl); err != nil {
			return fmt.Errorf("notify systemd on %s: %w", n.Socket, err)
		}
	}
	if _, err := conn.Write([]byte(msg)); err != nil {
		return fmt.Errorf("notify systemd on %s: %w", n.Socket, err)
	}
	return nil
}

// Watchdog keeps the systemd watchdog fed until ctx ends. Right away and then
// every half WatchdogInterval it calls healthy, with a context that expires
// before the next round, and sends WatchdogPing only when healthy returns nil.
// A failed check or send is passed to report (when not nil) and the loop goes
// on: a daemon that stays unhealthy misses its pings and systemd, not this
// loop, decides to restart it. Without a watchdog or a socket it returns at
// once.
func (n Notifier) Watchdog(ctx context.Context, healthy func(context.Context) error, report func(error)) {
	if !n.Enabled() || n.WatchdogInterval <= 0 {
		return
	}
	every := n.WatchdogInterval / 2
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if err := n.pingIfHealthy(ctx, every, healthy); err != nil && report != nil && ctx.Err() == nil {
			report(err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// ErrUnhealthy marks a health check failure passed to Watchdog's report, as
// opposed to a failure to reach systemd.
var ErrUnhealthy = errors.New("health check failed, watchdog not pinged")

func (n Notifier) pingIfHealthy(ctx context.Context, budget time.Duration, healthy func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	if healthy != nil {
		if err := healthy(ctx); err != nil {
			return fmt.Errorf("%w: %w", ErrUnhealthy, err)
		}
	}
	return n.Notify(ctx, WatchdogPing)
}

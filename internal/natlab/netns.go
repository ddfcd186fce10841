package natlab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"testing"

	"golang.org/x/sys/unix"
)

// netnsDir is where ip-netns(8) keeps the bind mounts that name namespaces.
const netnsDir = "/run/netns"

// Namespace is one network namespace of a Lab: the internet, a NAT box or a
// host. Its programs run through Command, its Go code through Do.
type Namespace struct {
	// Name is the ip-netns(8) name: `ip netns exec NAME …` and
	// `ip -n NAME …` reach it from a shell while the test runs.
	Name string
	// Addr is its own address: InternetA for the internet, the WAN address
	// for a NAT box, the LAN address for a host.
	Addr netip.Addr

	ipPath string
	fd     int // open on /run/netns/Name; Do enters through it
}

// Command returns a command that runs name in the namespace through
// `ip netns exec`, which sets the namespace and then executes name in the
// same process: the Cmd's Process is the program itself, so Kill and Signal
// reach it. The Lab kills whatever still runs in its namespaces when the
// test ends, but a test should stop what it starts.
func (ns *Namespace) Command(name string, arg ...string) *exec.Cmd {
	return exec.Command(ns.ipPath, append([]string{"netns", "exec", ns.Name, name}, arg...)...)
}

// CommandContext is Command killed when ctx ends (exec.CommandContext).
func (ns *Namespace) CommandContext(ctx context.Context, name string, arg ...string) *exec.Cmd {
	return exec.CommandContext(ctx, ns.ipPath, append([]string{"netns", "exec", ns.Name, name}, arg...)...)
}

// Do runs fn in the namespace and returns its error. fn runs on a goroutine
// of its own, locked to an OS thread that has entered the namespace; that
// thread is never unlocked, so the runtime ends it when fn returns and no
// other goroutine ever runs in the wrong namespace. Sockets fn opens stay in
// the namespace for their whole life, wherever they are used afterwards.
// Goroutines fn starts run on other threads, in the test's namespace: open
// every socket in fn itself. fn must not call t.Fatal (it is not the test's
// goroutine); a panic in fn is raised again in the caller.
func (ns *Namespace) Do(fn func() error) error {
	type result struct {
		err      error
		panicked any
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		returned := false
		defer func() {
			if returned {
				return
			}
			if p := recover(); p != nil {
				done <- result{panicked: fmt.Sprintf("%v\n%s", p, debug.Stack())}
				return
			}
			done <- result{err: fmt.Errorf("natlab: the function run in %s called runtime.Goexit (t.Fatal?); return an error instead", ns.Name)}
		}()
		if err := unix.Setns(ns.fd, unix.CLONE_NEWNET); err != nil {
			returned = true
			done <- result{err: fmt.Errorf("natlab: enter namespace %s: %w", ns.Name, err)}
			return
		}
		err := fn()
		returned = true
		done <- result{err: err}
	}()
	r := <-done
	if r.panicked != nil {
		panic(r.panicked)
	}
	return r.err
}

// ListenUDP binds a UDP socket at addr in the namespace (port 0 picks one),
// closed when the test ends.
func (ns *Namespace) ListenUDP(t testing.TB, addr netip.AddrPort) *net.UDPConn {
	t.Helper()
	return listen(t, ns, "udp", addr, func() (*net.UDPConn, error) {
		return net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
	})
}

// ListenTCP binds a TCP listener at addr in the namespace (port 0 picks
// one), closed when the test ends.
func (ns *Namespace) ListenTCP(t testing.TB, addr netip.AddrPort) *net.TCPListener {
	t.Helper()
	return listen(t, ns, "tcp", addr, func() (*net.TCPListener, error) {
		return net.ListenTCP("tcp", net.TCPAddrFromAddrPort(addr))
	})
}

// listen opens a socket with open in ns, fails the test if it cannot, and
// closes it when the test ends.
func listen[S io.Closer](t testing.TB, ns *Namespace, network string, addr netip.AddrPort, open func() (S, error)) S {
	t.Helper()
	var s S
	err := ns.Do(func() (err error) {
		s, err = open()
		return err
	})
	if err != nil {
		t.Fatalf("natlab: listen %s %s in %s: %v", network, addr, ns.Name, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// DialTCP connects from the namespace to addr; the caller closes the
// connection. It returns an error rather than failing the test, since a
// test may expect the dial to fail.
func (ns *Namespace) DialTCP(ctx context.Context, addr netip.AddrPort) (*net.TCPConn, error) {
	var c net.Conn
	err := ns.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, "tcp", addr.String())
		return err
	})
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// setting is one kernel setting: a path below /proc/sys, such as
// "net/ipv4/ip_forward", and its value. An optional one is skipped when the
// kernel lacks it (br_netfilter's exist only while the module is loaded).
type setting struct {
	key, value string
	optional   bool
}

// configure writes settings in the namespace. The net/ settings of
// /proc/sys are those of the namespace of the thread that opens them, which
// Do makes the namespace's.
func (ns *Namespace) configure(settings ...setting) error {
	return ns.Do(func() error {
		for _, s := range settings {
			err := os.WriteFile(filepath.Join("/proc/sys", s.key), []byte(s.value), 0)
			if s.optional && errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return fmt.Errorf("set %s in %s: %w", s.key, ns.Name, err)
			}
		}
		return nil
	})
}

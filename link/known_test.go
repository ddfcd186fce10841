package link_test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nasreach/nasreach/link"
)

// TestChangedKeyNamesThePinAndForgetRemovesIt is ssh's "Offending key in
// FILE:LINE" for Link: the refusal says which line of which file pins the old
// key and how to remove it, and ForgetDevice removes exactly that pin.
func TestChangedKeyNamesThePinAndForgetRemovesIt(t *testing.T) {
	e := newEnv(t)
	tok := e.addDevice("nas1")
	backend := echoServer(t)
	first := e.agent("nas1", tok, map[uint16]string{22: backend})
	known := filepath.Join(t.TempDir(), "known_devices")
	other := "relay.example.net:7443 nas1 sha256:" + strings.Repeat("ab", 32) + "\n"
	if err := os.WriteFile(known, []byte("# pinned by hand\n"+other), 0o600); err != nil {
		t.Fatal(err)
	}
	d := e.dialer(func(c *link.DialerConfig) { c.KnownDevices = known })
	echo(t, d, "nas1", 22) // first contact: line 3

	first.Close()                                        // or it would take its place back on reconnect
	e.agent("nas1", tok, map[uint16]string{22: backend}) // a reset NAS: a new key
	_, err := d.Dial(ctx10(t), "nas1", 22)
	var kc *link.KeyChangedError
	if !errors.As(err, &kc) || !errors.Is(err, link.ErrKeyChanged) {
		t.Fatalf("dial after the key changed: %v, want a *KeyChangedError matching ErrKeyChanged", err)
	}
	if kc.File != known || kc.Line != 3 || kc.Device != "nas1" || kc.Server != e.server || kc.Got == kc.Pinned {
		t.Errorf("refusal %+v, want nas1 on %s pinned at %s:3", kc, e.server, known)
	}
	for _, want := range []string{
		fmt.Sprintf("%s:3", known),
		fmt.Sprintf("nasreach connect --server %s --known-devices %s --forget nas1", e.server, known),
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %q does not say %q", err, want)
		}
	}

	n, err := link.ForgetDevice(known, e.server, "NAS1")
	if err != nil || n != 1 {
		t.Fatalf("forget nas1: %d lines, %v; want 1", n, err)
	}
	b, _ := os.ReadFile(known)
	if string(b) != "# pinned by hand\n"+other {
		t.Errorf("after forgetting nas1 on %s the file holds %q; want the comment and the other relay's pin kept", e.server, b)
	}
	if info, err := os.Stat(known); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("known devices after forget: %v, want mode 0600", err)
	}
	echo(t, d, "nas1", 22) // trusts the new key on first use again
	if n, err := link.ForgetDevice(filepath.Join(t.TempDir(), "none"), e.server, "nas1"); n != 0 || err != nil {
		t.Errorf("forget in a missing file: %d, %v; want nothing to do", n, err)
	}
}

// TestServeEndsWhenTheKeyChanges: a forwarder must not keep accepting
// connections it will refuse, and the user decides about the new key.
func TestServeEndsWhenTheKeyChanges(t *testing.T) {
	e := newEnv(t)
	tok := e.addDevice("nas1")
	backend := echoServer(t)
	first := e.agent("nas1", tok, map[uint16]string{22: backend})
	d := e.dialer()
	echo(t, d, "nas1", 22) // pins the key
	first.Close()
	e.agent("nas1", tok, map[uint16]string{22: backend})

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- d.Serve(ctx10(t), ln, "nas1", 22) }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case err := <-served:
		if !errors.Is(err, link.ErrKeyChanged) {
			t.Fatalf("serve ended with %v, want ErrKeyChanged", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve goes on after the device's key changed")
	}
	if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		c.Close()
		t.Error("the listener still accepts after the key changed")
	}
}

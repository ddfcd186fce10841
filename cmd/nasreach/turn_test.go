package main

import (
	"context"
	"crypto/tls"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nasreach/nasreach/daemon"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/store"
	"github.com/nasreach/nasreach/stun"
	"github.com/nasreach/nasreach/turnserver"
	"github.com/pion/turn/v5"
	"github.com/rs/zerolog"
)

// runTURNFlags starts a daemon with serve's flags and args (its other
// listeners on 127.0.0.1:0, no Link relay) and runs fn against it before
// stopping it.
func runTURNFlags(t *testing.T, args []string, fn func(*daemon.Daemon)) error {
	t.Helper()
	base := []string{"nasreach", "serve", "--data", t.TempDir(), "--dns", "127.0.0.1:0", "--http", "127.0.0.1:0",
		"--metrics", "127.0.0.1:0", "--link", ""}
	cfg, err := parseServeConfig(context.Background(), append(base, args...))
	if err != nil {
		return err
	}
	cfg.Logger = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	d, err := daemon.New(cfg)
	if err != nil {
		return err
	}
	defer func() {
		if err := d.Shutdown(context.Background()); err != nil {
			t.Errorf("stop: %v", err)
		}
	}()
	fn(d)
	return nil
}

func turnClient(t *testing.T, conn net.PacketConn, srv netip.AddrPort, user, pass, realm string) *turn.Client {
	t.Helper()
	c, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr: srv.String(), TURNServerAddr: srv.String(), Conn: conn,
		Username: user, Password: pass, Realm: realm, RTO: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Listen(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); conn.Close() })
	return c
}

func udpEcho(t *testing.T) net.Addr {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			c.WriteTo(buf[:n], from)
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return c.LocalAddr()
}

func echoThrough(t *testing.T, relayConn net.PacketConn, peer net.Addr) {
	t.Helper()
	buf := make([]byte, 100)
	for range 5 {
		relayConn.WriteTo([]byte("ping"), peer)
		relayConn.SetReadDeadline(time.Now().Add(time.Second))
		if n, _, err := relayConn.ReadFrom(buf); err == nil && string(buf[:n]) == "ping" {
			return
		}
	}
	t.Fatal("no echo through the relay")
}

// checkSTUN asks srv for this socket's mapped address over UDP and fails
// unless it is the socket's own (everything is on loopback).
func checkSTUN(t *testing.T, srv netip.AddrPort) {
	t.Helper()
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sc, err := stun.NewClient(stun.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if mapped, err := sc.Discover(ctx, conn, srv); err != nil || mapped != conn.LocalAddr().(*net.UDPAddr).AddrPort() {
		t.Fatalf("STUN Binding on %v: %v, %v", srv, mapped, err)
	}
}

func TestServeFlagsStartSTUNAndTURNWithDeviceCredentials(t *testing.T) {
	peer := udpEcho(t)
	err := runTURNFlags(t, []string{"--stun", "127.0.0.1:0", "--turn-realm", "example.org",
		"--turn-user", "alice:pw", "--turn-allow-peer", "127.0.0.1/32", "--stun-software", "nasreach-test"}, func(d *daemon.Daemon) {
		_, token, err := d.Store().Create(context.Background(), "nas1", store.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		stunAddr := d.Addrs().STUN
		checkSTUN(t, stunAddr) // STUN on the shared port
		// TURN with a device's credentials and with a static user.
		for _, cred := range [][2]string{{"nas1", turnserver.DevicePassword(token)}, {"alice", "pw"}} {
			c, err := net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			client := turnClient(t, c, stunAddr, cred[0], cred[1], "example.org")
			relayConn, err := client.Allocate()
			if err != nil {
				t.Fatalf("allocate as %s: %v", cred[0], err)
			}
			echoThrough(t, relayConn, peer)
			relayConn.Close()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestServeFlagsTURNOverTLS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	testutil.WriteCert(t, certFile, keyFile, "first")
	peer := udpEcho(t)
	err := runTURNFlags(t, []string{"--stun", "127.0.0.1:0", "--turns", "127.0.0.1:0",
		"--tls-cert", certFile, "--tls-key", keyFile, "--turn-user", "alice:pw", "--turn-allow-peer", "127.0.0.1/32"}, func(d *daemon.Daemon) {
		tlsAddr := d.Addrs().TURNS
		if !tlsAddr.IsValid() {
			t.Fatal("no TLS listener with --tls-cert and --tls-key")
		}
		tc, err := tls.Dial("tcp", tlsAddr.String(), &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // test certificate
		if err != nil {
			t.Fatal(err)
		}
		if cn := tc.ConnectionState().PeerCertificates[0].Subject.CommonName; cn != "first" {
			t.Errorf("certificate %q, want first", cn)
		}
		client := turnClient(t, turn.NewSTUNConn(tc), tlsAddr, "alice", "pw", turnserver.DefaultRealm)
		relayConn, err := client.Allocate()
		if err != nil {
			t.Fatalf("allocate over TLS: %v", err)
		}
		echoThrough(t, relayConn, peer)
		relayConn.Close()
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestServeFlagsSTUNOnly(t *testing.T) {
	err := runTURNFlags(t, []string{"--stun", "127.0.0.1:0", "--turn=false", "--turn-user", "alice:pw"}, func(d *daemon.Daemon) {
		stunAddr := d.Addrs().STUN
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := turnClient(t, c, stunAddr, "alice", "pw", turnserver.DefaultRealm).Allocate(); err == nil {
			t.Fatal("TURN allocates with --turn=false")
		}
		conn, err := net.Dial("tcp", stunAddr.String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		sc, _ := stun.NewClient(stun.ClientConfig{})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := sc.DiscoverStream(ctx, conn); err != nil {
			t.Fatalf("STUN over TCP: %v", err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestServeFlagsRefuseBadValues(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--turn-allow-peer", "10.0.0.1"}, "--turn-allow-peer"},
		{[]string{"--turn-relay-ip", "nas.example"}, "--turn-relay-ip"},
		{[]string{"--tls-cert", "/nonexistent.pem"}, "tls-cert and tls-key go together"},
		{[]string{"--turn-user-quota", "0"}, "--turn-user-quota"},
		{[]string{"--turn-user", "nopassword"}, "name:password"},
		{[]string{"--stun", "0.0.0.0:0"}, "(turn-relay-ip)"},
	}
	for _, tc := range tests {
		args := append([]string{"--stun", "127.0.0.1:0", "--turn-user", "a:b"}, tc.args...)
		err := runTURNFlags(t, args, func(*daemon.Daemon) { t.Errorf("%v: started", tc.args) })
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want one naming %s", tc.args, err, tc.want)
		}
	}
}

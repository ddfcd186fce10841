package main

import (
	"context"
	"crypto/tls"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nasreach/nasreach/daemon"
	"github.com/nasreach/nasreach/daemon/daemontest"
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

func TestServeFlagsStartSTUNAndTURNWithDeviceCredentials(t *testing.T) {
	peer := daemontest.UDPEcho(t)
	err := runTURNFlags(t, []string{"--stun", "127.0.0.1:0", "--turn-realm", "example.org",
		"--turn-user", "alice:pw", "--turn-allow-peer", "127.0.0.1/32", "--stun-software", "nasreach-test"}, func(d *daemon.Daemon) {
		_, token, err := d.Store().Create(context.Background(), "nas1", store.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		stunAddr := d.Addrs().STUN
		daemontest.CheckSTUN(t, stunAddr) // STUN on the shared port
		// TURN with a device's credentials and with a static user.
		for _, cred := range [][2]string{{"nas1", turnserver.DevicePassword(token)}, {"alice", "pw"}} {
			c, err := net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			client := daemontest.TURNClient(t, c, stunAddr, cred[0], cred[1], "example.org")
			relayConn, err := client.Allocate()
			if err != nil {
				t.Fatalf("allocate as %s: %v", cred[0], err)
			}
			daemontest.EchoThrough(t, relayConn, peer)
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
	peer := daemontest.UDPEcho(t)
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
		client := daemontest.TURNClient(t, turn.NewSTUNConn(tc), tlsAddr, "alice", "pw", turnserver.DefaultRealm)
		relayConn, err := client.Allocate()
		if err != nil {
			t.Fatalf("allocate over TLS: %v", err)
		}
		daemontest.EchoThrough(t, relayConn, peer)
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
		if _, err := daemontest.TURNClient(t, c, stunAddr, "alice", "pw", turnserver.DefaultRealm).Allocate(); err == nil {
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

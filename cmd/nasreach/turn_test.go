package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nasreach/nasreach/connlog"
	"github.com/nasreach/nasreach/store"
	"github.com/nasreach/nasreach/stun"
	"github.com/nasreach/nasreach/turnserver"
	"github.com/pion/turn/v5"
	"github.com/rs/zerolog"
	"github.com/urfave/cli/v3"
)

// runTURNFlags parses args with the serve command's TURN flags, starts the
// service with a real store and runs fn against it before stopping it.
func runTURNFlags(t *testing.T, st *store.Store, args []string, fn func(*turnService)) error {
	t.Helper()
	events := make(chan connlog.Event, 16)
	cmd := &cli.Command{
		Name:  "serve",
		Flags: turnFlags(),
		Action: func(ctx context.Context, cmd *cli.Command) error {
			cfg, err := turnSettingsFromFlags(cmd)
			if err != nil {
				return err
			}
			svc, err := startTURN(cfg, st, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
				func(ev connlog.Event) { events <- ev })
			if err != nil {
				return err
			}
			defer func() {
				if err := svc.Stop(context.Background()); err != nil {
					t.Errorf("stop: %v", err)
				}
			}()
			fn(svc)
			return nil
		},
	}
	return cmd.Run(context.Background(), append([]string{"serve"}, args...))
}

func openStore(t *testing.T) *store.Store {
	t.Helper()
	st, err := store.Open(store.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
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
	st := openStore(t)
	_, token, err := st.Create(context.Background(), "nas1", store.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	peer := udpEcho(t)
	err = runTURNFlags(t, st, []string{"--stun", "127.0.0.1:0", "--turn-realm", "example.org",
		"--turn-user", "alice:pw", "--turn-allow-peer", "127.0.0.1/32", "--stun-software", "nasreach-test"}, func(svc *turnService) {
		checkSTUN(t, svc.Addr) // STUN on the shared port
		// TURN with a device's credentials and with a static user.
		for _, cred := range [][2]string{{"nas1", turnserver.DevicePassword(token)}, {"alice", "pw"}} {
			c, err := net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			client := turnClient(t, c, svc.Addr, cred[0], cred[1], "example.org")
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
	writeCert(t, certFile, keyFile, "first")
	peer := udpEcho(t)
	err := runTURNFlags(t, openStore(t), []string{"--stun", "127.0.0.1:0", "--turns", "127.0.0.1:0",
		"--tls-cert", certFile, "--tls-key", keyFile, "--turn-user", "alice:pw", "--turn-allow-peer", "127.0.0.1/32"}, func(svc *turnService) {
		if !svc.TLSAddr.IsValid() {
			t.Fatal("no TLS listener with --tls-cert and --tls-key")
		}
		tc, err := tls.Dial("tcp", svc.TLSAddr.String(), &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // test certificate
		if err != nil {
			t.Fatal(err)
		}
		if cn := tc.ConnectionState().PeerCertificates[0].Subject.CommonName; cn != "first" {
			t.Errorf("certificate %q, want first", cn)
		}
		client := turnClient(t, turn.NewSTUNConn(tc), svc.TLSAddr, "alice", "pw", turnserver.DefaultRealm)
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

func TestKeyPairReloadsARenewedCertificate(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeCert(t, certFile, keyFile, "first")
	k, err := newKeyPairReloader(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	k.every = 0
	cn := func() string {
		c, err := k.get(nil)
		if err != nil {
			t.Fatal(err)
		}
		x, _ := x509.ParseCertificate(c.Certificate[0])
		return x.Subject.CommonName
	}
	if got := cn(); got != "first" {
		t.Fatalf("serving %q", got)
	}
	// A half-written renewal (certificate without its key) keeps the old pair.
	os.WriteFile(keyFile, []byte("not a key"), 0o600)
	writeCertOnly(t, certFile, "broken")
	if got := cn(); got != "first" {
		t.Fatalf("serving %q after a broken renewal, want the old pair", got)
	}
	writeCert(t, certFile, keyFile, "second")
	later := time.Now().Add(time.Minute)
	os.Chtimes(certFile, later, later)
	if got := cn(); got != "second" {
		t.Fatalf("serving %q after renewal, want second", got)
	}
}

func TestServeFlagsSTUNOnly(t *testing.T) {
	err := runTURNFlags(t, openStore(t), []string{"--stun", "127.0.0.1:0", "--turn=false"}, func(svc *turnService) {
		if svc.turn != nil {
			t.Fatal("TURN started with --turn=false")
		}
		conn, err := net.Dial("tcp", svc.Addr.String())
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
		{[]string{"--tls-cert", "/nonexistent.pem"}, "--tls-cert and --tls-key go together"},
		{[]string{"--turn-user-quota", "0"}, "--turn-user-quota"},
		{[]string{"--turn-user", "nopassword"}, "name:password"},
		{[]string{"--stun", "0.0.0.0:0"}, "--turn-relay-ip"},
	}
	for _, tc := range tests {
		args := append([]string{"--stun", "127.0.0.1:0", "--turn-user", "a:b"}, tc.args...)
		err := runTURNFlags(t, openStore(t), args, func(*turnService) { t.Errorf("%v: started", tc.args) })
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want one naming %s", tc.args, err, tc.want)
		}
	}
}

func writeCert(t *testing.T, certFile, keyFile, cn string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der := certDER(t, key, cn)
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func writeCertOnly(t *testing.T, certFile, cn string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER(t, key, cn)}), 0o600); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(30 * time.Second)
	os.Chtimes(certFile, later, later)
}

func certDER(t *testing.T, key *ecdsa.PrivateKey, cn string) []byte {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

package api

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"testing"

	"github.com/nasreach/nasreach/api/client"
)

// TestABlockedSourceIsRefusedOnEveryAdminCall is the lock-out the first hour
// ran into: after failed logins from 127.0.0.1, device list, rm and backup
// were refused while device add still went through. A blocked source is now
// refused on every admin call alike, right token or not.
func TestABlockedSourceIsRefusedOnEveryAdminCall(t *testing.T) {
	s := startServer(t, withThrottle(tight))
	s.device("nas1")
	const src = "198.51.100.66"
	for range tight.FailedLogins {
		s.do(req{path: "/v1/devices", bearer: "not-the-admin-token-at-all", from: src})
	}
	for _, r := range []req{
		{method: "GET", path: "/v1/devices"},
		{method: "POST", path: "/v1/devices", body: `{"name":"nas2"}`},
		{method: "DELETE", path: "/v1/devices/nas1"},
		{method: "GET", path: "/v1/admin/backup"},
	} {
		r.bearer, r.from = testAdmin, src
		got := s.do(r)
		wantError(t, r.method+" "+r.path+" from a blocked source", got, http.StatusTooManyRequests, "too many failed logins")
		if got.header.Get("Retry-After") == "" {
			t.Errorf("%s %s: 429 without Retry-After", r.method, r.path)
		}
	}
	if ds, _ := s.st.List(); len(ds) != 1 {
		t.Errorf("a blocked source changed the device table: %d devices, want 1", len(ds))
	}
}

// TestTheLocalSocketLetsTheOperatorInWithoutAToken checks the way in that no
// network attacker shares: on the local listener every call is the
// operator's, without a token and never blocked, while the same calls over
// TCP from a blocked address are refused.
func TestTheLocalSocketLetsTheOperatorInWithoutAToken(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "nasreach.sock")
	s := startServer(t, func(c *Config) {
		c.Throttle = tight
		c.LocalListener = listenUnix(t, sock)
	})
	ctx := context.Background()
	// 127.0.0.1 locks itself out over TCP.
	wrong, err := client.New(client.Config{Server: s.url, Token: "not-the-admin-token-at-all"})
	if err != nil {
		t.Fatal(err)
	}
	for range tight.FailedLogins {
		wrong.Devices(ctx)
	}
	right, err := client.New(client.Config{Server: s.url, Token: testAdmin})
	if err != nil {
		t.Fatal(err)
	}
	var ce *client.Error
	if _, err := right.Devices(ctx); !errors.As(err, &ce) || ce.Status != http.StatusTooManyRequests {
		t.Fatalf("admin token over TCP from a blocked address: %v, want 429", err)
	}

	local, err := client.New(client.Config{Socket: sock})
	if err != nil {
		t.Fatal(err)
	}
	created, err := local.Create(ctx, client.CreateRequest{Name: "nas1"})
	if err != nil {
		t.Fatalf("device add over the local socket: %v", err)
	}
	if ds, err := local.Devices(ctx); err != nil || len(ds) != 1 || ds[0].Name != "nas1" {
		t.Fatalf("device list over the local socket: %v %v", ds, err)
	}
	snap, err := local.Backup(ctx)
	if err != nil {
		t.Fatalf("backup over the local socket: %v", err)
	}
	n, _ := io.Copy(io.Discard, snap)
	snap.Close()
	if n == 0 {
		t.Error("backup over the local socket is empty")
	}
	if err := local.Delete(ctx, created.Name); err != nil {
		t.Fatalf("device rm over the local socket: %v", err)
	}
	// The socket makes the caller the operator, not a token: a wrong one
	// changes nothing and counts as no failed login.
	bad, _ := client.New(client.Config{Socket: sock, Token: "not-the-admin-token-at-all"})
	if _, err := bad.Devices(ctx); err != nil {
		t.Errorf("local socket with a wrong token: %v", err)
	}
}

// listenUnix listens on the Unix socket path, for the local operator.
func listenUnix(t *testing.T, path string) net.Listener {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

package api

// The tests of package api/client: every client call against this package's
// real server (startServer: a real store, HTTP on 127.0.0.1:0), error paths
// included. They live here, not in api/client, to share that server.

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nasreach/nasreach/api/client"
	"github.com/nasreach/nasreach/store"
)

func newClient(t *testing.T, server, token string) *client.Client {
	t.Helper()
	c, err := client.New(client.Config{Server: server, Token: token})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// wantRefusal checks that err is the daemon's refusal with status and a reason
// that contains says.
func wantRefusal(t *testing.T, what string, err error, status int, says string) {
	t.Helper()
	var e *client.Error
	if !errors.As(err, &e) {
		t.Errorf("%s: err %v, want a *client.Error with HTTP %d", what, err, status)
		return
	}
	if e.Status != status || !strings.Contains(e.Message, says) {
		t.Errorf("%s: HTTP %d %q, want HTTP %d saying %q", what, e.Status, e.Message, status, says)
	}
	if want := e.Message + " (HTTP "; !strings.HasPrefix(err.Error(), want) {
		t.Errorf("%s: err reads %q, want the server's words then the status", what, err)
	}
}

func TestClientManagesADeviceThroughItsWholeLife(t *testing.T) {
	ctx := context.Background()
	server := startServer(t, nil).url
	adm := newClient(t, server+"/", testAdmin) // a trailing slash is fine

	created, err := adm.Create(ctx, client.CreateRequest{Name: "NAS1"})
	if err != nil {
		t.Fatal(err)
	}
	if created.Name != "nas1" || created.FQDN != "nas1.example.com" || created.Token == "" {
		t.Fatalf("Create = %+v, want nas1, its FQDN and a token", created)
	}
	if _, err := adm.Create(ctx, client.CreateRequest{Name: "nas2", State: client.StateUninitialized}); err != nil {
		t.Fatal(err)
	}
	devices, err := adm.Devices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(devices) != 2 || devices[0].Name != "nas1" || devices[1].State != client.StateUninitialized || devices[1].FQDN != "nas2.example.com" {
		t.Fatalf("Devices = %+v, want nas1 and an uninitialized nas2", devices)
	}

	dev := newClient(t, server, created.Token)
	d, err := dev.Device(ctx, "nas1")
	if err != nil {
		t.Fatal(err)
	}
	if d.Name != "nas1" || d.FQDN != "nas1.example.com" || !d.DDNS || !d.Link || d.Access != client.AccessPublic ||
		d.State != client.StateActive || d.TokenSHA256 == "" || d.Created.IsZero() || d.IPv4.IsValid() {
		t.Fatalf("Device = %+v, want a fresh active public nas1", d)
	}

	v4, v6 := "203.0.113.7", "2001:db8::7"
	if d, err = dev.SetAddress(ctx, "nas1", client.AddressUpdate{IPv4: &v4, IPv6: &v6}); err != nil {
		t.Fatal(err)
	}
	if d.IPv4 != netip.MustParseAddr(v4) || d.IPv6 != netip.MustParseAddr(v6) {
		t.Errorf("SetAddress answered %v %v, want %s %s", d.IPv4, d.IPv6, v4, v6)
	}
	clear := ""
	if d, err = dev.SetAddress(ctx, "nas1", client.AddressUpdate{IPv6: &clear}); err != nil {
		t.Fatal(err)
	}
	if d.IPv4 != netip.MustParseAddr(v4) || d.IPv6.IsValid() {
		t.Errorf("clearing IPv6 answered %v %v, want %s and none", d.IPv4, d.IPv6, v4)
	}

	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	spki, _ := x509.MarshalPKIXPublicKey(pub)
	if d, err = dev.SetPublicKey(ctx, "nas1", spki); err != nil {
		t.Fatal(err)
	}
	if d.PublicKey != base64.StdEncoding.EncodeToString(spki) {
		t.Errorf("SetPublicKey answered public_key %q", d.PublicKey)
	}

	off, token := false, client.AccessToken
	if d, err = dev.Update(ctx, "nas1", client.Patch{DDNS: &off, Access: &token}); err != nil {
		t.Fatal(err)
	}
	if d.DDNS || !d.Link || d.Access != client.AccessToken {
		t.Errorf("Update answered ddns %v link %v access %s, want only ddns off and access token", d.DDNS, d.Link, d.Access)
	}

	code, err := dev.AddAccessCode(ctx, "nas1")
	if err != nil {
		t.Fatal(err)
	}
	if code.ID == "" || code.Code == "" {
		t.Fatalf("AddAccessCode = %+v", code)
	}
	if d, err = dev.Device(ctx, "nas1"); err != nil {
		t.Fatal(err)
	}
	if len(d.AccessCodes) != 1 || d.AccessCodes[0].ID != code.ID || d.AccessCodes[0].SHA256 == "" || strings.Contains(d.AccessCodes[0].SHA256, code.Code) {
		t.Errorf("export lists access codes %+v, want the hash of %s only", d.AccessCodes, code.ID)
	}
	if err := dev.RevokeAccessCode(ctx, "nas1", code.ID); err != nil {
		t.Fatal(err)
	}
	wantRefusal(t, "revoking twice", dev.RevokeAccessCode(ctx, "nas1", code.ID), http.StatusNotFound, "no such access code")

	key, err := dev.IssueTSIGKey(ctx, "nas1")
	if err != nil {
		t.Fatal(err)
	}
	if key.Name != "nas1.example.com" || key.Algorithm != "hmac-sha256" || key.Secret == "" {
		t.Errorf("IssueTSIGKey = %+v", key)
	}
	if d, err = dev.Device(ctx, "nas1"); err != nil || d.TSIGKey == nil || d.TSIGKey.Secret != nil {
		t.Errorf("export after IssueTSIGKey holds key %+v (%v), want its algorithm and time without the secret", d.TSIGKey, err)
	}
	if err := dev.RevokeTSIGKey(ctx, "nas1"); err != nil {
		t.Fatal(err)
	}

	if err := adm.Delete(ctx, "nas2"); err != nil {
		t.Fatal(err)
	}
	_, err = adm.Device(ctx, "nas2")
	wantRefusal(t, "Device after Delete", err, http.StatusNotFound, "no such device")
	if err := dev.Delete(ctx, "nas1"); err != nil {
		t.Fatal(err)
	}
	if devices, err = adm.Devices(ctx); err != nil || len(devices) != 0 {
		t.Errorf("Devices after deleting both = %v, %v; want none", devices, err)
	}
}

func TestClientCallerAddressNeedsNoToken(t *testing.T) {
	ip, err := newClient(t, startServer(t, nil).url, "").CallerAddress(context.Background())
	if err != nil || ip != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("CallerAddress = %v, %v; want 127.0.0.1", ip, err)
	}
}

func TestClientBackupIsAStoreThatOpens(t *testing.T) {
	ctx := context.Background()
	server := startServer(t, nil).url
	adm := newClient(t, server, testAdmin)
	if _, err := adm.Create(ctx, client.CreateRequest{Name: "nas1"}); err != nil {
		t.Fatal(err)
	}
	// A store of one node does its own housekeeping: the backup is taken
	// with or without the condition.
	if rc, err := adm.BackupIfHousekeeping(ctx); err != nil {
		t.Fatalf("backup if housekeeping, one node: %v", err)
	} else {
		rc.Close()
	}
	rc, err := adm.Backup(ctx)
	if err != nil {
		t.Fatal(err)
	}
	snapshot, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatalf("read backup: %v", err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, store.FileName), snapshot, 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(store.Config{Dir: dir, SweepEvery: -1})
	if err != nil {
		t.Fatalf("open the backup as a store: %v", err)
	}
	defer st.Close()
	if _, err := st.Get("nas1"); err != nil {
		t.Errorf("backup lacks nas1: %v", err)
	}
}

// TestClientErrorsCarryTheServersWords checks the refusals callers branch on:
// each is a *client.Error with the status and the daemon's reason.
func TestClientErrorsCarryTheServersWords(t *testing.T) {
	ctx := context.Background()
	server := startServer(t, nil).url
	adm := newClient(t, server, testAdmin)
	created, err := adm.Create(ctx, client.CreateRequest{Name: "nas1"})
	if err != nil {
		t.Fatal(err)
	}
	dev := newClient(t, server, created.Token)
	wrong := newClient(t, server, "not-the-token-of-anything")
	bad := "nas.example.org"
	cases := []struct {
		what   string
		call   func() error
		status int
		says   string
	}{
		{"admin call with a device token", func() error { _, err := dev.Devices(ctx); return err }, 401, "admin token"},
		{"wrong token", func() error { _, err := wrong.Device(ctx, "nas1"); return err }, 401, "wrong device name or token"},
		{"backup with a device token", func() error { _, err := dev.Backup(ctx); return err }, 401, "admin token"},
		{"unknown device", func() error { _, err := adm.Device(ctx, "ghost"); return err }, 404, "no such device"},
		{"delete unknown device", func() error { return adm.Delete(ctx, "ghost") }, 404, "no such device"},
		{"name taken", func() error { _, err := adm.Create(ctx, client.CreateRequest{Name: "nas1"}); return err }, 409, "taken"},
		{"no name", func() error { _, err := adm.Create(ctx, client.CreateRequest{}); return err }, 400, "name is required"},
		{"bad address", func() error {
			_, err := dev.SetAddress(ctx, "nas1", client.AddressUpdate{IPv4: &bad})
			return err
		}, 400, "not an address"},
		{"bad key", func() error { _, err := dev.SetPublicKey(ctx, "nas1", []byte("not a key")); return err }, 400, "SubjectPublicKeyInfo"},
		{"bad access", func() error {
			everyone := client.Access("everyone")
			_, err := dev.Update(ctx, "nas1", client.Patch{Access: &everyone})
			return err
		}, 400, "everyone"},
	}
	for _, c := range cases {
		wantRefusal(t, c.what, c.call(), c.status, c.says)
	}
}

func TestClientSaysWhichDaemonItCannotReach(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := "http://" + ln.Addr().String()
	ln.Close() // nothing listens there now
	_, err = newClient(t, server, testAdmin).Devices(context.Background())
	var e *client.Error
	var ue *url.Error
	if err == nil || errors.As(err, &e) || !errors.As(err, &ue) || !strings.Contains(err.Error(), "cannot reach the daemon at "+server) {
		t.Errorf("call to a closed port: err %v, want a wrapped transport error naming %s", err, server)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := newClient(t, startServer(t, nil).url, testAdmin).Devices(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("call with a cancelled context: err %v, want context.Canceled", err)
	}
}

// A proxy in front of the daemon answers in its own words; the error then
// says which server answered.
func TestClientReportsAnAnswerThatIsNotTheAPIs(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := &url.URL{Scheme: "http", Host: ln.Addr().String()}
	ln.Close() // the proxy's backend is down
	proxy := &http.Server{Handler: &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(down) },
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, _ error) {
			http.Error(w, "502 bad gateway", http.StatusBadGateway)
		},
	}}
	pln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go proxy.Serve(pln)
	t.Cleanup(func() { proxy.Close() })
	server := "http://" + pln.Addr().String()

	_, err = newClient(t, server, testAdmin).Devices(context.Background())
	var e *client.Error
	if !errors.As(err, &e) || e.Status != http.StatusBadGateway || e.Message != "" || err.Error() != "HTTP 502 from "+server {
		t.Errorf("answer from a proxy: err %v, want HTTP 502 from %s", err, server)
	}
}

func TestClientNewRefusesAServerThatIsNotAURL(t *testing.T) {
	for _, s := range []string{"", "127.0.0.1:8080", "localhost:8080/api", "ftp://example.net", "http://", "http://example.net/?x=1"} {
		if _, err := client.New(client.Config{Server: s}); err == nil || !strings.Contains(err.Error(), "Config.Server") {
			t.Errorf("New(Server %q): err %v, want one naming Config.Server", s, err)
		}
	}
	for _, s := range []string{"http://127.0.0.1:8080", "https://ddns.example.net/nasreach/"} {
		if _, err := client.New(client.Config{Server: s}); err != nil {
			t.Errorf("New(Server %q): %v", s, err)
		}
	}
}

package linkserver

import (
	"context"
	"crypto/tls"
	"path/filepath"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/certfile"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/link"
	"github.com/nasreach/nasreach/store"
	"github.com/quic-go/quic-go"
)

// The operator's certificate is renewed in place (certbot, acme.sh): the
// relay serves the new one to the next handshake without a restart.
func TestRelayServesARenewedCertificate(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	testutil.WriteCert(t, certFile, keyFile, "first")
	w, err := certfile.New(certFile, keyFile, time.Nanosecond)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(store.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	l, err := New(Config{Addr: "127.0.0.1:0", GetCertificate: w.GetCertificate, Store: st})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Shutdown(context.Background()) })
	served := func() string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := quic.DialAddr(ctx, l.Addr().String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{link.ALPN}}, nil) //nolint:gosec // the test reads the certificate served
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseWithError(0, "")
		return c.ConnectionState().TLS.PeerCertificates[0].Subject.CommonName
	}
	if got := served(); got != "first" {
		t.Fatalf("serving %q, want first", got)
	}
	testutil.WriteCert(t, certFile, keyFile, "second")
	testutil.Touch(t, certFile, time.Minute)
	if got := served(); got != "second" {
		t.Fatalf("serving %q after the renewal, want second", got)
	}
}

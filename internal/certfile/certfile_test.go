package certfile

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/testutil"
)

func TestWatcherServesARenewedCertificate(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	testutil.WriteCert(t, certFile, keyFile, "first")
	w, err := New(certFile, keyFile, time.Nanosecond)
	if err != nil {
		t.Fatal(err)
	}
	cn := func() string {
		c, err := w.GetCertificate(nil)
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
	if err := os.WriteFile(keyFile, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	testutil.WriteCertOnly(t, certFile, "broken")
	if got := cn(); got != "first" {
		t.Fatalf("serving %q after a broken renewal, want the old pair", got)
	}
	testutil.WriteCert(t, certFile, keyFile, "second")
	testutil.Touch(t, certFile, time.Minute)
	if got := cn(); got != "second" {
		t.Fatalf("serving %q after renewal, want second", got)
	}
}

func TestWatcherChecksTheFileAtMostEveryInterval(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	testutil.WriteCert(t, certFile, keyFile, "first")
	w, err := New(certFile, keyFile, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	first := w.Current()
	testutil.WriteCert(t, certFile, keyFile, "second")
	testutil.Touch(t, certFile, time.Minute)
	if w.Current() != first {
		t.Error("the file was re-read before the check interval passed")
	}
	w.now = func() time.Time { return time.Now().Add(2 * time.Hour) }
	if w.Current() == first {
		t.Error("the renewed file was not read after the check interval")
	}
}

func TestMissingOrBadFilesAreErrorsNamingThem(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if _, err := New(certFile, keyFile, 0); err == nil {
		t.Error("New with no files succeeded")
	}
	testutil.WriteCert(t, certFile, keyFile, "x")
	if err := os.WriteFile(keyFile, []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(certFile, keyFile, 0); err == nil || !strings.Contains(err.Error(), certFile) {
		t.Errorf("New with a bad key: %v, want an error naming %s", err, certFile)
	}
}

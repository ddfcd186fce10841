package linkserver

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/nasreach/nasreach/link"
)

// Files of the relay's self-signed Link certificate in the data directory.
const (
	KeyFile  = "link-relay.key"
	CertFile = "link-relay.crt"
)

// LoadCert loads the relay's self-signed certificate in dir, generating it
// on first use (the operator's own certificate, --tls-cert, is served through
// certfile.Watcher instead). It returns the fingerprint agents and clients
// pin (--relay-fingerprint): Fingerprint of the certificate.
func LoadCert(dir string) (tls.Certificate, string, error) {
	keyPath, certPath := filepath.Join(dir, KeyFile), filepath.Join(dir, CertFile)
	if cert, err := tls.LoadX509KeyPair(certPath, keyPath); err == nil {
		return cert, Fingerprint(cert.Leaf), nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return tls.Certificate{}, "", fmt.Errorf("load link certificate %s: %w", certPath, err)
	}
	key, _, err := link.LoadOrCreateKey(keyPath)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	cert, err := link.SelfSignedCert(key, "nasreach-link-relay")
	if err != nil {
		return tls.Certificate{}, "", err
	}
	pemCert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]})
	if err := os.WriteFile(certPath, pemCert, 0o644); err != nil {
		return tls.Certificate{}, "", fmt.Errorf("write link certificate %s: %w", certPath, err)
	}
	return cert, Fingerprint(cert.Leaf), nil
}

// Fingerprint is what agents and clients pin (--relay-fingerprint): the
// SHA-256 of the certificate's public key, which stays the same across
// renewals that keep the key.
func Fingerprint(leaf *x509.Certificate) string {
	return link.Fingerprint(leaf.RawSubjectPublicKeyInfo)
}

package linkserver

import (
	"crypto/tls"
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

// LoadCert loads the relay's certificate from certFile and keyFile (PEM),
// or, when both are empty, the self-signed one in dir, generating it on first
// use. It returns the fingerprint agents and clients pin
// (--relay-fingerprint): the SHA-256 of the certificate's public key, which
// stays the same as long as the key does.
func LoadCert(dir, certFile, keyFile string) (tls.Certificate, string, error) {
	if certFile != "" || keyFile != "" {
		if certFile == "" || keyFile == "" {
			return tls.Certificate{}, "", errors.New("--tls-cert and --tls-key go together")
		}
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return tls.Certificate{}, "", fmt.Errorf("load link certificate %s: %w", certFile, err)
		}
		return cert, link.Fingerprint(cert.Leaf.RawSubjectPublicKeyInfo), nil
	}
	keyPath, certPath := filepath.Join(dir, KeyFile), filepath.Join(dir, CertFile)
	if cert, err := tls.LoadX509KeyPair(certPath, keyPath); err == nil {
		return cert, link.Fingerprint(cert.Leaf.RawSubjectPublicKeyInfo), nil
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
	return cert, link.Fingerprint(cert.Leaf.RawSubjectPublicKeyInfo), nil
}

package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Names of the systemd credentials serve reads (LoadCredential=NAME:PATH or
// SetCredentialEncrypted=NAME:… in the unit). Secrets travel this way rather
// than in the environment, which every process of the service, and
// `systemctl show`, can read.
const (
	adminTokenCredential = "admin-token"
	turnSecretCredential = "turn-secret"   // --turn-secret
	tlsKeyCredential     = "tls-key"       // --tls-key: the credential's file is the key
	meshKeyCredential    = "link-mesh-key" // --link-mesh-key
)

// maxCredentialSize bounds what is read from a credential file: the secrets
// are tokens and keys, never megabytes.
const maxCredentialSize = 64 << 10

// readCredential returns the systemd credential name from
// $CREDENTIALS_DIRECTORY, trimmed of surrounding white space, and the file it
// came from. Without that directory or that file it returns "" and no error:
// the credential is optional. An empty or unreadable one is an error, since
// the operator asked for it and would otherwise get a silent fallback.
func readCredential(name string) (value, file string, err error) {
	dir := os.Getenv("CREDENTIALS_DIRECTORY")
	if dir == "" {
		return "", "", nil
	}
	file = filepath.Join(dir, name)
	f, err := os.Open(file)
	if errors.Is(err, os.ErrNotExist) {
		return "", "", nil
	}
	if err != nil {
		return "", "", fmt.Errorf("read systemd credential %s: %w", file, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxCredentialSize+1))
	if err != nil {
		return "", "", fmt.Errorf("read systemd credential %s: %w", file, err)
	}
	if len(b) > maxCredentialSize {
		return "", "", fmt.Errorf("systemd credential %s is over %d bytes: is it the right file?", file, maxCredentialSize)
	}
	value = strings.TrimSpace(string(b))
	if value == "" {
		return "", "", fmt.Errorf("systemd credential %s is empty: put the %s in it or drop the credential from the unit", file, name)
	}
	return value, file, nil
}

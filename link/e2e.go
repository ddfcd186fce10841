package link

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// The end-to-end TLS inside every relayed stream: the agent is the TLS 1.3
// server with a certificate for its device key, the client pins that key.
// The relay sees only ciphertext; the carrier stream could be a direct path
// just as well.

// KnownDevicesFile returns the default trust-on-first-use file,
// os.UserConfigDir()/nasreach/known_devices.
func KnownDevicesFile() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("find the user config directory for known_devices: %w", err)
	}
	return filepath.Join(dir, "nasreach", "known_devices"), nil
}

// MaxKnownDevicesSize bounds the known_devices file read into memory.
const MaxKnownDevicesSize = 1 << 20

// knownDevices is a known_devices file: one line per device,
// "<relay host:port> <device> sha256:<hex>"; '#' starts a comment.
type knownDevices struct {
	path string
	mu   sync.Mutex
}

func (k *knownDevices) lookup(server, device string) (string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	b, err := os.ReadFile(k.path)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read known devices %s: %w", k.path, err)
	}
	if len(b) > MaxKnownDevicesSize {
		return "", fmt.Errorf("known devices %s is larger than %d bytes", k.path, MaxKnownDevicesSize)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if f[0] == server && f[1] == device {
			return ParseFingerprint(f[2])
		}
	}
	return "", nil
}

func (k *knownDevices) add(server, device, fp string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := os.MkdirAll(filepath.Dir(k.path), 0o700); err != nil {
		return fmt.Errorf("create directory for known devices: %w", err)
	}
	f, err := os.OpenFile(k.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("record device key in %s: %w", k.path, err)
	}
	_, err = fmt.Fprintf(f, "%s %s %s\n", server, device, fp)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("record device key in %s: %w", k.path, err)
	}
	return nil
}

// clientE2E returns the TLS config a client runs inside a relayed stream to
// device: the key must match pinned, or when pinned is empty it is recorded
// in known (trust on first use).
func clientE2E(server, device, pinned string, known *knownDevices) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13, NextProtos: []string{E2EALPN}, ServerName: device,
		InsecureSkipVerify: true, // replaced by VerifyConnection's pin
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return fmt.Errorf("device %s presented no certificate", device)
			}
			got := Fingerprint(cs.PeerCertificates[0].RawSubjectPublicKeyInfo)
			want, where := pinned, "--fingerprint"
			if want == "" && known != nil {
				var err error
				if want, err = known.lookup(server, device); err != nil {
					return err
				}
				where = known.path
			}
			switch {
			case want == got:
				return nil
			case want == "" && known != nil:
				return known.add(server, device, got)
			case want == "":
				return nil
			}
			return fmt.Errorf("%w: device %s on %s presents key %s but %s pins %s; "+
				"if the NAS was reset or its agent reinstalled, check the new fingerprint with its owner and update %s",
				ErrKeyChanged, device, server, got, where, want, where)
		},
	}
}

// serverE2E is the agent's TLS config with its device certificate.
func serverE2E(cert tls.Certificate) *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{E2EALPN}, Certificates: []tls.Certificate{cert}}
}

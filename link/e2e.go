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
// os.UserConfigDir()/nasreach/known_devices: on Linux
// $XDG_CONFIG_HOME/nasreach/known_devices, by default
// ~/.config/nasreach/known_devices.
func KnownDevicesFile() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("find the user config directory for known_devices: %w", err)
	}
	return filepath.Join(dir, "nasreach", "known_devices"), nil
}

// MaxKnownDevicesSize bounds the known_devices file read into memory.
const MaxKnownDevicesSize = 1 << 20

// KeyChangedError is the refusal of a device whose key is not the one pinned
// for it, in the known devices file or as a fingerprint given by the caller
// (--fingerprint). It matches ErrKeyChanged with errors.Is. Like ssh's
// "REMOTE HOST IDENTIFICATION HAS CHANGED", it says where the pin is and how
// to remove it once the new key is known to be genuine.
type KeyChangedError struct {
	Device, Server string
	// Got is the fingerprint the device presented, Pinned the one expected.
	Got, Pinned string
	// File and Line locate the pin in the known devices file; File is empty
	// for a pin the caller gave (DialerConfig.Fingerprints).
	File string
	Line int
}

// Error says which key was expected, where it is pinned, and how to forget it.
func (e *KeyChangedError) Error() string {
	if e.File == "" {
		return fmt.Sprintf("%v: device %s on relay %s presents key %s, not %s given with --fingerprint; "+
			"if the NAS was reset or its agent reinstalled, check the new fingerprint with its owner and pin that one",
			ErrKeyChanged, e.Device, e.Server, e.Got, e.Pinned)
	}
	return fmt.Sprintf("%v: device %s on relay %s presents key %s, but %s:%d pins %s; "+
		"if the NAS was reset or its agent reinstalled, check the new fingerprint with its owner, then forget the old one "+
		"with `nasreach connect --server %s --known-devices %s --forget %s` (or delete line %d of %s)",
		ErrKeyChanged, e.Device, e.Server, e.Got, e.File, e.Line, e.Pinned, e.Server, e.File, e.Device, e.Line, e.File)
}

// Unwrap returns ErrKeyChanged.
func (e *KeyChangedError) Unwrap() error { return ErrKeyChanged }

// knownDevices is a known_devices file: one line per device,
// "<relay host:port> <device> sha256:<hex>"; '#' starts a comment.
type knownDevices struct {
	path string
	mu   sync.Mutex
}

// read returns the file's content, nil when it does not exist.
func (k *knownDevices) read() ([]byte, error) {
	b, err := os.ReadFile(k.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read known devices %s: %w", k.path, err)
	}
	if len(b) > MaxKnownDevicesSize {
		return nil, fmt.Errorf("known devices %s is larger than %d bytes", k.path, MaxKnownDevicesSize)
	}
	return b, nil
}

// entryFor reports whether a line of the file pins server's device.
func entryFor(line, server, device string) (fp string, ok bool) {
	f := strings.Fields(line)
	if len(f) != 3 || strings.HasPrefix(f[0], "#") || f[0] != server || f[1] != device {
		return "", false
	}
	return f[2], true
}

// lookup returns the fingerprint pinned for server's device and its line
// number (1-based), or "" when there is none.
func (k *knownDevices) lookup(server, device string) (fp string, line int, err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	b, err := k.read()
	if err != nil {
		return "", 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		if f, ok := entryFor(sc.Text(), server, device); ok {
			fp, err := ParseFingerprint(f)
			if err != nil {
				return "", 0, fmt.Errorf("%s:%d: %w", k.path, n, err)
			}
			return fp, n, nil
		}
	}
	return "", 0, nil
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

// remove deletes every line that pins server's device and returns how many
// it deleted. The file is replaced whole (a new file renamed over it), so a
// crash leaves either the old or the new one.
func (k *knownDevices) remove(server, device string) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	b, err := k.read()
	if err != nil || b == nil {
		return 0, err
	}
	var kept bytes.Buffer
	removed := 0
	for line := range strings.Lines(string(b)) {
		if _, ok := entryFor(line, server, device); ok {
			removed++
			continue
		}
		kept.WriteString(line)
	}
	if removed == 0 {
		return 0, nil
	}
	tmp, err := os.CreateTemp(filepath.Dir(k.path), ".known_devices-*")
	if err != nil {
		return 0, fmt.Errorf("rewrite known devices %s: %w", k.path, err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename there is nothing left to remove
	_, err = tmp.Write(kept.Bytes())
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), k.path)
	}
	if err != nil {
		return 0, fmt.Errorf("rewrite known devices %s: %w", k.path, err)
	}
	return removed, nil
}

// ForgetDevice removes the keys pinned for device on relay server (HOST:PORT,
// as given to DialerConfig.Server) from the known devices file (empty means
// KnownDevicesFile()) and returns how many lines it removed; the next Dial
// trusts whatever key the device presents and records it. Use it once the
// owner has confirmed that the device's new key is genuine.
func ForgetDevice(file, server, device string) (int, error) {
	if file == "" {
		var err error
		if file, err = KnownDevicesFile(); err != nil {
			return 0, err
		}
	}
	k := &knownDevices{path: file}
	return k.remove(server, strings.ToLower(device))
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
			changed := &KeyChangedError{Device: device, Server: server, Got: got, Pinned: pinned}
			if pinned == "" && known != nil {
				var err error
				if changed.Pinned, changed.Line, err = known.lookup(server, device); err != nil {
					return err
				}
				changed.File = known.path
			}
			switch {
			case changed.Pinned == got:
				return nil
			case changed.Pinned == "" && known != nil:
				return known.add(server, device, got)
			case changed.Pinned == "":
				return nil
			}
			return changed
		},
	}
}

// serverE2E is the agent's TLS config with its device certificate.
func serverE2E(cert tls.Certificate) *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{E2EALPN}, Certificates: []tls.Certificate{cert}}
}

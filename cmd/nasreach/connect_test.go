package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestConnectForgetRemovesThePinFromTheChosenFile: after a device's key
// changed, the command the refusal names removes the old pin, from the file
// --known-devices or NASREACH_KNOWN_DEVICES chose, and nothing else.
func TestConnectForgetRemovesThePinFromTheChosenFile(t *testing.T) {
	fp := "sha256:" + strings.Repeat("0f", 32)
	keep := "relay.example.net:7443 nas1 " + fp + "\n127.0.0.1:17443 nas2 " + fp + "\n"
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := newApp(&out, &out).Run(context.Background(), append([]string{"nasreach", "connect"}, args...))
		return out.String(), err
	}
	for _, tc := range []struct {
		name string
		args func(t *testing.T, file string) []string
	}{
		{"flag", func(t *testing.T, file string) []string { return []string{"--known-devices", file, "--forget", "NAS1"} }},
		{"environment", func(t *testing.T, file string) []string {
			t.Setenv("NASREACH_KNOWN_DEVICES", file)
			return []string{"--forget", "nas1"}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "known_devices")
			if err := os.WriteFile(file, []byte("127.0.0.1:17443 nas1 "+fp+"\n"+keep), 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := run(tc.args(t, file)...)
			if err != nil || !strings.Contains(out, "removed the key pinned for nas1 on relay 127.0.0.1:17443 from "+file) {
				t.Fatalf("connect --forget: %v\n%s", err, out)
			}
			if b, _ := os.ReadFile(file); string(b) != keep {
				t.Errorf("%s after --forget nas1:\n%s\nwant only the other pins:\n%s", file, b, keep)
			}
			if out, err := run(tc.args(t, file)...); err != nil || !strings.Contains(out, "holds no key for nas1") {
				t.Errorf("connect --forget again: %v\n%s", err, out)
			}
		})
	}
	if _, err := run("--known-devices", "-", "--forget", "nas1"); err == nil {
		t.Error("--forget with --known-devices - succeeded; there is no file to forget in")
	}
	if _, err := run("--forget", "nas1", "nas1:443"); err == nil {
		t.Error("--forget with a DEVICE:PORT argument succeeded")
	}
}

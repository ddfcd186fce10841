package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestMakeInstallHonoursDestdirAndPrefix(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("no make")
	}
	dest := t.TempDir()
	// A config the operator already has must survive a re-install.
	conf := filepath.Join(dest, "etc/nasreach/nasreach.toml")
	os.MkdirAll(filepath.Dir(conf), 0o755)
	os.WriteFile(conf, []byte("zone = \"mine.example\"\n"), 0o644)
	out, err := exec.Command("make", "-C", "../..", "install", "DESTDIR="+dest, "PREFIX=/usr", "BUILDFLAGS=").CombinedOutput()
	if err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	for path, mode := range map[string]os.FileMode{
		"usr/bin/nasreach":                        0o755,
		"usr/lib/systemd/system/nasreach.service": 0o644,
		"usr/share/man/man8/nasreach.8":           0o644,
		"usr/lib/sysctl.d/60-nasreach.conf":       0o644,
	} {
		info, err := os.Stat(filepath.Join(dest, path))
		if err != nil || info.Mode().Perm() != mode {
			t.Errorf("%s: %v, mode %v; want mode %v", path, err, info.Mode().Perm(), mode)
		}
	}
	unit, _ := os.ReadFile(filepath.Join(dest, "usr/lib/systemd/system/nasreach.service"))
	if !strings.Contains(string(unit), "ExecStart=/usr/bin/nasreach serve") {
		t.Error("the installed unit does not run the binary from PREFIX")
	}
	if b, _ := os.ReadFile(conf); string(b) != "zone = \"mine.example\"\n" {
		t.Error("make install overwrote the operator's config")
	}
	man, _ := os.ReadFile(filepath.Join(dest, "usr/share/man/man8/nasreach.8"))
	for _, want := range []string{".TH NASREACH 8", `\-\-log\-retention`, "SIGHUP"} {
		if !strings.Contains(string(man), want) {
			t.Errorf("man page lacks %q", want)
		}
	}
}

// TestMakeInstallPutsALocalUnitUnderEtc checks the other half of the unit's
// placement: a local install (the default PREFIX) is found by systemd in
// /etc/systemd/system, where packages never write.
func TestMakeInstallPutsALocalUnitUnderEtc(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("no make")
	}
	dest := t.TempDir()
	out, err := exec.Command("make", "-C", "../..", "install", "DESTDIR="+dest, "BUILDFLAGS=").CombinedOutput()
	if err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	unit, err := os.ReadFile(filepath.Join(dest, "etc/systemd/system/nasreach.service"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(unit), "ExecStart=/usr/local/bin/nasreach serve") {
		t.Error("the installed unit does not run /usr/local/bin/nasreach")
	}
	if _, err := os.Stat(filepath.Join(dest, "usr/local/lib/systemd/system/nasreach.service")); err == nil {
		t.Error("a local install also put the unit under /usr/local/lib/systemd/system")
	}
}

package daemon

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/nasreach/nasreach/internal/testutil"
)

// TestValidateNamesEverySettingAtFault checks that each problem is tied to
// the setting that caused it (the command line turns that into a file and
// line) and that New refuses such a config before creating anything.
func TestValidateNamesEverySettingAtFault(t *testing.T) {
	dir := t.TempDir()
	testutil.WriteCertOnly(t, filepath.Join(dir, "cert.pem"), "nas.example.net")
	data := filepath.Join(dir, "data")
	cfg := Config{
		DataDir: data, Zone: "bad..zone", DNSAddr: "0.0.0.0:99999", HTTPAddr: "127.0.0.1",
		AdminToken: "short", CertFile: filepath.Join(dir, "cert.pem"),
		TURN: TURNConfig{Addr: "0.0.0.0:3478", Enabled: true},
	}
	err := cfg.Validate()
	var got []string
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		var se *SettingError
		if !errors.As(e, &se) {
			t.Fatalf("%v is not a *SettingError", e)
		}
		got = append(got, se.Setting)
	}
	want := []string{"zone", "dns", "http", "admin-token", "tls-cert", "turn-relay-ip"}
	if !slices.Equal(got, want) {
		t.Errorf("Validate blamed %v, want %v\n%v", got, want, err)
	}
	if _, err := New(cfg); err == nil {
		t.Fatal("New started with an invalid config")
	}
	if _, err := os.Stat(data); !os.IsNotExist(err) {
		t.Errorf("New refused its config but created %s", data)
	}
}

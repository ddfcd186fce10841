package daemon_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nasreach/nasreach/daemon"
	"github.com/nasreach/nasreach/store"
	"github.com/rs/zerolog"
)

// TestReadyzSaysNotReadyWhileTheDiskIsFull puts the data directory on a
// small tmpfs and fills it: the write that cannot commit is answered with an
// error, never acknowledged; /readyz says 503 and why until there is room
// and a commit succeeds again; and every acknowledged change survives a
// restart.
func TestReadyzSaysNotReadyWhileTheDiskIsFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs to fill")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "nasreach-test", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	cfg := daemon.Config{DataDir: dir, Zone: "myqnapcloud.com", DNSAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Logger: zerolog.Nop()}
	d := startDaemon(t, cfg)
	api, admin := "http://"+d.Addrs().HTTP.String(), d.AdminTokenValue()
	readyz := "http://" + d.Addrs().Metrics.String() + "/readyz"

	call := func(method, path, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, api+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+admin)
		return do(t, req)
	}
	if code, body := call(http.MethodPost, "/v1/devices", `{"name":"nas1"}`); code != http.StatusCreated {
		t.Fatalf("create nas1: %d %s", code, body)
	}
	if code, body := call(http.MethodPut, "/v1/devices/nas1/address", `{"ipv4":"203.0.113.10"}`); code != http.StatusOK {
		t.Fatalf("set nas1's address: %d %s", code, body)
	}
	if code, body := get(t, readyz); code != http.StatusOK {
		t.Fatalf("/readyz before the disk is full: %d %s", code, body)
	}

	filler := fill(t, filepath.Join(dir, "filler"))
	var acked []string
	var refused string
	for i := 0; refused == "" && i < 2000; i++ {
		name := fmt.Sprintf("dev%d", i)
		switch code, body := call(http.MethodPost, "/v1/devices", `{"name":"`+name+`"}`); code {
		case http.StatusCreated:
			acked = append(acked, name)
		case http.StatusInternalServerError:
			if !strings.Contains(body, "could not save the change") {
				t.Errorf("refused create answered %s", body)
			}
			refused = name
		default:
			t.Fatalf("create %s on a full disk: %d %s, want 201 or 500", name, code, body)
		}
	}
	if refused == "" {
		t.Fatal("2000 devices created on a full disk; the test did not fill it")
	}
	if code, _ := call(http.MethodGet, "/v1/devices/"+refused, ""); code != http.StatusNotFound {
		t.Errorf("the refused device %s answers %d, want 404: a write that did not commit must not show", refused, code)
	}
	code, body := get(t, readyz)
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "store cannot commit") || !strings.Contains(body, "no space left on device") {
		t.Fatalf("/readyz on a full disk = %d %q, want 503 saying the store cannot commit for lack of space", code, body)
	}
	t.Logf("%d devices acknowledged before the disk was full; /readyz: %s", len(acked), strings.TrimSpace(body))

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(4 * store.DefaultProbeEvery)
	for code, body = get(t, readyz); code != http.StatusOK && time.Now().Before(deadline); code, body = get(t, readyz) {
		time.Sleep(100 * time.Millisecond)
	}
	if code != http.StatusOK {
		t.Fatalf("/readyz with room again = %d %q, want 200 once a probe commit succeeds", code, body)
	}
	if code, body := call(http.MethodPost, "/v1/devices", `{"name":"after"}`); code != http.StatusCreated {
		t.Fatalf("create with room again: %d %s", code, body)
	}
	acked = append(acked, "after")

	if err := d.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	d = startDaemon(t, cfg)
	for _, name := range append(acked, "nas1") {
		if _, err := d.Store().Get(name); err != nil {
			t.Errorf("%s was acknowledged but is gone after a restart: %v", name, err)
		}
	}
	if rec, ok := d.Store().Lookup("nas1"); !ok || rec.IPv4 != netip.MustParseAddr("203.0.113.10") {
		t.Errorf("nas1 after a restart resolves to %+v, %v; want its acknowledged address", rec, ok)
	}
	if _, err := d.Store().Get(refused); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the refused device %s exists after a restart: %v", refused, err)
	}
}

// startDaemon starts a daemon and shuts it down when the test ends.
func startDaemon(t *testing.T, cfg daemon.Config) *daemon.Daemon {
	t.Helper()
	d, err := daemon.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Shutdown(context.Background()) })
	return d
}

// fill writes a file at path until its file system has no space left and
// returns path.
func fill(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 4096)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill %s: %v", path, err)
			}
			return path
		}
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	return do(t, req)
}

func do(t *testing.T, req *http.Request) (int, string) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

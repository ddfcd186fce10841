package testutil

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Pebble is a running Pebble, Let's Encrypt's ACME test server (Debian's
// pebble), whose DNS-01 checks ask a zone's authoritative server through a
// recursive resolver.
type Pebble struct {
	// Directory is the ACME directory URL, https://127.0.0.1:PORT/dir.
	Directory string
	// CAFile is Pebble's HTTPS certificate, self-signed: a client trusts
	// it to reach Pebble (not the CA Pebble issues from).
	CAFile string
}

// StartPebble runs Pebble on free loopback ports with a fresh HTTPS
// certificate (Debian's pebble ships no test certificates), and kills it
// when the test ends. Its DNS-01 checks go to Unbound (StartUnbound), which
// asks the authoritative server at dnsAddr: Let's Encrypt's validation
// resolves through Unbound too, and Pebble's own DNS client would not ask
// again over TCP when an answer comes truncated (it sends no EDNS, and a
// name and its wildcard's two challenge values are over three times such a
// query: more than an authoritative server should send over UDP). Pebble validates at
// once (no random sleep), refuses no nonce at random and reuses no
// authorization, so every order validates its own challenges. The test is
// skipped, or fails under CI, when pebble is not installed (NeedTool).
func StartPebble(t testing.TB, dnsAddr string) *Pebble {
	t.Helper()
	bin := NeedTool(t, "pebble")
	resolver := StartUnbound(t, dnsAddr)
	dir := t.TempDir()
	crt, key := filepath.Join(dir, "pebble.crt"), filepath.Join(dir, "pebble.key")
	WriteCert(t, crt, key, "pebble")
	port := startOnFreePort(t, "pebble", func(port int) *exec.Cmd {
		// A port free a moment ago may be the one just taken (the first is
		// closed before the second is asked for); Pebble would then serve
		// ACME and die binding its management port after it.
		mgmt := freePort(t)
		for mgmt == port {
			mgmt = freePort(t)
		}
		cfg := fmt.Sprintf(`{"pebble": {"listenAddress": "127.0.0.1:%d", "managementListenAddress": "127.0.0.1:%d",
  "certificate": %q, "privateKey": %q, "httpPort": 5002, "tlsPort": 5001, "ocspResponderURL": "",
  "externalAccountBindingRequired": false}}`, port, mgmt, crt, key)
		cfgFile := filepath.Join(dir, "pebble.json")
		if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "-config", cfgFile, "-dnsserver", resolver)
		cmd.Env = append(ToolEnv(), "PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0", "PEBBLE_AUTHZREUSE=0")
		return cmd
	})
	return &Pebble{Directory: fmt.Sprintf("https://127.0.0.1:%d/dir", port), CAFile: crt}
}

// HTTPClient returns an HTTP client that trusts Pebble's HTTPS certificate.
func (p *Pebble) HTTPClient(t testing.TB) *http.Client {
	t.Helper()
	pool, err := certPool(p.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	tr.TLSClientConfig.RootCAs = pool
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// waitListening reports whether addr accepts a TCP connection within d,
// giving up early when exited is closed.
func waitListening(addr string, exited <-chan struct{}, d time.Duration) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		select {
		case <-exited:
			return false
		default:
		}
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return true
		}
	}
	return false
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago, for
// a program that takes its port in its configuration.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// ToolEnv is the environment for the third-party programs tests run: this
// process's without proxy settings, so that a program sends nothing anywhere
// but where the test points it.
func ToolEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if !strings.HasSuffix(strings.ToLower(k), "_proxy") {
			out = append(out, kv)
		}
	}
	return out
}

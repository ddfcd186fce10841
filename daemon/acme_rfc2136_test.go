package daemon_test

// Certificates by RFC 2136: Debian's certbot with certbot-dns-rfc2136 and
// Debian's lego with its rfc2136 provider publish the DNS-01 values with
// UPDATE signed with the device's TSIG key, and Pebble, resolving through
// the daemon, issues each a certificate for nas1.<zone> and *.nas1.<zone>.
// The Pebble, the names and the checks are acme_interop_test.go's.

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/nasreach/nasreach/daemon/daemontest"
	"github.com/nasreach/nasreach/internal/testutil"
)

// startRFC2136ACME starts a daemon with device nas1 and its TSIG key, and
// a Pebble that resolves through it; bin is the path of the ACME client.
func startRFC2136ACME(t *testing.T, client string) (td *daemontest.Daemon, key daemontest.TSIGKey, p *testutil.Pebble, bin string) {
	t.Helper()
	testutil.NeedTool(t, "pebble")
	bin = testutil.NeedTool(t, client)
	td = daemontest.Start(t)
	key = td.IssueTSIGKey("nas1", td.AddDevice("nas1"))
	return td, key, testutil.StartPebble(t, td.DNS), bin
}

func TestACMECertbotDNSRFC2136GetsACertificate(t *testing.T) {
	td, key, p, bin := startRFC2136ACME(t, "certbot")
	dir := t.TempDir()
	// certbot-dns-rfc2136's credentials, as its documentation writes them.
	creds := writePrivateFile(t, filepath.Join(dir, "rfc2136.ini"), fmt.Sprintf(`dns_rfc2136_server = 127.0.0.1
dns_rfc2136_port = %s
dns_rfc2136_name = %s
dns_rfc2136_secret = %s
dns_rfc2136_algorithm = HMAC-SHA256
`, portOf(t, td.DNS), key.Name, key.Secret))
	args := []string{"certonly", "--non-interactive", "--agree-tos", "--register-unsafely-without-email",
		"--server", p.Directory, "--config-dir", filepath.Join(dir, "config"), "--work-dir", filepath.Join(dir, "work"),
		"--logs-dir", filepath.Join(dir, "logs"), "--cert-name", "nas1",
		"--dns-rfc2136", "--dns-rfc2136-credentials", creds, "--dns-rfc2136-propagation-seconds", "1"}
	for _, n := range certNames {
		args = append(args, "-d", n)
	}
	out, err := runToolEnv(t, acmeTimeout, []string{"REQUESTS_CA_BUNDLE=" + p.CAFile}, bin, args...)
	if err != nil {
		t.Fatalf("certbot --dns-rfc2136: %v\n%s", err, out)
	}
	pemData, err := os.ReadFile(filepath.Join(dir, "config", "live", "nas1", "cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	wantCertificateFor(t, "certbot --dns-rfc2136", pemData, certNames)
	wantNoChallengeLeft(t, td)
}

func TestACMELegoRFC2136GetsACertificate(t *testing.T) {
	td, key, p, bin := startRFC2136ACME(t, "lego")
	dir := t.TempDir()
	args := []string{"--server", p.Directory, "--accept-tos", "--email", "nas1@example.net", "--path", filepath.Join(dir, "lego"),
		"--dns", "rfc2136", "--dns.resolvers", td.DNS, "--dns.disable-cp"}
	for _, n := range certNames {
		args = append(args, "-d", n)
	}
	out, err := runToolEnv(t, acmeTimeout, []string{
		"LEGO_CA_CERTIFICATES=" + p.CAFile,
		"RFC2136_NAMESERVER=" + td.DNS, "RFC2136_TSIG_KEY=" + key.Name + ".", "RFC2136_TSIG_SECRET=" + key.Secret,
		"RFC2136_TSIG_ALGORITHM=hmac-sha256.",
		// The provider solves one challenge at a time (it replaces the TXT
		// RRset), a minute apart by default, and polls every 2 s.
		"RFC2136_SEQUENCE_INTERVAL=1", "RFC2136_POLLING_INTERVAL=1", "RFC2136_PROPAGATION_TIMEOUT=30",
	}, bin, append(args, "run")...)
	if err != nil {
		t.Fatalf("lego --dns rfc2136: %v\n%s", err, out)
	}
	pemData, err := os.ReadFile(filepath.Join(dir, "lego", "certificates", certNames[0]+".crt"))
	if err != nil {
		t.Fatal(err)
	}
	wantCertificateFor(t, "lego --dns rfc2136", pemData, certNames)
	wantNoChallengeLeft(t, td)
}

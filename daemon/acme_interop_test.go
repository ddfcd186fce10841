package daemon_test

// Certificates issued end to end: Pebble, Let's Encrypt's ACME test server
// (Debian's pebble), validates DNS-01 by asking the in-process daemon's DNS
// port, while ACME clients publish the challenge through the daemon's API:
// lego's acme-dns provider (lego 4.9.1 as a library, the code its CLI runs:
// Debian builds its lego binary without that provider), Debian's lego binary
// with its exec provider calling the REST API with curl, and Debian's certbot
// with manual hooks doing the same (certbot-dns-acmedns is not in Debian).
// Each obtains one certificate for nas1.<zone> and *.nas1.<zone>; another
// device's token obtains nothing. Everything listens on 127.0.0.1 and every
// process started is killed by the test.

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"log"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-acme/lego/v4/certcrypto"
	"github.com/go-acme/lego/v4/certificate"
	"github.com/go-acme/lego/v4/challenge/dns01"
	"github.com/go-acme/lego/v4/lego"
	legolog "github.com/go-acme/lego/v4/log"
	"github.com/go-acme/lego/v4/providers/dns/acmedns"
	"github.com/go-acme/lego/v4/registration"
	"github.com/nasreach/nasreach/daemon/daemontest"
	"github.com/nasreach/nasreach/internal/testutil"
)

// acmeTimeout bounds one ACME client run: lego's exec provider waits
// between the two challenges and polls for propagation, certbot polls for
// validation.
const acmeTimeout = 2 * time.Minute

// certNames are the names every client asks a certificate for.
var certNames = []string{"nas1." + daemontest.Zone, "*.nas1." + daemontest.Zone}

// wantCertificateFor fails the test unless pemData starts with a
// certificate naming exactly names.
func wantCertificateFor(t *testing.T, what string, pemData []byte, names []string) {
	t.Helper()
	block, _ := pem.Decode(pemData)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("%s: no PEM certificate in %q", what, pemData)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	got := slices.Sorted(slices.Values(cert.DNSNames))
	if want := slices.Sorted(slices.Values(names)); !slices.Equal(got, want) {
		t.Fatalf("%s: the certificate names %v, want %v", what, got, want)
	}
	t.Logf("%s: a certificate for %v from %s, valid until %s", what, got, cert.Issuer.CommonName, cert.NotAfter.Format(time.DateOnly))
}

// wantNoChallengeLeft fails the test unless nas1 publishes no value.
func wantNoChallengeLeft(t *testing.T, td *daemontest.Daemon) {
	t.Helper()
	if got := txtValues(td, challengeName("nas1")); len(got) != 0 {
		t.Errorf("after the client cleaned up, nas1 still publishes %q", got)
	}
}

// acmeUser is the ACME account lego registers with Pebble.
type acmeUser struct {
	key crypto.PrivateKey
	reg *registration.Resource
}

func (u *acmeUser) GetEmail() string                        { return "" }
func (u *acmeUser) GetRegistration() *registration.Resource { return u.reg }
func (u *acmeUser) GetPrivateKey() crypto.PrivateKey        { return u.key }

// legoAcmeDNS obtains a certificate for names as lego's CLI does with
// `--dns acme-dns --dns.resolvers <daemon> --dns.disable-cp`: its acme-dns
// provider, configured by ACME_DNS_API_BASE and ACME_DNS_STORAGE_PATH, the
// CA trusted through LEGO_CA_CERTIFICATES.
func legoAcmeDNS(t *testing.T, td *daemontest.Daemon, p *testutil.Pebble, storage string, names []string) (*certificate.Resource, error) {
	t.Helper()
	var logs testutil.Buffer
	legolog.Logger = log.New(&logs, "lego ", log.LstdFlags)
	t.Cleanup(func() {
		legolog.Logger = log.New(os.Stderr, "", log.LstdFlags)
		if t.Failed() {
			t.Logf("lego's log:\n%s", logs.String())
		}
	})
	t.Setenv("LEGO_CA_CERTIFICATES", p.CAFile)
	t.Setenv("ACME_DNS_API_BASE", td.HTTP)
	t.Setenv("ACME_DNS_STORAGE_PATH", storage)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	user := &acmeUser{key: key}
	cfg := lego.NewConfig(user)
	cfg.CADirURL = p.Directory
	cfg.Certificate.KeyType = certcrypto.EC256
	client, err := lego.NewClient(cfg)
	if err != nil {
		t.Fatalf("lego client: %v", err)
	}
	provider, err := acmedns.NewDNSProvider()
	if err != nil {
		t.Fatalf("lego's acme-dns provider: %v", err)
	}
	err = client.Challenge.SetDNS01Provider(provider,
		dns01.AddRecursiveNameservers([]string{td.DNS}), dns01.DisableCompletePropagationRequirement())
	if err != nil {
		t.Fatal(err)
	}
	if user.reg, err = client.Registration.Register(registration.RegisterOptions{TermsOfServiceAgreed: true}); err != nil {
		t.Fatalf("register with pebble: %v", err)
	}
	done := make(chan struct{})
	var res *certificate.Resource
	go func() {
		defer close(done)
		res, err = client.Certificate.Obtain(certificate.ObtainRequest{Domains: names, Bundle: true})
	}()
	select {
	case <-done:
	case <-time.After(acmeTimeout):
		t.Fatalf("lego did not finish within %v", acmeTimeout)
	}
	return res, err
}

// acmeDNSStorage writes the acme-dns account file lego's provider reads: for
// nas1's name the account of device (name and token); the wildcard's
// challenge is presented under the same name.
func acmeDNSStorage(t *testing.T, device, token string) string {
	t.Helper()
	account := map[string]any{
		"fulldomain": challengeName("nas1"), "subdomain": device,
		"username": device, "password": token, "allowfrom": []string{},
	}
	b, err := json.Marshal(map[string]any{"nas1." + daemontest.Zone: account})
	if err != nil {
		t.Fatal(err)
	}
	return writePrivateFile(t, filepath.Join(t.TempDir(), "acme-dns.json"), string(b))
}

func TestACMELegosAcmeDNSProviderGetsACertificate(t *testing.T) {
	testutil.NeedTool(t, "pebble")
	td := daemontest.Start(t)
	tok := td.AddDevice("nas1")
	p := testutil.StartPebble(t, td.DNS)
	res, err := legoAcmeDNS(t, td, p, acmeDNSStorage(t, "nas1", tok), certNames)
	if err != nil {
		t.Fatalf("lego with the acme-dns provider: %v", err)
	}
	wantCertificateFor(t, "lego acme-dns", res.Certificate, certNames)
	// acme-dns has no delete: the two values stay until their hour ends.
	if got := txtValues(td, challengeName("nas1")); len(got) != 2 {
		t.Errorf("after lego's acme-dns run nas1 publishes %d values, want the 2 it presented", len(got))
	}
}

func TestACMEAnotherDevicesAccountGetsNoCertificate(t *testing.T) {
	testutil.NeedTool(t, "pebble")
	td := daemontest.Start(t)
	td.AddDevice("nas1")
	other := td.AddDevice("nas2")
	p := testutil.StartPebble(t, td.DNS)
	// nas2's own account, used for nas1's name: the daemon refuses it.
	_, err := legoAcmeDNS(t, td, p, acmeDNSStorage(t, "nas2", other), certNames)
	if err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("lego with nas2's account for nas1: %v, want a refusal with HTTP 403", err)
	}
	// nas2's token claimed as nas1's: a wrong token.
	_, err = legoAcmeDNS(t, td, p, acmeDNSStorage(t, "nas1", other), certNames)
	if err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("lego with nas2's token as nas1: %v, want a refusal with HTTP 401", err)
	}
	// The same through the REST API with lego's exec provider.
	_, out, err := legoExec(t, td, p, other)
	if err == nil || !strings.Contains(out, "401") {
		t.Fatalf("lego exec with nas2's token: exit %v, want a failure naming HTTP 401:\n%s", exitStatus(err), out)
	}
	wantNoChallengeLeft(t, td)
}

// challengeHook is a hook script for the ACME clients: `hook present|cleanup
// VALUE` (certbot's hooks pass the value as CERTBOT_VALIDATION) publishes or
// withdraws VALUE through the REST API with curl, with the token in
// NASREACH_TOKEN. What a user would write; the README shows the same calls.
const challengeHook = `#!/bin/sh
set -eu
case "$1" in
present) method=PUT ;;
cleanup) method=DELETE ;;
*) echo "usage: $0 present|cleanup VALUE" >&2; exit 2 ;;
esac
curl -sS --fail-with-body -X "$method" -H "Authorization: Bearer $NASREACH_TOKEN" \
	-d "{\"values\":[\"$2\"]}" "$NASREACH_API/v1/devices/nas1/acme-challenge"
`

// writeHook writes an executable script into dir and returns its path.
func writeHook(t *testing.T, dir, name, script string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(script), 0o700); err != nil {
		t.Fatal(err)
	}
	return path
}

// legoExec runs Debian's lego binary with the exec provider, whose script
// calls the REST API with token, and returns the certificate file it writes
// when it succeeds, its output and its exit error.
func legoExec(t *testing.T, td *daemontest.Daemon, p *testutil.Pebble, token string) (certFile, out string, err error) {
	t.Helper()
	bin := testutil.NeedTool(t, "lego")
	testutil.NeedTool(t, "curl")
	dir := t.TempDir()
	// lego's exec provider calls `EXEC_PATH present|cleanup FQDN VALUE`.
	hook := writeHook(t, dir, "lego-hook", "#!/bin/sh\nexec \"$(dirname \"$0\")/challenge-hook\" \"$1\" \"$3\"\n")
	writeHook(t, dir, "challenge-hook", challengeHook)
	args := []string{"--server", p.Directory, "--accept-tos", "--email", "nas1@example.net", "--path", filepath.Join(dir, "lego"),
		"--dns", "exec", "--dns.resolvers", td.DNS, "--dns.disable-cp"}
	for _, n := range certNames {
		args = append(args, "-d", n)
	}
	out, err = runToolEnv(t, acmeTimeout, []string{
		"LEGO_CA_CERTIFICATES=" + p.CAFile, "EXEC_PATH=" + hook,
		// The exec provider solves one challenge at a time, a minute apart
		// by default, and polls every 2 s.
		"EXEC_SEQUENCE_INTERVAL=1", "EXEC_POLLING_INTERVAL=1", "EXEC_PROPAGATION_TIMEOUT=30",
		"NASREACH_TOKEN=" + token, "NASREACH_API=" + td.HTTP,
	}, bin, append(args, "run")...)
	return filepath.Join(dir, "lego", "certificates", certNames[0]+".crt"), out, err
}

func TestACMELegoExecWithTheRESTAPIGetsACertificate(t *testing.T) {
	testutil.NeedTool(t, "pebble")
	td := daemontest.Start(t)
	tok := td.AddDevice("nas1")
	p := testutil.StartPebble(t, td.DNS)
	certFile, out, err := legoExec(t, td, p, tok)
	if err != nil {
		t.Fatalf("lego exec: %v\n%s", err, out)
	}
	pemData, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	wantCertificateFor(t, "lego exec", pemData, certNames)
	wantNoChallengeLeft(t, td)
}

func TestACMECertbotWithManualHooksGetsACertificate(t *testing.T) {
	testutil.NeedTool(t, "pebble")
	bin := testutil.NeedTool(t, "certbot")
	testutil.NeedTool(t, "curl")
	td := daemontest.Start(t)
	tok := td.AddDevice("nas1")
	p := testutil.StartPebble(t, td.DNS)
	dir := t.TempDir()
	writeHook(t, dir, "challenge-hook", challengeHook)
	auth := writeHook(t, dir, "certbot-auth", "#!/bin/sh\nexec \"$(dirname \"$0\")/challenge-hook\" present \"$CERTBOT_VALIDATION\"\n")
	cleanup := writeHook(t, dir, "certbot-cleanup", "#!/bin/sh\nexec \"$(dirname \"$0\")/challenge-hook\" cleanup \"$CERTBOT_VALIDATION\"\n")
	args := []string{"certonly", "--non-interactive", "--agree-tos", "--register-unsafely-without-email",
		"--server", p.Directory, "--config-dir", filepath.Join(dir, "config"), "--work-dir", filepath.Join(dir, "work"),
		"--logs-dir", filepath.Join(dir, "logs"), "--manual", "--preferred-challenges", "dns",
		"--manual-auth-hook", auth, "--manual-cleanup-hook", cleanup, "--cert-name", "nas1"}
	for _, n := range certNames {
		args = append(args, "-d", n)
	}
	out, err := runToolEnv(t, acmeTimeout, []string{
		"REQUESTS_CA_BUNDLE=" + p.CAFile, "NASREACH_TOKEN=" + tok, "NASREACH_API=" + td.HTTP,
	}, bin, args...)
	if err != nil {
		t.Fatalf("certbot: %v\n%s", err, out)
	}
	pemData, err := os.ReadFile(filepath.Join(dir, "config", "live", "nas1", "cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	wantCertificateFor(t, "certbot", pemData, certNames)
	wantNoChallengeLeft(t, td)
}

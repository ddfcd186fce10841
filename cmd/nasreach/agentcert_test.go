package main

import (
	"crypto/tls"
	"crypto/x509"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nasreach/nasreach/daemon/daemontest"
	"github.com/nasreach/nasreach/devicecert"
	"github.com/nasreach/nasreach/internal/testutil"
)

func TestAgentWithCertKeepsACertificateForItsName(t *testing.T) {
	td := daemontest.Start(t, daemontest.WithLink)
	tl := td.LinkRelay()
	tok := td.AddDevice("nas1")
	p := testutil.StartPebble(t, td.DNS)
	dir := filepath.Join(t.TempDir(), "cert")
	runLinkCLI(t, "agent", "--server", tl.Relay.Addr().String(), "--relay-fingerprint", tl.Fingerprint, "--device", "nas1", "--token", tok,
		"--expose", "443=127.0.0.1:9", "--api", td.HTTP, "--state", t.TempDir(), "--log-level", "error",
		"--cert", dir, "--acme-directory", p.Directory, "--acme-ca-file", p.CAFile)
	var pair tls.Certificate
	testutil.WaitFor(t, time.Minute, "the agent's certificate in "+dir, func() bool {
		var err error
		pair, err = tls.LoadX509KeyPair(filepath.Join(dir, devicecert.CertFile), filepath.Join(dir, devicecert.KeyFile))
		return err == nil
	})
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"*.nas1." + daemontest.Zone, "nas1." + daemontest.Zone}
	if got := slices.Sorted(slices.Values(cert.DNSNames)); !slices.Equal(got, want) {
		t.Fatalf("the agent's certificate names %v, want %v", got, want)
	}
}

func TestAgentCertNeedsTheAPI(t *testing.T) {
	var out testutil.Buffer
	err := newApp(&out, &out).Run(t.Context(), []string{"nasreach", "agent", "--device", "nas1", "--token", "t", "--expose", "443=127.0.0.1:443", "--cert", t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "--cert needs --api") {
		t.Fatalf("agent --cert without --api: %v, want a refusal naming --api", err)
	}
}

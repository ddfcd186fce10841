package devicecert_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/api/client"
	"github.com/nasreach/nasreach/daemon/daemontest"
	"github.com/nasreach/nasreach/devicecert"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/rs/zerolog"
)

var names = []string{"*.nas1." + daemontest.Zone, "nas1." + daemontest.Zone}

// keeper is a Keeper of nas1's certificate with token, against Pebble
// resolving through td, on clk.
func keeper(t *testing.T, td *daemontest.Daemon, p *testutil.Pebble, token, dir string, clk *testutil.Clock) *devicecert.Keeper {
	t.Helper()
	api, err := client.New(client.Config{Server: td.HTTP, Token: token})
	if err != nil {
		t.Fatal(err)
	}
	k, err := devicecert.New(devicecert.Config{
		Dir: dir, Device: "nas1", API: api, Directory: p.Directory, HTTPClient: p.HTTPClient(t),
		Settle: 10 * time.Millisecond, Now: clk.Now, Logger: zerolog.New(zerolog.NewTestWriter(t)),
	})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// certIn returns the certificate Dir holds, checking that it pairs with its
// key and that the key is private.
func certIn(t *testing.T, dir string) *x509.Certificate {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, devicecert.CertFile), filepath.Join(dir, devicecert.KeyFile))
	if err != nil {
		t.Fatalf("the certificate and key in %s: %v", dir, err)
	}
	for _, f := range []string{devicecert.KeyFile, devicecert.AccountFile} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, mode %v; want 0600", f, err, fi.Mode().Perm())
		}
	}
	if len(pair.Certificate) < 2 {
		t.Errorf("%s holds %d certificates; want the leaf and its chain", devicecert.CertFile, len(pair.Certificate))
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func TestKeeperGetsTheDevicesCertificateAndRenewsAtTwoThirds(t *testing.T) {
	td := daemontest.Start(t)
	tok := td.AddDevice("nas1")
	p := testutil.StartPebble(t, td.DNS)
	clk := testutil.NewClock(time.Now())
	dir := t.TempDir()
	k := keeper(t, td, p, tok, dir, clk)

	due, err := k.Renew(t.Context())
	if err != nil {
		t.Fatalf("first Renew: %v", err)
	}
	first := certIn(t, dir)
	if got := slices.Sorted(slices.Values(first.DNSNames)); !slices.Equal(got, names) {
		t.Fatalf("the certificate names %v, want %v", got, names)
	}
	if want := first.NotBefore.Add(first.NotAfter.Sub(first.NotBefore) * 2 / 3); !due.Equal(want) {
		t.Errorf("renewal due %v, want two-thirds into the lifetime, %v", due, want)
	}
	r := td.Query("tcp", "_acme-challenge.nas1."+daemontest.Zone, dns.TypeTXT)
	if len(r.Answer) != 0 {
		t.Errorf("the challenge values are still published after the order: %v", r.Answer)
	}

	// Before it is due, nothing is asked of the CA.
	clk.Set(due.Add(-time.Minute))
	if again, err := k.Renew(t.Context()); err != nil || !again.Equal(due) {
		t.Fatalf("Renew before due = %v, %v; want %v and no new certificate", again, err, due)
	}
	if c := certIn(t, dir); c.SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Fatal("a certificate not yet due was renewed")
	}
	// From two-thirds on, a new one replaces it, under the same account.
	account, _ := os.ReadFile(filepath.Join(dir, devicecert.AccountFile))
	clk.Set(due)
	if _, err := k.Renew(t.Context()); err != nil {
		t.Fatalf("Renew when due: %v", err)
	}
	if c := certIn(t, dir); c.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Fatal("a certificate due for renewal was kept")
	}
	if now, _ := os.ReadFile(filepath.Join(dir, devicecert.AccountFile)); string(now) != string(account) {
		t.Error("the renewal made a new ACME account")
	}
}

func TestKeeperWithAnotherDevicesTokenGetsNothing(t *testing.T) {
	td := daemontest.Start(t)
	td.AddDevice("nas1")
	other := td.AddDevice("nas2")
	p := testutil.StartPebble(t, td.DNS)
	dir := t.TempDir()
	_, err := keeper(t, td, p, other, dir, testutil.NewClock(time.Now())).Renew(t.Context())
	var apiErr *client.Error
	if !errors.As(err, &apiErr) || apiErr.Status != http.StatusUnauthorized {
		t.Fatalf("Renew with nas2's token for nas1: %v, want the daemon's 401", err)
	}
	if _, err := os.Stat(filepath.Join(dir, devicecert.CertFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a certificate was written: %v", err)
	}
}

func TestRunStopsWhenItsContextEnds(t *testing.T) {
	td := daemontest.Start(t)
	tok := td.AddDevice("nas1")
	p := testutil.StartPebble(t, td.DNS)
	dir := t.TempDir()
	k := keeper(t, td, p, tok, dir, testutil.NewClock(time.Now()))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- k.Run(ctx) }()
	testutil.WaitFor(t, time.Minute, "the first certificate", func() bool {
		_, err := os.Stat(filepath.Join(dir, devicecert.CertFile))
		return err == nil
	})
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Run returned %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}

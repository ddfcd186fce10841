// Package devicecert keeps a device's certificate for its own name current:
// it asks an ACME CA (Let's Encrypt by default) for a certificate for
// <device>.<zone> and *.<device>.<zone>, proves control of the names by
// DNS-01 with challenge values it publishes through the daemon's API, and
// renews at two-thirds of the certificate's lifetime, so that a NAS serves
// HTTPS under its name with no other tool.
package devicecert

import (
	"cmp"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/nasreach/nasreach/api/client"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/acme"
)

// The files in Config.Dir.
const (
	CertFile    = "cert.pem"    // the certificate and its chain, leaf first
	KeyFile     = "key.pem"     // the certificate's private key (0600)
	AccountFile = "account.key" // the ACME account's private key (0600)
)

// Defaults used when the Config leaves a field zero.
const (
	// DefaultDirectory is Let's Encrypt's production directory.
	DefaultDirectory = "https://acme-v02.api.letsencrypt.org/directory"
	// DefaultSettle is how long values are published before the CA is
	// asked to check them: the daemon answers with them at once, and its
	// secondaries follow a NOTIFY well within this.
	DefaultSettle = 2 * time.Second
	// DefaultRetry is how long Run waits after a failed renewal.
	DefaultRetry = time.Hour
	// maxSleep bounds Run's wait between checks, so that a certificate
	// replaced by hand or a clock that jumped is noticed within it.
	maxSleep = 12 * time.Hour
	// cleanupTimeout bounds withdrawing the values after an attempt, even
	// one whose context ended.
	cleanupTimeout = 30 * time.Second
)

// API is what the keeper asks of the daemon: the device's name in the zone,
// and publishing and withdrawing its DNS-01 values. *client.Client, with
// the device's token, is one.
type API interface {
	Device(ctx context.Context, name string) (client.Device, error)
	SetACMEChallenges(ctx context.Context, device string, values ...string) (client.ACMEChallenges, error)
	DeleteACMEChallenges(ctx context.Context, device string, values ...string) error
}

// Config configures New.
type Config struct {
	// Dir holds CertFile, KeyFile and AccountFile; created 0700. Required.
	Dir string
	// Device is the device whose challenge values are published. Required.
	Device string
	// Names are the names the certificate is for; empty means the device's
	// name and its wildcard (nas1.<zone> and *.nas1.<zone>), as the daemon
	// reports its FQDN.
	Names []string
	// API is the daemon's API. Required.
	API API
	// Directory is the CA's ACME directory URL; default DefaultDirectory.
	Directory string
	// Email is the account's contact address, for the CA's expiry notices;
	// optional.
	Email string
	// HTTPClient talks to the CA; nil means http.DefaultClient.
	HTTPClient *http.Client
	// Settle, Retry: see DefaultSettle and DefaultRetry.
	Settle, Retry time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger receives renewals and failures.
	Logger zerolog.Logger
}

// Keeper keeps the certificate in Config.Dir current.
type Keeper struct {
	cfg Config
}

// New checks cfg and creates Dir. It asks the CA nothing.
func New(cfg Config) (*Keeper, error) {
	switch {
	case cfg.Dir == "":
		return nil, errors.New("devicecert: Config.Dir is required")
	case cfg.Device == "":
		return nil, errors.New("devicecert: Config.Device is required")
	case cfg.API == nil:
		return nil, errors.New("devicecert: Config.API is required")
	}
	cfg.Directory = cmp.Or(cfg.Directory, DefaultDirectory)
	cfg.Settle = cmp.Or(cfg.Settle, DefaultSettle)
	cfg.Retry = cmp.Or(cfg.Retry, DefaultRetry)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("certificate directory %s: %w", cfg.Dir, err)
	}
	return &Keeper{cfg: cfg}, nil
}

// Run renews the certificate whenever it is due until ctx ends; a failed
// renewal is tried again after Config.Retry. It returns ctx's error.
func (k *Keeper) Run(ctx context.Context) error {
	for {
		due, err := k.Renew(ctx)
		wait := min(max(time.Until(due), 0), maxSleep)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			k.cfg.Logger.Error().Err(err).Dur("retry_in", k.cfg.Retry).Msg("certificate renewal failed")
			wait = k.cfg.Retry
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// Renew obtains a certificate unless the one in Dir is for Names and short
// of two-thirds of its lifetime, and returns when the certificate it leaves
// is due for renewal.
func (k *Keeper) Renew(ctx context.Context) (due time.Time, err error) {
	names := k.cfg.Names
	if len(names) == 0 {
		d, err := k.cfg.API.Device(ctx, k.cfg.Device)
		if err != nil {
			return time.Time{}, fmt.Errorf("learn the name of %s from the daemon: %w", k.cfg.Device, err)
		}
		names = []string{d.FQDN, "*." + d.FQDN}
	}
	if cert, err := current(k.cfg.Dir, names); err == nil {
		if due := renewalTime(cert); k.cfg.Now().Before(due) {
			return due, nil
		}
	}
	cert, err := k.obtain(ctx, names)
	if err != nil {
		return time.Time{}, err
	}
	due = renewalTime(cert)
	k.cfg.Logger.Info().Strs("names", cert.DNSNames).Time("not_after", cert.NotAfter).Time("renew_at", due).
		Str("issuer", cert.Issuer.CommonName).Msg("certificate obtained")
	return due, nil
}

// renewalTime is two-thirds into cert's lifetime.
func renewalTime(cert *x509.Certificate) time.Time {
	return cert.NotBefore.Add(cert.NotAfter.Sub(cert.NotBefore) * 2 / 3)
}

// current returns the certificate in dir if it pairs with its key and is for
// exactly names.
func current(dir string, names []string) (*x509.Certificate, error) {
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile))
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, err
	}
	if !slices.Equal(slices.Sorted(slices.Values(cert.DNSNames)), slices.Sorted(slices.Values(names))) {
		return nil, fmt.Errorf("the certificate is for %v, not %v", cert.DNSNames, names)
	}
	return cert, nil
}

// obtain runs one ACME order for names and writes the certificate and its
// key into Dir.
func (k *Keeper) obtain(ctx context.Context, names []string) (*x509.Certificate, error) {
	accountKey, err := k.accountKey()
	if err != nil {
		return nil, err
	}
	c := &acme.Client{Key: accountKey, DirectoryURL: k.cfg.Directory, HTTPClient: k.cfg.HTTPClient, UserAgent: "nasreach-agent"}
	acct := &acme.Account{}
	if k.cfg.Email != "" {
		acct.Contact = []string{"mailto:" + k.cfg.Email}
	}
	if _, err := c.Register(ctx, acct, acme.AcceptTOS); err != nil && !errors.Is(err, acme.ErrAccountAlreadyExists) {
		return nil, fmt.Errorf("register with the CA at %s: %w", k.cfg.Directory, err)
	}
	order, err := c.AuthorizeOrder(ctx, acme.DomainIDs(names...))
	if err != nil {
		return nil, fmt.Errorf("order a certificate for %v: %w", names, err)
	}
	if err := k.authorize(ctx, c, order); err != nil {
		return nil, err
	}
	if order, err = c.WaitOrder(ctx, order.URI); err != nil {
		return nil, fmt.Errorf("the CA did not make the order for %v ready: %w", names, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: names}, key)
	if err != nil {
		return nil, err
	}
	chain, _, err := c.CreateOrderCert(ctx, order.FinalizeURL, csr, true)
	if err != nil {
		return nil, fmt.Errorf("the CA did not issue the certificate for %v: %w", names, err)
	}
	cert, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return nil, fmt.Errorf("the CA issued a certificate that does not parse: %w", err)
	}
	if err := k.write(key, chain); err != nil {
		return nil, err
	}
	return cert, nil
}

// authorize proves control of the order's names: it publishes the DNS-01
// value of every authorization still pending at once (a name and its
// wildcard share one TXT name), lets them settle, asks the CA to check each
// and waits for its verdict, and withdraws the values whatever happened.
func (k *Keeper) authorize(ctx context.Context, c *acme.Client, order *acme.Order) error {
	var values, pending []string
	var challenges []*acme.Challenge
	for _, u := range order.AuthzURLs {
		z, err := c.GetAuthorization(ctx, u)
		if err != nil {
			return fmt.Errorf("read an authorization of the order: %w", err)
		}
		if z.Status == acme.StatusValid {
			continue
		}
		i := slices.IndexFunc(z.Challenges, func(ch *acme.Challenge) bool { return ch.Type == "dns-01" })
		if i < 0 {
			return fmt.Errorf("the CA offers no dns-01 challenge for %s", z.Identifier.Value)
		}
		v, err := c.DNS01ChallengeRecord(z.Challenges[i].Token)
		if err != nil {
			return err
		}
		values, pending, challenges = append(values, v), append(pending, u), append(challenges, z.Challenges[i])
	}
	if len(values) == 0 {
		return nil
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		if err := k.cfg.API.DeleteACMEChallenges(cctx, k.cfg.Device, values...); err != nil {
			k.cfg.Logger.Warn().Err(err).Msg("could not withdraw the acme challenge values; they expire within the hour")
		}
	}()
	if _, err := k.cfg.API.SetACMEChallenges(ctx, k.cfg.Device, values...); err != nil {
		return fmt.Errorf("publish the acme challenge of %s: %w", k.cfg.Device, err)
	}
	t := time.NewTimer(k.cfg.Settle)
	select {
	case <-ctx.Done():
		t.Stop()
		return ctx.Err()
	case <-t.C:
	}
	for _, ch := range challenges {
		if _, err := c.Accept(ctx, ch); err != nil {
			return fmt.Errorf("ask the CA to check the challenge: %w", err)
		}
	}
	for _, u := range pending {
		if _, err := c.WaitAuthorization(ctx, u); err != nil {
			return fmt.Errorf("the CA did not accept the challenge: %w", err)
		}
	}
	return nil
}

// accountKey reads the ACME account key from Dir, or makes one and keeps it
// there: the same key is the same account at the CA.
func (k *Keeper) accountKey() (crypto.Signer, error) {
	path := filepath.Join(k.cfg.Dir, AccountFile)
	if b, err := os.ReadFile(path); err == nil {
		block, _ := pem.Decode(b)
		if block == nil {
			return nil, fmt.Errorf("account key %s: not PEM", path)
		}
		key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("account key %s: %w", path, err)
		}
		signer, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("account key %s: not a signing key", path)
		}
		return signer, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("account key: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	if err := writeKey(path, key); err != nil {
		return nil, err
	}
	return key, nil
}

// write replaces KeyFile and CertFile, each by a rename so that a reader
// never sees half a file. The key goes first: a server that reads both in
// between finds a pair that does not match and keeps what it has.
func (k *Keeper) write(key *ecdsa.PrivateKey, chain [][]byte) error {
	if err := writeKey(filepath.Join(k.cfg.Dir, KeyFile), key); err != nil {
		return err
	}
	var certs []byte
	for _, der := range chain {
		certs = append(certs, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	return writeFile(filepath.Join(k.cfg.Dir, CertFile), certs, 0o644)
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return writeFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

// writeFile writes data to path through a temporary file and a rename.
func writeFile(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".new-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Package certfile serves a TLS certificate from PEM files and picks up a
// renewal (certbot, acme.sh, lego) without a restart: both relays, TURN over
// TLS and Link, serve the operator's --tls-cert through one Watcher.
package certfile

import (
	"crypto/tls"
	"fmt"
	"os"
	"sync"
	"time"
)

// DefaultCheckEvery is how often a Watcher looks at the certificate file's
// modification time, at most, when handshakes come in.
const DefaultCheckEvery = 10 * time.Second

// Watcher serves the key pair in CertFile and KeyFile and re-reads them when
// the certificate file's modification time changes, checking at most every
// CheckEvery and only when a handshake asks. A pair that does not load (a
// renewal caught half-written) keeps the old one in service; the next check
// tries again.
type Watcher struct {
	certFile, keyFile string
	every             time.Duration
	now               func() time.Time

	mu      sync.Mutex
	cert    *tls.Certificate
	mtime   time.Time
	checked time.Time
}

// New loads the pair once; an error names the files. checkEvery zero means
// DefaultCheckEvery.
func New(certFile, keyFile string, checkEvery time.Duration) (*Watcher, error) {
	if checkEvery <= 0 {
		checkEvery = DefaultCheckEvery
	}
	w := &Watcher{certFile: certFile, keyFile: keyFile, every: checkEvery, now: time.Now}
	if err := w.load(); err != nil {
		return nil, err
	}
	w.checked = w.now()
	return w, nil
}

func (w *Watcher) load() error {
	fi, err := os.Stat(w.certFile)
	if err != nil {
		return fmt.Errorf("tls certificate: %w", err)
	}
	c, err := tls.LoadX509KeyPair(w.certFile, w.keyFile)
	if err != nil {
		return fmt.Errorf("load TLS key pair %s, %s: %w", w.certFile, w.keyFile, err)
	}
	w.cert, w.mtime = &c, fi.ModTime()
	return nil
}

// GetCertificate is tls.Config.GetCertificate: the current pair, re-read
// first if the file changed since the last check.
func (w *Watcher) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return w.Current(), nil
}

// Current returns the pair in service, re-read first if the file changed.
func (w *Watcher) Current() *tls.Certificate {
	w.mu.Lock()
	defer w.mu.Unlock()
	if now := w.now(); now.Sub(w.checked) >= w.every {
		w.checked = now
		if fi, err := os.Stat(w.certFile); err == nil && !fi.ModTime().Equal(w.mtime) {
			w.load() //nolint:errcheck // on error the old pair stays; the next check tries again
		}
	}
	return w.cert
}

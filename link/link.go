// Package link is the client side of Link, nasreach's QUIC rendezvous relay:
// the wire format both ends share (wire.go), the NAS agent that holds one
// connection to the relay and serves its exposed ports (Agent), the Dialer
// that programs and "nasreach connect" use to reach a device's port, and the
// end-to-end TLS with pinned device keys that the relay cannot break.
package link

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nasreach/nasreach/internal/workgroup"
)

// Errors a Dial or an agent login returns; each matches a Result status
// (errors.Is works on the *RefusedError Dial returns).
var (
	ErrBadRequest     = errors.New("the relay did not understand the request")
	ErrBadCredentials = errors.New("the relay refused the device name or token")
	ErrUnknownDevice  = errors.New("no such device on this relay")
	ErrLinkDisabled   = errors.New("the device has Link switched off")
	ErrOffline        = errors.New("the device's agent is not connected to the relay")
	ErrAccessDenied   = errors.New("the device requires a valid access code")
	ErrPortNotExposed = errors.New("the device does not expose that port")
	ErrDialFailed     = errors.New("the device could not reach its local service")
	ErrRateLimited    = errors.New("too many new connections from this address; slow down")
	ErrTooManyStreams = errors.New("the device has too many open sessions")
	ErrTooManyAgents  = errors.New("the relay holds its maximum number of agents")
	ErrUnavailable    = errors.New("the relay is unavailable")
	// ErrNoDirect means the relay or the device does not take direct paths.
	ErrNoDirect = errors.New("direct paths are off for this device or relay")
	// ErrKeyChanged means the device presented a key other than the pinned one.
	ErrKeyChanged = errors.New("the device's key does not match the pinned fingerprint")
)

var statusErr = map[Status]error{
	StatusBadRequest: ErrBadRequest, StatusBadCredentials: ErrBadCredentials, StatusUnknownDevice: ErrUnknownDevice,
	StatusLinkDisabled: ErrLinkDisabled, StatusOffline: ErrOffline, StatusAccessDenied: ErrAccessDenied,
	StatusPortNotExposed: ErrPortNotExposed, StatusDialFailed: ErrDialFailed, StatusRateLimited: ErrRateLimited,
	StatusTooManyStreams: ErrTooManyStreams, StatusTooManyAgents: ErrTooManyAgents, StatusUnavailable: ErrUnavailable,
	StatusNoDirect: ErrNoDirect, StatusNoSession: ErrNoSession,
}

// RefusedError is a Result other than StatusOK.
type RefusedError struct {
	Status  Status
	Message string
}

// Error returns the relay's or agent's message, or the status in words.
func (e *RefusedError) Error() string {
	if e.Message != "" {
		return "link refused: " + e.Message
	}
	return "link refused: " + e.Status.String()
}

// Unwrap returns the sentinel error of the status (ErrOffline, ...).
func (e *RefusedError) Unwrap() error {
	if err, ok := statusErr[e.Status]; ok {
		return err
	}
	return ErrUnavailable
}

// KeyFileName is the device key's file in the agent's state directory.
const KeyFileName = "device.key"

// LoadOrCreateKey reads the PEM (PKCS #8) private key at path, or generates an
// Ed25519 key and writes it there with mode 0600 (its directory 0700).
func LoadOrCreateKey(path string) (key crypto.Signer, created bool, err error) {
	b, err := os.ReadFile(path)
	if err == nil {
		blk, _ := pem.Decode(b)
		if blk == nil {
			return nil, false, fmt.Errorf("key file %s holds no PEM block; move it away to generate a new key", path)
		}
		k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
		if err != nil {
			return nil, false, fmt.Errorf("key file %s: %w", path, err)
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, false, fmt.Errorf("key file %s: a %T cannot sign", path, k)
		}
		return s, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, false, fmt.Errorf("read key %s: %w", path, err)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, false, fmt.Errorf("generate key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, false, fmt.Errorf("encode key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, false, fmt.Errorf("create key directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, false, fmt.Errorf("write key %s: %w", path, err)
	}
	if err := pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der}); err != nil {
		f.Close()
		return nil, false, fmt.Errorf("write key %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return nil, false, fmt.Errorf("write key %s: %w", path, err)
	}
	return priv, true, nil
}

// SelfSignedCert returns a TLS certificate for key with the given DNS name.
// Peers pin the key (Fingerprint), never the certificate, so it can be
// regenerated at every start.
func SelfSignedCert(key crypto.Signer, name string) (tls.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 63))
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(20, 0, 0),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("create certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// Fingerprint returns "sha256:" and the hex SHA-256 of a DER
// SubjectPublicKeyInfo: the form in which keys are pinned and printed.
func Fingerprint(spki []byte) string {
	sum := sha256.Sum256(spki)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// KeyFingerprint returns the Fingerprint of a public key.
func KeyFingerprint(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("encode public key: %w", err)
	}
	return Fingerprint(der), nil
}

// ParseFingerprint normalizes a fingerprint as people paste it: with or
// without "sha256:", upper or lower case, with or without colons.
func ParseFingerprint(s string) (string, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	t = strings.TrimPrefix(t, "sha256:")
	t = strings.ReplaceAll(t, ":", "")
	if b, err := hex.DecodeString(t); err != nil || len(b) != sha256.Size {
		return "", fmt.Errorf("fingerprint %q: want sha256: and 64 hex digits", s)
	}
	return "sha256:" + t, nil
}

// pinnedVerifier returns a tls.Config.VerifyConnection that accepts exactly
// the leaf whose key has fingerprint want. TLS 1.3's CertificateVerify has
// already proved that the peer holds that key.
func pinnedVerifier(want string, what string) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return fmt.Errorf("%s presented no certificate", what)
		}
		if got := Fingerprint(cs.PeerCertificates[0].RawSubjectPublicKeyInfo); got != want {
			return fmt.Errorf("%s key %s does not match the pinned %s", what, got, want)
		}
		return nil
	}
}

// relayTLS is the client TLS config for the QUIC connection to the relay:
// pinned when fingerprint is set, else verified against the system roots.
func relayTLS(server, fingerprint string) (*tls.Config, error) {
	host, _, err := net.SplitHostPort(server)
	if err != nil {
		return nil, fmt.Errorf("relay address %q: want HOST:PORT: %w", server, err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{ALPN}, ServerName: host}
	if fingerprint != "" {
		fp, err := ParseFingerprint(fingerprint)
		if err != nil {
			return nil, fmt.Errorf("relay %w", err)
		}
		cfg.InsecureSkipVerify = true // replaced by the pin below
		cfg.VerifyConnection = pinnedVerifier(fp, "relay "+server)
	}
	return cfg, nil
}

// streamConn is a stream of a carrier as a net.Conn whose CloseWrite
// sends FIN.
type streamConn struct {
	Stream
	local, remote net.Addr
	transport     string
}

// addrs is what streamConn takes from its connection: a Carrier, or a
// direct path's *quic.Conn.
type addrs interface {
	LocalAddr() net.Addr
	RemoteAddr() net.Addr
}

func newStreamConn(s Stream, c addrs) *streamConn {
	sc := &streamConn{Stream: s, local: c.LocalAddr(), remote: c.RemoteAddr(), transport: TransportQUIC}
	if cr, ok := c.(Carrier); ok {
		sc.transport = cr.Transport()
	}
	return sc
}

func (c *streamConn) LocalAddr() net.Addr  { return c.local }
func (c *streamConn) RemoteAddr() net.Addr { return c.remote }
func (c *streamConn) CloseWrite() error    { return c.Stream.Close() }

// Close ends both directions: FIN on the write side, STOP_SENDING on the read side.
func (c *streamConn) Close() error {
	c.Stream.CancelRead(StreamAborted)
	return c.Stream.Close()
}

// e2eConn is the end-to-end TLS session; its CloseWrite sends close_notify
// and then FIN, so that the far end sees EOF (half-close).
type e2eConn struct {
	*tls.Conn
	sc   *streamConn // a plain session's stream; nil for a resumable one
	s    *session    // a resumable session; nil for a plain one
	path Path        // a plain session's
}

// peerKey is the fingerprint of the key the device proved it holds.
func (c *e2eConn) peerKey() string {
	cs := c.Conn.ConnectionState()
	if len(cs.PeerCertificates) == 0 {
		return ""
	}
	return Fingerprint(cs.PeerCertificates[0].RawSubjectPublicKeyInfo)
}

// Path says which way a connection from Dial travels.
type Path struct {
	// Direct is true on a direct (hole-punched) path to the device, false
	// through the relay.
	Direct bool
	// Local and Remote are the kinds of the candidate pair of a direct path:
	// this end's and the device's.
	Local, Remote CandidateKind
}

// String returns "direct" or "relay", as connect logs it (path=...).
func (p Path) String() string {
	if p.Direct {
		return "direct"
	}
	return "relay"
}

// PathOf returns the Path of a connection from Dialer.Dial, the one it
// takes now (a resumed session may have moved); any other connection
// counts as relayed.
func PathOf(c net.Conn) Path {
	if ec, ok := c.(*e2eConn); ok {
		if ec.s != nil {
			return ec.s.currentPath()
		}
		return ec.path
	}
	return Path{}
}

// CloseWrite half-closes the session.
func (c *e2eConn) CloseWrite() error {
	err := c.Conn.CloseWrite()
	if c.s != nil {
		c.s.CloseWrite()
	} else {
		c.sc.CloseWrite()
	}
	return err
}

type closeWriter interface{ CloseWrite() error }

// splice copies a→b and b→a until both directions end; a is the local TCP
// connection, whose writes go through a pipe (pipe.go). An EOF is passed on
// as a half-close; an error closes both connections. It returns the bytes
// copied each way.
func splice(a, b net.Conn) (ab, ba int64) {
	type res struct {
		n   int64
		err error
	}
	pa := newPipedConn(a)
	copyHalf := func(dst, src net.Conn, out chan<- res) {
		n, err := io.Copy(dst, src)
		if err == nil {
			if cw, ok := dst.(closeWriter); ok {
				err = cw.CloseWrite()
			} else {
				err = dst.Close()
			}
		}
		if err != nil {
			a.Close()
			b.Close()
		}
		out <- res{n, err}
	}
	c1, c2 := make(chan res, 1), make(chan res, 1)
	go copyHalf(b, a, c1)
	copyHalf(pa, b, c2)
	r1, r2 := <-c1, <-c2
	pa.Close() // once what b sent has been written to a
	b.Close()
	pa.wait() // callers close a when splice returns
	return r1.n, r2.n
}

// waitGroup is workgroup.Group under the name agent.go uses: the agent's
// goroutines, refused once Close has begun so that it can wait for them all.
type waitGroup = workgroup.Group

package dnsserver

import (
	"crypto/hmac"
	"crypto/sha1" //nolint:gosec // hmac-sha1 is still a TSIG algorithm (RFC 8945 §6), for old secondaries
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// TSIG (RFC 8945) authenticates zone transfers and NOTIFYs with a shared
// secret. The server looks keys up by name through a KeySource, so that
// keys can come from more than one place: the configuration today, and the
// store (a device's own key) later; Keys asks several sources in turn. What
// a key may do is a property of the key (Transfer), decided where the key
// comes from, not by the source that happens to find it first.

// Key is one TSIG key.
type Key struct {
	// Name is the key's name, a domain name (lower case, with the final dot).
	Name string
	// Algorithm is one of the dns.Hmac* names, e.g. dns.HmacSHA256.
	Algorithm string
	// Secret is the shared secret, decoded.
	Secret []byte
	// Transfer lets requests signed with this key transfer the zone from
	// any address.
	Transfer bool
}

// String names the key without its secret, for logs.
func (k Key) String() string {
	return strings.TrimSuffix(k.Name, ".") + " (" + strings.TrimSuffix(k.Algorithm, ".") + ")"
}

// KeySource finds a TSIG key by its name (lower case, with the final dot).
// It is called for every signed message and must be safe for concurrent use.
type KeySource interface {
	Key(name string) (Key, bool)
}

// Keys is a KeySource that asks each of its sources in order; the first
// that knows the name answers. A nil entry is skipped.
type Keys []KeySource

// Key implements KeySource.
func (ks Keys) Key(name string) (Key, bool) {
	for _, s := range ks {
		if s == nil {
			continue
		}
		if k, ok := s.Key(name); ok {
			return k, true
		}
	}
	return Key{}, false
}

// StaticKeys is a fixed set of keys, by name: those of the configuration.
type StaticKeys map[string]Key

// NewStaticKeys indexes keys by name; a name given twice is an error.
func NewStaticKeys(keys []Key) (StaticKeys, error) {
	out := StaticKeys{}
	for _, k := range keys {
		name := dns.CanonicalName(k.Name)
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("TSIG key %s is given twice", strings.TrimSuffix(name, "."))
		}
		k.Name = name
		out[name] = k
	}
	return out, nil
}

// Key implements KeySource.
func (s StaticKeys) Key(name string) (Key, bool) {
	k, ok := s[dns.CanonicalName(name)]
	return k, ok
}

// tsigAlgorithms are the HMACs a key may use, by the names the
// configuration accepts. hmac-sha256 is the one RFC 8945 requires.
var tsigAlgorithms = map[string]struct {
	name string
	hash func() hash.Hash
}{
	"hmac-sha1":   {dns.HmacSHA1, sha1.New},
	"hmac-sha224": {dns.HmacSHA224, sha256.New224},
	"hmac-sha256": {dns.HmacSHA256, sha256.New},
	"hmac-sha384": {dns.HmacSHA384, sha512.New384},
	"hmac-sha512": {dns.HmacSHA512, sha512.New},
}

// minSecretLen is the shortest secret accepted: RFC 8945 §6 asks for at
// least half the hash's length; 16 bytes is that for SHA-256's 32.
const minSecretLen = 16

// ParseKey reads a key as NAME:ALGORITHM:SECRET, or in the order kdig -y and
// dig -y take it, ALGORITHM:NAME:SECRET, with the secret in base64 (as
// keymgr, tsig-keygen and nsd-control-setup print it). Transfer is set: a
// configured key is a secondary's.
func ParseKey(s string) (Key, error) {
	parts := strings.Split(strings.TrimSpace(s), ":")
	if len(parts) != 3 {
		return Key{}, errors.New("want NAME:hmac-sha256:BASE64SECRET")
	}
	name, alg, secret := parts[0], strings.ToLower(parts[1]), parts[2]
	if _, ok := tsigAlgorithms[strings.ToLower(parts[0])]; ok {
		alg, name = strings.ToLower(parts[0]), parts[1]
	}
	a, ok := tsigAlgorithms[strings.TrimSuffix(alg, ".")]
	if !ok && strings.HasPrefix(alg, "hmac") {
		return Key{}, fmt.Errorf("unknown algorithm %q: want hmac-sha256 (or hmac-sha1, -sha224, -sha384, -sha512)", alg)
	}
	if !ok { // not named: fields in the wrong order would put the secret here
		return Key{}, errors.New("no algorithm: want NAME:hmac-sha256:BASE64SECRET")
	}
	fqdn := dns.CanonicalName(name)
	if name == "" || !isDomainName(fqdn) || fqdn == "." {
		return Key{}, fmt.Errorf("key name %q is not a domain name", name)
	}
	raw, err := base64.StdEncoding.DecodeString(secret)
	if err != nil {
		return Key{}, fmt.Errorf("key %s: the secret is not base64", name)
	}
	if len(raw) < minSecretLen {
		return Key{}, fmt.Errorf("key %s: the secret is %d bytes, want at least %d (keymgr -t or tsig-keygen make one)", name, len(raw), minSecretLen)
	}
	return Key{Name: fqdn, Algorithm: a.name, Secret: raw, Transfer: true}, nil
}

// tsigProvider signs and verifies with the keys of a KeySource; it is the
// dns.TsigProvider of both transports and of the NOTIFY client. The errors
// are miekg/dns's, which the caller maps to TSIG error codes (tsigRcode).
type tsigProvider struct{ keys KeySource }

// Generate implements dns.TsigProvider.
func (p tsigProvider) Generate(msg []byte, t *dns.TSIG) ([]byte, error) {
	if p.keys == nil {
		return nil, dns.ErrSecret
	}
	k, ok := p.keys.Key(t.Hdr.Name)
	if !ok {
		return nil, dns.ErrSecret
	}
	if dns.CanonicalName(t.Algorithm) != k.Algorithm {
		return nil, dns.ErrKeyAlg
	}
	var newHash func() hash.Hash
	for _, a := range tsigAlgorithms {
		if a.name == k.Algorithm {
			newHash = a.hash
		}
	}
	if newHash == nil {
		return nil, dns.ErrKeyAlg
	}
	h := hmac.New(newHash, k.Secret)
	h.Write(msg)
	return h.Sum(nil), nil
}

// Verify implements dns.TsigProvider.
func (p tsigProvider) Verify(msg []byte, t *dns.TSIG) error {
	want, err := p.Generate(msg, t)
	if err != nil {
		return err
	}
	got, err := hex.DecodeString(t.MAC)
	if err != nil || !hmac.Equal(got, want) {
		return dns.ErrSig
	}
	return nil
}

// tsigRcode is the TSIG error (RFC 8945 §5.2) for a failed verification:
// an unknown key or algorithm is BADKEY, a stale time BADTIME, anything
// else (a wrong MAC) BADSIG.
func tsigRcode(err error) uint16 {
	switch {
	case errors.Is(err, dns.ErrSecret), errors.Is(err, dns.ErrKeyAlg):
		return dns.RcodeBadKey
	case errors.Is(err, dns.ErrTime):
		return dns.RcodeBadTime
	}
	return dns.RcodeBadSig
}

// tsigFudge is the time window of the signatures we make (RFC 8945 §10:
// 300 s).
const tsigFudge = 300

// sign adds a TSIG RR for the key that signed the request r; the
// ResponseWriter computes the MAC when it writes m. The names are made
// canonical: a request may carry an empty algorithm name, which would not
// pack back into a readable answer.
func sign(m *dns.Msg, r *dns.TSIG) {
	m.SetTsig(dns.CanonicalName(r.Hdr.Name), dns.CanonicalName(r.Algorithm), tsigFudge, time.Now().Unix())
}

// writeTSIGError answers a request whose signature did not verify: NOTAUTH
// with the TSIG error, unsigned for BADKEY and BADSIG (the writer leaves
// the MAC out), signed for BADTIME with our time in Other Data (RFC 8945
// §5.2.3).
func writeTSIGError(w dns.ResponseWriter, r *dns.Msg, verr error) int {
	t := r.IsTsig()
	m := new(dns.Msg)
	m.SetRcode(r, dns.RcodeNotAuth)
	m.RecursionAvailable = false
	m.Question = r.Question
	sign(m, t)
	rr := m.Extra[len(m.Extra)-1].(*dns.TSIG)
	rr.Error = tsigRcode(verr)
	rr.OrigId = r.Id
	if rr.Error == dns.RcodeBadTime {
		rr.TimeSigned = t.TimeSigned // the MAC covers the client's time …
		rr.OtherLen = 6              // … and Other Data ours
		rr.OtherData = fmt.Sprintf("%012x", time.Now().Unix())
	}
	_ = w.WriteMsg(m)
	return int(rr.Error)
}

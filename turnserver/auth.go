package turnserver

import (
	"crypto/hmac"
	"crypto/md5" //nolint:gosec // RFC 8489 long-term credentials define the key as MD5
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nasreach/nasreach/store"
)

// Credential kinds, as reported in AllocationEvent.Credential.
const (
	CredentialStatic = "static" // a --turn-user name:password
	CredentialREST   = "rest"   // TURN REST API ephemeral credentials (--turn-secret)
	CredentialDevice = "device" // a registered device: name and token hash
)

// maxUsernameLen is the RFC 8489 §14.3 bound on USERNAME.
const maxUsernameLen = 513

// Devices is what the relay needs from the device table: read one device
// and hear about committed changes. *store.Store implements it.
type Devices interface {
	Get(name string) (store.Device, error)
	OnChange(func(store.Change))
}

// credentials turns a USERNAME into the long-term key (RFC 8489 §9.2.2:
// MD5(username ":" realm ":" password)) and a user ID that names the
// allocation's owner. The user ID is "<kind>:<name>", and for devices
// "device:<name>/<token hash prefix>" so that a new token revokes allocations
// made with the old one.
type credentials struct {
	realm   string
	static  atomic.Pointer[map[string][]byte] // username -> key; replaced by TURN.SetUsers
	secret  []byte
	devices Devices
	now     func() time.Time
}

// DevicePassword is the TURN password of a device: the lower-case hex SHA-256
// of its token, which is what the store keeps (store.HashToken). Long-term
// credentials need the server to know the password, and the token itself is
// never stored; the agent computes this from its token.
func DevicePassword(token string) string { return store.HashToken(token) }

// RESTPassword is the TURN REST API password for username under secret:
// base64(HMAC-SHA1(secret, username)), as coturn's use-auth-secret expects.
func RESTPassword(secret, username string) string {
	m := hmac.New(sha1.New, []byte(secret))
	m.Write([]byte(username))
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// RESTUsername is the TURN REST API username for name valid until expiry.
func RESTUsername(expiry time.Time, name string) string {
	u := strconv.FormatInt(expiry.Unix(), 10)
	if name != "" {
		u += ":" + name
	}
	return u
}

func longTermKey(username, realm, password string) []byte {
	h := md5.Sum([]byte(username + ":" + realm + ":" + password)) //nolint:gosec // mandated by RFC 8489
	return h[:]
}

// parseStaticUsers reads "name:password" pairs.
func parseStaticUsers(pairs []string, realm string) (map[string][]byte, error) {
	out := map[string][]byte{}
	for _, p := range pairs {
		name, pass, ok := strings.Cut(p, ":")
		if !ok || name == "" || pass == "" {
			return nil, fmt.Errorf("turn user %q: want name:password", redactPassword(p))
		}
		if len(name) > maxUsernameLen {
			return nil, fmt.Errorf("turn user %q: name longer than %d bytes", name, maxUsernameLen)
		}
		out[name] = longTermKey(name, realm, pass)
	}
	return out, nil
}

func redactPassword(p string) string {
	if name, _, ok := strings.Cut(p, ":"); ok {
		return name + ":…"
	}
	return p
}

// errBadCredentials is what every credential refusal wraps: the client gets
// the same 401 for each, so that nothing tells it an unknown user from a
// wrong password; the operator's log tells them apart.
var errBadCredentials = errors.New("bad credentials")

// Credential refusals, as the log names them.
var (
	errWrongRealm    = fmt.Errorf("%w: wrong realm", errBadCredentials)
	errUnknownUser   = fmt.Errorf("%w: unknown user", errBadCredentials)
	errExpired       = fmt.Errorf("%w: expired REST credentials", errBadCredentials)
	errWrongPassword = fmt.Errorf("%w: wrong password", errBadCredentials)
)

// authDetail is the log's word for a credential refusal.
func authDetail(err error) string {
	for _, e := range []error{errWrongRealm, errUnknownUser, errExpired, errWrongPassword} {
		if errors.Is(err, e) {
			return strings.TrimPrefix(e.Error(), errBadCredentials.Error()+": ")
		}
	}
	return "bad credentials"
}

// lookup returns the key and user ID for username in realm. Static users come
// first, then REST credentials (when a secret is set and the username starts
// with a Unix time), then devices.
func (c *credentials) lookup(username, realm string) (userID string, key []byte, err error) {
	if realm != c.realm {
		return "", nil, errWrongRealm
	}
	if username == "" || len(username) > maxUsernameLen {
		return "", nil, errUnknownUser
	}
	if k, ok := (*c.static.Load())[username]; ok {
		return CredentialStatic + ":" + username, k, nil
	}
	if len(c.secret) > 0 {
		ts, name, _ := strings.Cut(username, ":")
		if exp, perr := strconv.ParseInt(ts, 10, 64); perr == nil {
			if c.now().Unix() > exp {
				return "", nil, errExpired // 401 like any bad credential
			}
			if name == "" {
				name = ts
			}
			pass := RESTPassword(string(c.secret), username)
			return CredentialREST + ":" + name, longTermKey(username, realm, pass), nil
		}
	}
	if c.devices != nil {
		d, gerr := c.devices.Get(username)
		if gerr != nil || !d.Link || d.TokenSHA256 == "" {
			return "", nil, errUnknownUser // a device with Link off has no TURN credentials
		}
		return deviceUserID(d), longTermKey(username, realm, d.TokenSHA256), nil
	}
	return "", nil, errUnknownUser
}

func deviceUserID(d store.Device) string {
	h := d.TokenSHA256
	if len(h) > 12 {
		h = h[:12]
	}
	return CredentialDevice + ":" + d.Name + "/" + h
}

// splitUserID returns the credential kind and the name of a user ID.
func splitUserID(id string) (kind, name string) {
	kind, name, _ = strings.Cut(id, ":")
	if kind == CredentialDevice {
		name, _, _ = strings.Cut(name, "/")
	}
	return kind, name
}

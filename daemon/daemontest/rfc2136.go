package daemontest

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/miekg/dns"
)

// TSIGKey is a device's TSIG key as POST /v1/devices/{name}/tsig issues it.
type TSIGKey struct {
	Name, Algorithm, Secret string
}

// IssueTSIGKey issues device name's TSIG key with token (the device's or
// the admin's) and returns it.
func (td *Daemon) IssueTSIGKey(name, token string) TSIGKey {
	td.T.Helper()
	code, body := td.Do(http.MethodPost, "/v1/devices/"+name+"/tsig", token, nil)
	if code != http.StatusCreated {
		td.T.Fatalf("issue the TSIG key of %s: HTTP %d %s", name, code, body)
	}
	var k TSIGKey
	if err := json.Unmarshal(body, &k); err != nil || k.Secret == "" {
		td.T.Fatalf("issue the TSIG key of %s: %s (%v)", name, body, err)
	}
	return k
}

// Update sends the dynamic update m (RFC 2136) over net ("udp" or "tcp"),
// signed with k unless k is the zero TSIGKey, and returns the answer; err
// is the client's check of the answer's signature.
func (td *Daemon) Update(net string, k TSIGKey, m *dns.Msg) (*dns.Msg, error) {
	td.T.Helper()
	c := &dns.Client{Net: net, Timeout: 5 * time.Second}
	if k.Name != "" {
		name := dns.CanonicalName(k.Name)
		c.TsigSecret = map[string]string{name: k.Secret}
		m.SetTsig(name, dns.HmacSHA256, 300, time.Now().Unix())
	}
	r, _, err := c.Exchange(m, td.DNS)
	if r == nil {
		td.T.Fatalf("update over %s: no answer: %v", net, err)
	}
	return r, err
}

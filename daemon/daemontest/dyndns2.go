package daemontest

import (
	"context"
	"io"
	"net/http"
	"net/url"
)

// FQDN is a device's name in the test zone.
func FQDN(device string) string { return device + "." + Zone }

// DynDNS2Update sends one dyndns2 update the way ddclient does (GET, Basic
// auth) to the API at base and returns the HTTP status and the reply text.
// It is safe to call from several goroutines.
func DynDNS2Update(ctx context.Context, c *http.Client, base, user, token, hostname, myip string) (int, string, error) {
	q := url.Values{"hostname": {hostname}}
	if myip != "" {
		q.Set("myip", myip)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/nic/update?"+q.Encode(), nil)
	if err != nil {
		return 0, "", err
	}
	req.SetBasicAuth(user, token)
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// DynDNS2 sends a dyndns2 update from the test goroutine and fails the test
// unless the reply is HTTP 200 with want as its text.
func (td *Daemon) DynDNS2(user, token, hostname, myip, want string) {
	td.T.Helper()
	code, body, err := DynDNS2Update(context.Background(), http.DefaultClient, td.HTTP, user, token, hostname, myip)
	if err != nil {
		td.T.Fatalf("dyndns2 update %s myip=%s: %v", hostname, myip, err)
	}
	if code != http.StatusOK || body != want+"\n" {
		td.T.Fatalf("dyndns2 update %s myip=%s: HTTP %d %q, want HTTP 200 %q", hostname, myip, code, body, want+"\n")
	}
}

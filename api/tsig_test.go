package api

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

func TestTSIGKeyIsShownOnceRotatesAndIsRevoked(t *testing.T) {
	s := startServer(t, nil)
	tok := s.device("nas1")
	other := s.device("nas2")
	issue := func(bearer string) (map[string]string, resp) {
		t.Helper()
		r := s.do(req{method: http.MethodPost, path: "/v1/devices/NAS1/tsig", bearer: bearer})
		var out map[string]string
		if r.code == http.StatusCreated {
			if err := json.Unmarshal([]byte(r.body), &out); err != nil {
				t.Fatalf("POST tsig: %v in %q", err, r.body)
			}
		}
		return out, r
	}
	k1, r := issue(tok)
	if r.code != http.StatusCreated {
		t.Fatalf("POST tsig with the device token: HTTP %d %s", r.code, r.body)
	}
	secret, err := base64.StdEncoding.DecodeString(k1["secret"])
	if len(k1) != 3 || k1["name"] != "nas1.example.com" || k1["algorithm"] != "hmac-sha256" || err != nil || len(secret) != 32 {
		t.Fatalf("POST tsig = %v, want name nas1.example.com, hmac-sha256 and a base64 secret of 32 bytes", k1)
	}
	if got, ok := s.st.TSIGKey("nas1"); !ok || !bytes.Equal(got.Secret, secret) {
		t.Fatal("the issued key is not the one in force")
	}

	// The secret appears in that answer only: not in the export, not in the list.
	for _, c := range []req{{path: "/v1/devices/nas1", bearer: tok}, {path: "/v1/devices", bearer: testAdmin}} {
		r := s.do(c)
		if r.code != http.StatusOK || strings.Contains(r.body, k1["secret"]) || !strings.Contains(r.body, `"tsig_key":{"algorithm":"hmac-sha256","created":"2026-03-01T12:00:00Z"}`) {
			t.Errorf("GET %s: HTTP %d %s; want the key's algorithm and time without its secret", c.path, r.code, r.body)
		}
	}

	// Another device's token may not; the admin may, and rotates the key.
	wantError(t, "POST tsig with another device's token", s.do(req{method: http.MethodPost, path: "/v1/devices/nas1/tsig", bearer: other}), http.StatusUnauthorized)
	k2, r := issue(testAdmin)
	if r.code != http.StatusCreated || k2["secret"] == k1["secret"] {
		t.Fatalf("POST tsig again as admin: HTTP %d %v, want a new secret", r.code, k2)
	}
	if got, _ := s.st.TSIGKey("nas1"); base64.StdEncoding.EncodeToString(got.Secret) != k2["secret"] {
		t.Fatal("after rotation the old key is still in force")
	}

	for range 2 { // revoking is idempotent
		if r := s.do(req{method: http.MethodDelete, path: "/v1/devices/nas1/tsig", bearer: tok}); r.code != http.StatusNoContent {
			t.Fatalf("DELETE tsig: HTTP %d %s", r.code, r.body)
		}
	}
	if _, ok := s.st.TSIGKey("nas1"); ok {
		t.Fatal("the key is in force after DELETE")
	}
	wantError(t, "POST tsig for an unknown device as admin", s.do(req{method: http.MethodPost, path: "/v1/devices/nobody/tsig", bearer: testAdmin}), http.StatusNotFound, "no such device")
}

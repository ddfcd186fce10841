package daemon_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/nasreach/nasreach/daemon/daemontest"
)

func TestDevicePublishesKeyAndManagesAccessCodes(t *testing.T) {
	td := daemontest.Start(t)
	token := td.AddDevice("nas1")
	other := td.AddDevice("nas2")
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(pub)
	key := base64.StdEncoding.EncodeToString(der)
	if code, body := td.Do(http.MethodPut, "/v1/devices/nas1/key", token, map[string]string{"public_key": key}); code != http.StatusOK {
		t.Fatalf("publish key: %d %s", code, body)
	}
	if code, _ := td.Do(http.MethodPut, "/v1/devices/nas1/key", token, map[string]string{"public_key": "bm90IGEga2V5"}); code != http.StatusBadRequest {
		t.Errorf("garbage key accepted: HTTP %d", code)
	}
	if code, _ := td.Do(http.MethodPut, "/v1/devices/nas1/key", other, map[string]string{"public_key": key}); code != http.StatusUnauthorized {
		t.Errorf("another device's token set nas1's key: HTTP %d", code)
	}
	code, body := td.Do(http.MethodPost, "/v1/devices/nas1/access-codes", token, nil)
	if code != http.StatusCreated {
		t.Fatalf("issue access code: %d %s", code, body)
	}
	var ac struct{ ID, Code string }
	json.Unmarshal(body, &ac)
	if !td.Daemon.Store().CheckAccessCode("nas1", ac.Code) {
		t.Fatal("issued access code does not check")
	}
	_, body = td.Do(http.MethodGet, "/v1/devices/nas1", token, nil)
	var export struct {
		PublicKey   string `json:"public_key"`
		AccessCodes []struct {
			ID     string `json:"id"`
			SHA256 string `json:"sha256"`
		} `json:"access_codes"`
	}
	json.Unmarshal(body, &export)
	if export.PublicKey != key || len(export.AccessCodes) != 1 || export.AccessCodes[0].ID != ac.ID {
		t.Fatalf("export = %s", body)
	}
	if code, _ := td.Do(http.MethodDelete, "/v1/devices/nas1/access-codes/"+ac.ID, token, nil); code != http.StatusNoContent {
		t.Fatalf("revoke: HTTP %d", code)
	}
	if td.Daemon.Store().CheckAccessCode("nas1", ac.Code) {
		t.Fatal("revoked access code still checks")
	}
	if code, _ := td.Do(http.MethodDelete, "/v1/devices/nas1/access-codes/"+ac.ID, token, nil); code != http.StatusNotFound {
		t.Errorf("revoking twice: HTTP %d, want 404", code)
	}
}

package api

import (
	"encoding/base64"
	"net/http"

	"github.com/nasreach/nasreach/api/client"
	"github.com/nasreach/nasreach/store"
)

// A device's TSIG key for DNS dynamic updates (RFC 2136): its name is the
// device's name in the zone, so that nsupdate -y hmac-sha256:NAME:SECRET and
// a BIND key file (ddclient's nsupdate protocol) take it as issued, and the
// DNS server knows from the key which names it may change.

// tsigKeyName is the name of device's TSIG key: its FQDN.
func (a *API) tsigKeyName(device string) string { return device + "." + a.zone }

// handleIssueTSIGKey issues a new key, which replaces the device's old one;
// the secret is in this answer only.
func (a *API) handleIssueTSIGKey(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if _, ok := a.authorizeDevice(w, r, name); !ok {
		return
	}
	key, err := a.st.IssueTSIGKey(r.Context(), name)
	if err != nil {
		a.storeError(w, err)
		return
	}
	device := store.NormalizeName(name)
	a.log.Info().Str("device", device).Str("client", masked(a.clientAddr(r))).Msg("tsig key issued")
	writeJSON(w, http.StatusCreated, client.IssuedTSIGKey{
		Name: a.tsigKeyName(device), Algorithm: key.Algorithm, Secret: base64.StdEncoding.EncodeToString(key.Secret),
	})
}

// handleRevokeTSIGKey deletes the device's key, if it has one; updates
// signed with it are refused from the next one on.
func (a *API) handleRevokeTSIGKey(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if _, ok := a.authorizeDevice(w, r, name); !ok {
		return
	}
	if err := a.st.RevokeTSIGKey(r.Context(), name); err != nil {
		a.storeError(w, err)
		return
	}
	a.log.Info().Str("device", store.NormalizeName(name)).Str("client", masked(a.clientAddr(r))).Msg("tsig key revoked")
	w.WriteHeader(http.StatusNoContent)
}

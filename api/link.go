package api

import (
	"crypto/x509"
	"encoding/base64"
	"errors"
	"net/http"

	"github.com/nasreach/nasreach/api/client"
	"github.com/nasreach/nasreach/store"
)

// The device-side calls Link needs: publishing the agent's public key and
// issuing access codes for devices with access "token".

// handleKey records the public key the device's agent generated; Link
// clients pin it.
func (a *API) handleKey(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if _, ok := a.authorizeDevice(w, r, name); !ok {
		return
	}
	var req client.PublicKeyUpdate
	if present, err := decode(r, &req); err != nil || !present || req.PublicKey == "" {
		a.fail(w, http.StatusBadRequest, "%s", cmpErr(err, `request body must be {"public_key":"<base64 DER SubjectPublicKeyInfo>"}`))
		return
	}
	der, err := base64.StdEncoding.DecodeString(req.PublicKey)
	if err != nil {
		a.fail(w, http.StatusBadRequest, "public_key is not base64: %v", err)
		return
	}
	if _, err := x509.ParsePKIXPublicKey(der); err != nil {
		a.fail(w, http.StatusBadRequest, "public_key is not a DER SubjectPublicKeyInfo: %v", err)
		return
	}
	d, err := a.st.SetPublicKey(r.Context(), name, req.PublicKey)
	if err != nil {
		a.storeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, a.deviceJSON(d))
}

// handleAddAccessCode issues an access code; the code is in this answer only.
func (a *API) handleAddAccessCode(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if _, ok := a.authorizeDevice(w, r, name); !ok {
		return
	}
	id, code, err := a.st.AddAccessCode(r.Context(), name)
	if err != nil {
		a.storeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, client.IssuedAccessCode{ID: id, Code: code})
}

// handleRevokeAccessCode deletes an access code; it stops working at once.
func (a *API) handleRevokeAccessCode(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if _, ok := a.authorizeDevice(w, r, name); !ok {
		return
	}
	if err := a.st.RevokeAccessCode(r.Context(), name, r.PathValue("id")); err != nil {
		// The store says ErrNotFound for an unknown code of a known
		// device too; "no such device" would send the operator looking
		// for the wrong thing.
		if _, gerr := a.st.Get(name); errors.Is(err, store.ErrNotFound) && gerr == nil {
			a.fail(w, http.StatusNotFound, "no such access code")
			return
		}
		a.storeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

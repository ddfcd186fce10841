package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"

	"github.com/nasreach/nasreach/api/client"
	"github.com/nasreach/nasreach/connlog"
	"github.com/nasreach/nasreach/store"
)

// deviceJSON is d as the API shows it: everything stored, plus its FQDN,
// except the secret of its TSIG key, which was shown once when issued.
func (a *API) deviceJSON(d store.Device) client.Device {
	if d.TSIGKey != nil {
		k := *d.TSIGKey
		k.Secret = nil
		d.TSIGKey = &k
	}
	return client.Device{Device: d, FQDN: d.Name + "." + a.zone}
}

// decode reads a JSON body strictly; an empty body leaves v as it is and
// returns false.
func decode(r *http.Request, v any) (present bool, err error) {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return false, nil
		}
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return true, fmt.Errorf("request body is larger than %d bytes", mbe.Limit)
		}
		return true, fmt.Errorf("request body is not valid JSON for this call: %v", err)
	}
	// The rest of the body may only be white space, and must fit the limit too.
	rest, err := io.ReadAll(io.MultiReader(dec.Buffered(), r.Body))
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return true, fmt.Errorf("request body is larger than %d bytes", mbe.Limit)
	}
	if err != nil {
		return true, fmt.Errorf("read request body: %v", err)
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return true, errors.New("request body has data after the JSON object")
	}
	return true, nil
}

// storeError answers a store error with the matching status.
func (a *API) storeError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, store.ErrNotFound):
		a.fail(w, http.StatusNotFound, "no such device")
	case errors.Is(err, store.ErrExists), errors.Is(err, store.ErrQuarantined):
		a.fail(w, http.StatusConflict, "%v", err)
	case errors.Is(err, store.ErrInvalidName), errors.Is(err, store.ErrReserved), errors.Is(err, store.ErrInvalid):
		a.fail(w, http.StatusBadRequest, "%v", err)
	case errors.Is(err, store.ErrUnavailable):
		a.log.Error().Err(err).Msg("store unavailable")
		a.fail(w, http.StatusServiceUnavailable, "the device table is unavailable; try again later")
	default:
		a.log.Error().Err(err).Msg("store error")
		a.fail(w, http.StatusInternalServerError, "the server could not save the change; try again")
	}
}

// authorizeDevice lets the request through if it carries the admin token or
// the token of device name (as a bearer token or Basic password). On failure
// it has answered already. Unknown devices and wrong tokens look the same.
func (a *API) authorizeDevice(w http.ResponseWriter, r *http.Request, name string) (admin, ok bool) {
	token, hasBearer := bearer(r)
	if !hasBearer {
		if _, pw, basic := r.BasicAuth(); basic {
			token = pw
		}
	}
	return a.authorizeToken(w, r, name, token, a.isAdmin(r))
}

// authorizeToken lets the request through if isAdmin, or if token is the
// token of device name, however the request carried it. A source blocked
// for failed logins is refused first, and a wrong token counts as a failed
// login. On failure it has answered already.
func (a *API) authorizeToken(w http.ResponseWriter, r *http.Request, name, token string, isAdmin bool) (admin, ok bool) {
	if isLocal(r) {
		return true, true
	}
	src := a.clientAddr(r)
	if a.fails.blocked(src) {
		retryAfter(w, a.throttle.Block)
		a.fail(w, http.StatusTooManyRequests, "too many failed logins from your address; try again later")
		return false, false
	}
	if isAdmin {
		return true, true
	}
	if token == "" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="nasreach"`)
		a.fail(w, http.StatusUnauthorized, "this call needs the device token or the admin token")
		return false, false
	}
	if _, err := a.st.Authenticate(name, token); errors.Is(err, store.ErrUnavailable) {
		a.storeError(w, err)
		return false, false
	} else if err != nil {
		a.fails.add(src)
		a.event(connlog.Event{Service: "api", Kind: "auth", Outcome: "badauth", Client: src})
		a.log.Info().Str("client", masked(src)).Msg("device authentication failed")
		w.Header().Set("WWW-Authenticate", `Bearer realm="nasreach"`)
		a.fail(w, http.StatusUnauthorized, "wrong device name or token")
		return false, false
	}
	return false, true
}

// requireAdmin lets the request through only with the admin token (or from
// the local operator). A source blocked for failed logins is refused even
// with the right token, on every call alike, so that guessing learns
// nothing while blocked.
func (a *API) requireAdmin(w http.ResponseWriter, r *http.Request) bool {
	if isLocal(r) {
		return true
	}
	src := a.clientAddr(r)
	if a.fails.blocked(src) {
		retryAfter(w, a.throttle.Block)
		a.fail(w, http.StatusTooManyRequests, "too many failed logins from your address; try again later (the local operator is not blocked: run nasreach device on the daemon's machine)")
		return false
	}
	if a.isAdmin(r) {
		return true
	}
	if _, ok := bearer(r); ok {
		a.fails.add(src)
	}
	w.Header().Set("WWW-Authenticate", `Bearer realm="nasreach"`)
	a.fail(w, http.StatusUnauthorized, "this call needs the admin token")
	return false
}

func (a *API) handleCreate(w http.ResponseWriter, r *http.Request) {
	// The operator's call is checked like every admin call (a blocked
	// source is refused even with the right token); anyone else's is an
	// open registration, if registration is open, whatever it carries.
	if a.isAdmin(r) || !a.open.Load() {
		if !a.requireAdmin(w, r) {
			return
		}
	} else if src := a.clientAddr(r); !a.regs.allow(src) {
		retryAfter(w, a.throttle.RegistrationsWindow)
		a.fail(w, http.StatusTooManyRequests, "too many registrations from your address; try again later")
		return
	}
	var req client.CreateRequest
	if present, err := decode(r, &req); err != nil || !present {
		a.fail(w, http.StatusBadRequest, "%s", cmpErr(err, "request body must be a JSON object with a name"))
		return
	}
	if req.Name == "" {
		a.fail(w, http.StatusBadRequest, "name is required")
		return
	}
	d, token, err := a.st.Create(r.Context(), req.Name, store.CreateOptions{State: req.State})
	if err != nil {
		a.storeError(w, err)
		return
	}
	a.log.Info().Str("device", d.Name).Str("client", masked(a.clientAddr(r))).Msg("device registered")
	w.Header().Set("Location", "/v1/devices/"+d.Name)
	writeJSON(w, http.StatusCreated, client.CreatedDevice{Name: d.Name, FQDN: d.Name + "." + a.zone, Token: token})
}

func cmpErr(err error, fallback string) string {
	if err != nil {
		return err.Error()
	}
	return fallback
}

func (a *API) handleList(w http.ResponseWriter, r *http.Request) {
	if !a.requireAdmin(w, r) {
		return
	}
	ds, err := a.st.List()
	if err != nil {
		a.storeError(w, err)
		return
	}
	out := make([]client.Device, 0, len(ds))
	for _, d := range ds {
		out = append(out, a.deviceJSON(d))
	}
	writeJSON(w, http.StatusOK, client.DeviceList{Devices: out})
}

func (a *API) handleGet(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if _, ok := a.authorizeDevice(w, r, name); !ok {
		return
	}
	d, err := a.st.Get(name)
	if err != nil {
		a.storeError(w, err)
		return
	}
	codes, err := a.st.AccessCodes(name)
	if err != nil {
		a.storeError(w, err)
		return
	}
	out := a.deviceJSON(d)
	out.AccessCodes = codes
	writeJSON(w, http.StatusOK, out)
}

func (a *API) handlePatch(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if _, ok := a.authorizeDevice(w, r, name); !ok {
		return
	}
	var req client.Patch
	if present, err := decode(r, &req); err != nil || !present {
		a.fail(w, http.StatusBadRequest, "%s", cmpErr(err, `request body must be a JSON object such as {"ddns":false}`))
		return
	}
	d, err := a.st.Update(r.Context(), name, store.Patch{
		DDNS: req.DDNS, Link: req.Link,
		Access: req.Access, State: req.State,
	})
	if err != nil {
		a.storeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, a.deviceJSON(d))
}

func (a *API) handleDelete(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if _, ok := a.authorizeDevice(w, r, name); !ok {
		return
	}
	if err := a.st.Delete(r.Context(), name); err != nil {
		a.storeError(w, err)
		return
	}
	a.log.Info().Str("device", store.NormalizeName(name)).Msg("device deleted")
	w.WriteHeader(http.StatusNoContent)
}

// handleAddress sets a device's addresses. A field left out keeps its value,
// an empty string clears it, and no body at all uses the caller's address.
func (a *API) handleAddress(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if _, ok := a.authorizeDevice(w, r, name); !ok {
		return
	}
	var req client.AddressUpdate
	present, err := decode(r, &req)
	if err != nil {
		a.fail(w, http.StatusBadRequest, "%v", err)
		return
	}
	var u store.AddressUpdate
	if !present {
		src := a.clientAddr(r)
		if src.Is4() {
			u.IPv4 = src
		} else {
			u.IPv6 = src
		}
	}
	for _, f := range []struct {
		field string
		in    *string
		out   *netip.Addr
		clear *bool
	}{{"ipv4", req.IPv4, &u.IPv4, &u.ClearIPv4}, {"ipv6", req.IPv6, &u.IPv6, &u.ClearIPv6}} {
		switch {
		case f.in == nil:
		case *f.in == "":
			*f.clear = true
		default:
			ip, err := netip.ParseAddr(*f.in)
			if err != nil {
				a.fail(w, http.StatusBadRequest, "%s %q is not an address", f.field, *f.in)
				return
			}
			*f.out = ip
		}
	}
	d, changed, err := a.st.SetAddress(r.Context(), name, u)
	outcome := map[bool]string{true: "good", false: "nochg"}[changed]
	if err != nil {
		outcome = "error"
	}
	a.event(connlog.Event{Service: "ddns", Kind: "update", Outcome: outcome, Device: store.NormalizeName(name), Client: a.clientAddr(r)})
	if err != nil {
		a.storeError(w, err)
		return
	}
	if changed {
		a.log.Info().Str("device", d.Name).Str("client", masked(a.clientAddr(r))).Msg("address updated")
	}
	writeJSON(w, http.StatusOK, a.deviceJSON(d))
}

func (a *API) handleIP(w http.ResponseWriter, r *http.Request) {
	ip := a.clientAddr(r)
	if !ip.IsValid() {
		a.fail(w, http.StatusInternalServerError, "cannot tell your address")
		return
	}
	if accept := r.Header.Get("Accept"); accept != "" && acceptsPlain(accept) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, ip.String())
		return
	}
	writeJSON(w, http.StatusOK, client.CallerIP{IP: ip})
}

// acceptsPlain reports whether an Accept header prefers text/plain to JSON.
func acceptsPlain(accept string) bool {
	for part := range strings.SplitSeq(accept, ",") {
		mt, _, _ := strings.Cut(part, ";")
		switch strings.TrimSpace(mt) {
		case "text/plain", "text/*":
			return true
		case "application/json":
			return false
		}
	}
	return false
}

// housekeeper is a store shared by several nodes, one of which is elected
// to do what must run once (store.Etcd).
type housekeeper interface{ Sweeping() bool }

// handleBackup streams a consistent snapshot of the store (a bbolt file) to
// the admin, taken while the daemon keeps serving. With ?housekeeping=1 a
// node of a cluster that is not the elected housekeeper answers 409 and
// sends nothing: every node can run the same daily backup, and one writes
// it, the one that moves with the cluster's housekeeping.
func (a *API) handleBackup(w http.ResponseWriter, r *http.Request) {
	if !a.requireAdmin(w, r) {
		return
	}
	if h, ok := a.st.(housekeeper); ok && r.URL.Query().Get("housekeeping") == "1" && !h.Sweeping() {
		a.fail(w, http.StatusConflict, "this node does not do the cluster's housekeeping: the node that does takes the backup")
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", `attachment; filename="nasreach.db"`)
	n, err := a.st.Backup(w)
	if err != nil {
		a.log.Error().Err(err).Int64("bytes", n).Msg("backup failed")
		// The status is sent already: abort the stream so that the client sees
		// an error instead of a short file that looks complete.
		panic(http.ErrAbortHandler)
	}
	a.log.Info().Int64("bytes", n).Msg("backup sent")
}

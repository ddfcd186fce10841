package api

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/nasreach/nasreach/api/client"
	"github.com/nasreach/nasreach/connlog"
	"github.com/nasreach/nasreach/store"
)

// ACME DNS-01 challenges for device certificates: a device publishes the
// values its ACME client is given as TXT at _acme-challenge.<device>.<zone>,
// and nowhere else. Two ways in, one store call (store.SetChallenges):
//
//	PUT    /v1/devices/{name}/acme-challenge  {"values":["…","…"]}
//	       adds the values (one already published is renewed); each is
//	       published for an hour from its last PUT. 200 with the values
//	       published now, 400 for a value that is not 43 base64url
//	       characters or more than store.MaxChallenges in all.
//	DELETE /v1/devices/{name}/acme-challenge  {"values":["…"]}
//	       withdraws those values (one not published is ignored); without a
//	       body, every value. 204.
//	GET    /v1/devices/{name}/acme-challenge
//	       the values published now, with their expiry.
//
// Each needs the device's token (or the admin token), as every device call
// does. Clients for a name and its wildcard present two values and clean
// both up afterwards, in separate calls or together: adding and removing
// value by value serves both.
//
// The acme-dns API (github.com/joohoi/acme-dns), which lego's acme-dns
// provider, acme.sh's dns_acmedns and certbot-dns-acmedns speak:
//
//	POST /update
//	X-Api-User: <device name>
//	X-Api-Key:  <device token>
//	{"subdomain":"<device name>","txt":"<value>"}
//
// publishes the value at _acme-challenge.<device>.<zone> and, as acme-dns
// does, keeps only the two most recent values, so a client that never cleans
// up (acme-dns has no delete) leaves at most two behind, for at most an hour.
// 200 {"txt":"<value>"}; 400 for a bad value; 401 for a wrong name or token;
// 403 when subdomain is not the authenticated device. The account an acme-dns
// client keeps is therefore the device itself: username and subdomain are the
// device name, password its token, fulldomain _acme-challenge.<device>.<zone>;
// no CNAME is needed since the daemon serves the device's zone.
// POST /register, which would hand out a new account to anyone who asks, is
// refused with that explanation: a client that finds no account in its
// storage calls it, and the answer says what to write there.
//
// Values never reach a log: not zerolog, not the connection log (the event
// names the device and the masked client only), and refusals do not repeat
// them.

// acmeDNSUpdate is the body of acme-dns's POST /update. goacmedns (lego)
// sends the keys capitalised, {"SubDomain","Txt"}; JSON keys match
// case-insensitively.
type acmeDNSUpdate struct {
	Subdomain string `json:"subdomain"`
	Txt       string `json:"txt"`
}

// acmeDNSKeep is how many values acme-dns keeps per account.
const acmeDNSKeep = 2

// challengeName is the TXT name of device's challenge values.
func (a *API) challengeName(device string) string {
	return "_acme-challenge." + store.NormalizeName(device) + "." + a.zone
}

// challengeEvent logs and counts one change of challenge values: kind "set"
// or "delete", outcome "ok", "invalid" or "error". No value in it.
func (a *API) challengeEvent(r *http.Request, device, kind string, err error) {
	outcome := "ok"
	switch {
	case errors.Is(err, store.ErrInvalid):
		outcome = "invalid"
	case err != nil:
		outcome = "error"
	}
	a.event(connlog.Event{Service: "acme", Kind: kind, Outcome: outcome, Device: store.NormalizeName(device), Client: a.clientAddr(r)})
}

// challengeValues reads {"values":[…]} and checks every value, naming the
// one at fault by its index (never by its text).
func challengeValues(r *http.Request) (present bool, values []string, err error) {
	var req client.ACMEChallengeValues
	present, err = decode(r, &req)
	if err != nil || !present {
		return present, nil, err
	}
	if len(req.Values) == 0 {
		return true, nil, errors.New(`values is empty: send {"values":["…"]} with one or more challenge values`)
	}
	if len(req.Values) > store.MaxChallenges {
		return true, nil, fmt.Errorf("%d values; at most %d are published at once", len(req.Values), store.MaxChallenges)
	}
	for i, v := range req.Values {
		if err := store.ValidateChallenge(v); err != nil {
			return true, nil, fmt.Errorf("values[%d]: %w", i, err)
		}
	}
	return true, req.Values, nil
}

func (a *API) handleChallengePut(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if _, ok := a.authorizeDevice(w, r, name); !ok {
		return
	}
	present, values, err := challengeValues(r)
	if err != nil || !present {
		a.challengeEvent(r, name, "set", store.ErrInvalid)
		a.fail(w, http.StatusBadRequest, "%s", cmpErr(err, `request body must be {"values":["…"]}, the challenge values to publish`))
		return
	}
	a.setChallenges(w, r, name, "set", store.ChallengeUpdate{Add: values}, func(d store.Device) {
		writeJSON(w, http.StatusOK, a.challengesJSON(d))
	})
}

func (a *API) handleChallengeDelete(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if _, ok := a.authorizeDevice(w, r, name); !ok {
		return
	}
	present, values, err := challengeValues(r)
	if err != nil {
		a.challengeEvent(r, name, "delete", store.ErrInvalid)
		a.fail(w, http.StatusBadRequest, "%v", err)
		return
	}
	a.setChallenges(w, r, name, "delete", store.ChallengeUpdate{Remove: values, RemoveAll: !present}, func(store.Device) {
		w.WriteHeader(http.StatusNoContent)
	})
}

func (a *API) handleChallengeGet(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if _, ok := a.authorizeDevice(w, r, name); !ok {
		return
	}
	d, err := a.st.Get(name)
	if err != nil {
		a.storeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, a.challengesJSON(d))
}

// setChallenges applies u to device name's values, records the event and,
// when it worked, answers with done.
func (a *API) setChallenges(w http.ResponseWriter, r *http.Request, name, kind string, u store.ChallengeUpdate, done func(store.Device)) {
	d, err := a.st.SetChallenges(r.Context(), name, u)
	a.challengeEvent(r, name, kind, err)
	if err != nil {
		a.storeError(w, err)
		return
	}
	a.log.Info().Str("device", d.Name).Str("client", masked(a.clientAddr(r))).Int("published", len(d.ACMEChallenges)).
		Msg(map[string]string{"set": "acme challenge published", "delete": "acme challenge withdrawn"}[kind])
	done(d)
}

// challengesJSON is d's challenge values as the API shows them.
func (a *API) challengesJSON(d store.Device) client.ACMEChallenges {
	cs := d.ACMEChallenges
	if cs == nil {
		cs = []store.ACMEChallenge{}
	}
	return client.ACMEChallenges{FQDN: a.challengeName(d.Name), Challenges: cs}
}

// handleUpdatePost serves POST /update: the acme-dns API when the request
// carries acme-dns's X-Api-User header, dyndns2 otherwise.
func (a *API) handleUpdatePost(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("X-Api-User") == "" {
		a.handleDyndns2(w, r)
		return
	}
	user := store.NormalizeName(strings.TrimSpace(r.Header.Get("X-Api-User")))
	key := strings.TrimSpace(r.Header.Get("X-Api-Key"))
	admin, ok := a.authorizeToken(w, r, user, key, a.isAdminToken(key))
	if !ok {
		return
	}
	var req acmeDNSUpdate
	if present, err := decode(r, &req); err != nil || !present {
		a.challengeEvent(r, user, "set", store.ErrInvalid)
		a.fail(w, http.StatusBadRequest, "%s", cmpErr(err, `request body must be {"subdomain":"<device name>","txt":"<challenge value>"}`))
		return
	}
	device := store.NormalizeName(strings.TrimSpace(req.Subdomain))
	if !admin && device != user {
		a.fail(w, http.StatusForbidden, "subdomain must be the device named in X-Api-User: a device publishes only its own challenge")
		return
	}
	if err := store.ValidateChallenge(req.Txt); err != nil {
		a.challengeEvent(r, device, "set", err)
		a.fail(w, http.StatusBadRequest, "txt: %v", err)
		return
	}
	a.setChallenges(w, r, device, "set", store.ChallengeUpdate{Add: []string{req.Txt}, Keep: acmeDNSKeep}, func(store.Device) {
		writeJSON(w, http.StatusOK, map[string]string{"txt": req.Txt})
	})
}

// handleRegister refuses acme-dns's POST /register, saying what to use
// instead: every device already is an account.
func (a *API) handleRegister(w http.ResponseWriter, _ *http.Request) {
	a.fail(w, http.StatusForbidden, "nasreach does not hand out acme-dns accounts: each device is one. "+
		"Store this account for your domain in the client's storage: username and subdomain = the device name, "+
		"password = its token, fulldomain = _acme-challenge.<device>.%s (no CNAME needed)", a.zone)
}

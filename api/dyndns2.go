package api

import (
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"strings"

	"github.com/nasreach/nasreach/connlog"
	"github.com/nasreach/nasreach/store"
)

// The dyndns2 protocol, as ddclient, inadyn and routers speak it:
//
//	GET /nic/update?hostname=nas1.<zone>[,nas1.<zone>…]&myip=IP[,IP]&myipv6=IP
//	Authorization: Basic base64(device name ":" token)
//
// The reply is text/plain, one line per hostname in the order asked:
//
//	good IP[,IP]  the address changed (the line names the address now stored)
//	nochg IP      the address was already that
//	notfqdn       the hostname is missing or not a name in our zone
//	nohost        the hostname is not the authenticated device
//	numhost       more than maxHostnames hostnames in one request (one line)
//	badauth       wrong or missing credentials (HTTP 401, one line)
//	abuse         too many failed logins from this address (HTTP 429, one line)
//	911           the server failed; retry later (HTTP 500)
//
// myip missing or not an address means the request's source address. The
// wildcard, mx, backmx, offline and system parameters are accepted and ignored:
// the service has no wildcard or MX records.

// maxHostnames is how many hostnames one dyndns2 request may carry.
const maxHostnames = 20

// dyndns2Request is a parsed dyndns2 update.
type dyndns2Request struct {
	Hostnames []string // ASCII lower case (store.NormalizeName), no trailing dot, in request order
	IPv4      netip.Addr
	IPv6      netip.Addr
}

// parseDyndns2 reads the query parameters of an update. src is the request's
// source address, used when myip (and myipv6) give no valid address. The error is
// the dyndns2 code to answer with.
func parseDyndns2(q url.Values, src netip.Addr) (dyndns2Request, string) {
	var req dyndns2Request
	for h := range strings.SplitSeq(q.Get("hostname"), ",") {
		h = strings.TrimSuffix(store.NormalizeName(strings.TrimSpace(h)), ".")
		if h != "" {
			req.Hostnames = append(req.Hostnames, h)
		}
		if len(req.Hostnames) > maxHostnames {
			return req, "numhost"
		}
	}
	if len(req.Hostnames) == 0 {
		return req, "notfqdn"
	}
	ips := strings.Split(q.Get("myip"), ",")
	ips = append(ips, q.Get("myipv6"))
	for _, s := range ips {
		ip, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil {
			continue // the protocol says: ignore a malformed address, use the source
		}
		ip = ip.Unmap().WithZone("")
		switch {
		case ip.Is4() && !req.IPv4.IsValid():
			req.IPv4 = ip
		case ip.Is6() && !req.IPv6.IsValid():
			req.IPv6 = ip
		}
	}
	if !req.IPv4.IsValid() && !req.IPv6.IsValid() {
		if src.Is4() {
			req.IPv4 = src
		} else if src.IsValid() {
			req.IPv6 = src
		}
	}
	return req, ""
}

// deviceOf returns the device label of hostname in our zone, or "" if it is
// not a single label directly under the zone.
func (a *API) deviceOf(hostname string) string {
	label, ok := strings.CutSuffix(hostname, "."+a.zone)
	if !ok || label == "" || strings.Contains(label, ".") {
		return ""
	}
	return label
}

func (a *API) handleDyndns2(w http.ResponseWriter, r *http.Request) {
	src := a.clientAddr(r)
	var device string // set once authenticated
	reply := func(code int, lines ...string) {
		for _, l := range lines {
			word, _, _ := strings.Cut(l, " ")
			a.event(connlog.Event{Service: "ddns", Kind: "update", Outcome: word, Device: device, Client: src})
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(code)
		fmt.Fprint(w, strings.Join(lines, "\n")+"\n")
	}
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		reply(http.StatusMethodNotAllowed, "badagent")
		return
	}
	if a.fails.blocked(src) {
		retryAfter(w, a.throttle.Block)
		reply(http.StatusTooManyRequests, "abuse")
		return
	}
	user, token, ok := r.BasicAuth()
	if !ok {
		w.Header().Set("WWW-Authenticate", `Basic realm="nasreach"`)
		reply(http.StatusUnauthorized, "badauth")
		return
	}
	user = strings.TrimSuffix(store.NormalizeName(user), ".")
	if d := a.deviceOf(user); d != "" {
		user = d // some routers send the full hostname as the user name
	}
	dev, err := a.st.Authenticate(user, token)
	if err != nil {
		a.fails.add(src)
		a.log.Info().Str("client", masked(src)).Msg("dyndns2 authentication failed")
		w.Header().Set("WWW-Authenticate", `Basic realm="nasreach"`)
		reply(http.StatusUnauthorized, "badauth")
		return
	}
	device = dev.Name
	req, code := parseDyndns2(r.URL.Query(), src)
	if code != "" {
		reply(http.StatusOK, code)
		return
	}
	lines := make([]string, 0, len(req.Hostnames))
	status := http.StatusOK
	for _, h := range req.Hostnames {
		name := a.deviceOf(h)
		switch {
		case name == "":
			lines = append(lines, "notfqdn")
			continue
		case name != dev.Name:
			lines = append(lines, "nohost")
			continue
		}
		d, changed, err := a.st.SetAddress(r.Context(), name, store.AddressUpdate{IPv4: req.IPv4, IPv6: req.IPv6})
		if err != nil {
			a.log.Error().Err(err).Str("device", name).Msg("dyndns2 update failed")
			lines = append(lines, "911")
			status = http.StatusInternalServerError
			continue
		}
		var ips []string
		for _, ip := range []netip.Addr{d.IPv4, d.IPv6} {
			if ip.IsValid() && (ip == req.IPv4 || ip == req.IPv6) {
				ips = append(ips, ip.String())
			}
		}
		word := "nochg"
		if changed {
			word = "good"
			a.log.Info().Str("device", name).Str("client", masked(src)).Msg("address updated (dyndns2)")
		}
		lines = append(lines, word+" "+strings.Join(ips, ","))
	}
	reply(status, lines...)
}

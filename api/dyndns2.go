package api

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
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
//	good IP[,IP]     the address changed (the line names the address now stored)
//	nochg IP         the address was already that
//	badagent REASON  myip or myipv6 is malformed or may not be published;
//	                 nothing changed (one line per hostname, HTTP 200)
//	notfqdn          the hostname is missing or not a name in our zone
//	nohost           the hostname is not the authenticated device
//	numhost          more than maxHostnames hostnames in one request (one line)
//	badauth          wrong or missing credentials (HTTP 401, one line)
//	abuse            too many failed logins from this address (HTTP 429, one line)
//	badagent         a method other than GET or POST (HTTP 405, one line)
//	911              the server failed; retry later (HTTP 500; 503 while the device table is unavailable)
//
// myip holds an IPv4 address, an IPv6 address or one of each, separated by
// commas; white space around each and empty entries are skipped (a router
// template such as "<ipaddr>,<ip6addr>" leaves one out when it has no address
// of that family). myipv6 may carry the IPv6 address
// instead. An IPv4-mapped IPv6 address counts as the IPv4 address. Without
// any address the request's source address is used. The wildcard, mx,
// backmx, offline and system parameters are accepted and ignored: the
// service has no wildcard or MX records.
//
// An address that does not parse, two different addresses of one family, or
// one store.ValidateAddress refuses (unspecified, broadcast, multicast,
// link-local, with a zone …) is answered "badagent" plus a reason, and the
// device keeps its address. Falling back to the source address instead, as
// this server used to, would overwrite the device's real address with one
// it never asked for. badagent is dyndns2's answer to a request the server
// will not take as sent (Google Domains documents it as "your client makes
// bad requests"), and every client reports it as a failure that needs the
// user without hammering the server: ddclient prints "FAILED: updating …:
// unexpected status (badagent …)" and tries again only after
// min-error-interval (5 minutes), inadyn reports a fatal error in the server
// response and stops. dnserr and 911 would make inadyn retry every 10 minutes
// forever, and the other codes blame the hostname or the account. The
// status is 200 because ddclient reads the answer only from a 2xx response.
// The reason never echoes what the client sent and never contains a word a
// client takes for success: inadyn's custom provider accepts any answer that
// contains "good", "nochg", "ok", "true" or "updated".

// maxHostnames is how many hostnames one dyndns2 request may carry.
const maxHostnames = 20

// dyndns2Request is a parsed dyndns2 update.
type dyndns2Request struct {
	Hostnames []string // ASCII lower case (store.NormalizeName), no trailing dot, in request order
	IPv4      netip.Addr
	IPv6      netip.Addr
}

// parseDyndns2 reads the query parameters of an update. src is the request's
// source address, used when myip and myipv6 give no address. A refusal is
// the answer to send: one line (notfqdn, numhost), or a badagent line per
// hostname for an address that cannot be used.
func parseDyndns2(q url.Values, src netip.Addr) (dyndns2Request, []string) {
	var req dyndns2Request
	for h := range strings.SplitSeq(q.Get("hostname"), ",") {
		h = strings.TrimSuffix(store.NormalizeName(strings.TrimSpace(h)), ".")
		if h != "" {
			req.Hostnames = append(req.Hostnames, h)
		}
		if len(req.Hostnames) > maxHostnames {
			return req, []string{"numhost"}
		}
	}
	if len(req.Hostnames) == 0 {
		return req, []string{"notfqdn"}
	}
	var err error
	req.IPv4, req.IPv6, err = dyndns2Addresses(q)
	if err == nil && !req.IPv4.IsValid() && !req.IPv6.IsValid() {
		switch err = store.ValidateAddress(src); {
		case err != nil:
			err = fmt.Errorf("no myip, and the request's source address %w", err)
		case src.Is4():
			req.IPv4 = src
		default:
			req.IPv6 = src
		}
	}
	if err != nil {
		return req, slices.Repeat([]string{"badagent " + err.Error()}, len(req.Hostnames))
	}
	return req, nil
}

// dyndns2Addresses reads myip and myipv6: at most one address of each
// family, each one publishable. Neither given (or only empty entries) is two
// zero addresses and no error.
func dyndns2Addresses(q url.Values) (v4, v6 netip.Addr, err error) {
	for _, param := range []string{"myip", "myipv6"} {
		for _, value := range q[param] {
			for s := range strings.SplitSeq(value, ",") {
				if s = strings.TrimSpace(s); s == "" {
					continue
				}
				ip, err := netip.ParseAddr(s)
				if err != nil {
					return v4, v6, fmt.Errorf("%s is not an IPv4 or IPv6 address (or one of each, comma-separated)", param)
				}
				ip = ip.Unmap()
				if err := store.ValidateAddress(ip); err != nil {
					return v4, v6, fmt.Errorf("%s %w", param, err)
				}
				family, have := "IPv6", &v6
				if ip.Is4() {
					family, have = "IPv4", &v4
				}
				if have.IsValid() && *have != ip {
					return v4, v6, fmt.Errorf("%s: two different %s addresses; a name has at most one of each family", param, family)
				}
				*have = ip
			}
		}
	}
	return v4, v6, nil
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
	if errors.Is(err, store.ErrUnavailable) {
		a.log.Error().Err(err).Msg("dyndns2: store unavailable")
		reply(http.StatusServiceUnavailable, "911")
		return
	}
	if err != nil {
		a.fails.add(src)
		a.log.Info().Str("client", masked(src)).Msg("dyndns2 authentication failed")
		w.Header().Set("WWW-Authenticate", `Basic realm="nasreach"`)
		reply(http.StatusUnauthorized, "badauth")
		return
	}
	device = dev.Name
	req, refusal := parseDyndns2(r.URL.Query(), src)
	if refusal != nil {
		reply(http.StatusOK, refusal...)
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
			if errors.Is(err, store.ErrUnavailable) {
				status = http.StatusServiceUnavailable
			}
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

// Package api is the HTTP side of nasreach: the REST device API, the dyndns2
// update protocol that DDNS clients speak, and the caller's-address endpoint.
// Writes go through the store, which commits them before a handler replies.
package api

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nasreach/nasreach/anonymize"
	"github.com/nasreach/nasreach/api/client"
	"github.com/nasreach/nasreach/connlog"
	"github.com/nasreach/nasreach/internal/connlimit"
	"github.com/nasreach/nasreach/internal/netaddr"
	"github.com/nasreach/nasreach/store"
	"github.com/rs/zerolog"
)

// Limits on what a client may send. maxHeaderBytes is enforced by the
// handler (so the refusal is JSON like every other 4xx); net/http's own,
// plain-text limit sits far above it as a backstop.
const (
	maxBodyBytes       = 4 << 10
	maxHeaderBytes     = 8 << 10
	backstopHeaderSize = 64 << 10
)

// MaxLocalConns caps the connections held at once on the local operator's
// socket. It has no per-source cap (it has no source address, and it is the
// operator's way in); the cap only keeps a runaway script from taking the
// daemon's file descriptors.
const MaxLocalConns = 64

// MinAdminTokenLen is the shortest admin token New accepts: 16 characters
// are beyond guessing at the throttled rate of failed logins.
const MinAdminTokenLen = 16

// Config configures New.
type Config struct {
	// Addr is the HTTP listen address, e.g. "127.0.0.1:10080"; Listener,
	// when set, is served instead (socket activation, tests) and closed at
	// Shutdown. With neither, New binds nothing and the API answers only
	// through ServeHTTP.
	Addr     string
	Listener net.Listener
	// LocalListener, when set, also serves the API, to the local operator:
	// every request on it is an admin request without a token and is never
	// throttled. Only give it a socket the file system protects (a Unix
	// socket only the daemon's user can open). Closed at Shutdown.
	LocalListener net.Listener
	// Conns caps the connections held at once on Listener (or Addr), in
	// total and per source network; zero fields take connlimit's defaults.
	// A connection over a cap is closed before it is read. Its Exempt is
	// ignored: TrustedProxies are exempt from the per-source cap, since a
	// reverse proxy carries every client's connections (and caps them per
	// client itself). The local listener has MaxLocalConns.
	Conns connlimit.Config
	// Store is the device table. Required.
	Store store.Backend
	// Zone is the DNS zone devices live in, e.g. "myqnapcloud.com". Required.
	Zone string
	// AdminToken authorizes admin calls. Required.
	AdminToken string
	// OpenRegistration lets anyone create a device with POST /v1/devices,
	// throttled per source address.
	OpenRegistration bool
	// TrustedProxies are the networks whose X-Forwarded-For is believed; the
	// default trusts nobody and uses the connection's address.
	TrustedProxies []netip.Prefix
	// Throttle bounds failed logins and open registrations; zero fields take
	// the defaults in DefaultThrottle.
	Throttle Throttle
	// Events receives one connection-log event per update attempt; nil logs none.
	Events EventSink
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger receives request outcomes; addresses in it are masked.
	Logger zerolog.Logger
}

// EventSink takes connection-log events; *connlog.Log is one.
type EventSink interface {
	Log(connlog.Event)
}

// API serves the HTTP endpoints. New binds and serves, Shutdown stops.
type API struct {
	st       store.Backend
	zone     string // lower case, no trailing dot
	admin    []byte
	open     atomic.Bool                    // SetOpenRegistration changes it live
	proxies  atomic.Pointer[[]netip.Prefix] // SetTrustedProxies changes it live
	now      func() time.Time
	log      zerolog.Logger
	throttle Throttle
	fails    *limiter
	regs     *limiter
	events   EventSink
	mux      *http.ServeMux
	srv      *http.Server
	ln       net.Listener // wrapped by conns
	local    net.Listener // LocalListener, or nil
	conns    *connlimit.Limiter
	done     chan error // Serve's result, once it returns
	served   int        // how many Serve calls deliver to done
	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

// New validates cfg, binds Addr (unless Listener is given) and serves. The
// API owns the given listeners from then on; on error they are closed.
func New(cfg Config) (_ *API, err error) {
	defer func() {
		if err != nil {
			for _, ln := range []net.Listener{cfg.Listener, cfg.LocalListener} {
				if ln != nil {
					ln.Close()
				}
			}
		}
	}()
	if cfg.Store == nil {
		return nil, errors.New("api: Config.Store is required")
	}
	zone := strings.TrimSuffix(strings.ToLower(cfg.Zone), ".")
	if zone == "" {
		return nil, errors.New("api: Config.Zone is required")
	}
	if len(cfg.AdminToken) < MinAdminTokenLen {
		return nil, fmt.Errorf("api: Config.AdminToken must be at least %d characters", MinAdminTokenLen)
	}
	a := &API{
		st: cfg.Store, zone: zone, admin: []byte(cfg.AdminToken),
		now: cfg.Now, log: cfg.Logger, stop: make(chan struct{}),
		events: cfg.Events,
	}
	if a.now == nil {
		a.now = time.Now
	}
	a.SetOpenRegistration(cfg.OpenRegistration)
	a.SetTrustedProxies(cfg.TrustedProxies)
	t := cfg.Throttle.withDefaults()
	a.throttle = t
	a.fails = newLimiter(t.FailedLogins, t.FailedLoginsWindow, t.Block, a.now)
	a.regs = newLimiter(t.Registrations, t.RegistrationsWindow, t.RegistrationsWindow, a.now)
	a.mux = http.NewServeMux()
	a.routes()
	a.srv = &http.Server{
		Handler:           a,
		ConnContext:       connContext,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    backstopHeaderSize,
	}
	ln := cfg.Listener
	if ln == nil && cfg.Addr != "" {
		var err error
		if ln, err = net.Listen("tcp", cfg.Addr); err != nil {
			return nil, fmt.Errorf("http listen %s: %w", cfg.Addr, err)
		}
	}
	conns := cfg.Conns
	conns.Exempt = a.trusted
	a.conns = connlimit.New(conns)
	a.wg.Add(1)
	go a.sweep()
	a.done = make(chan error, 2)
	if ln != nil {
		a.ln = a.conns.Listener(ln)
		a.log.Info().Str("addr", ln.Addr().String()).Msg("http api listening")
		a.serve(a.ln)
	}
	if cfg.LocalListener != nil {
		a.local = cfg.LocalListener
		a.log.Info().Str("socket", a.local.Addr().String()).Msg("http api listening for the local operator")
		a.serve(localListener{connlimit.New(connlimit.Config{Max: MaxLocalConns}).Listener(a.local)})
	}
	return a, nil
}

func (a *API) routes() {
	a.mux.HandleFunc("GET /v1/ip", a.handleIP)
	a.mux.HandleFunc("POST /v1/devices", a.handleCreate)
	a.mux.HandleFunc("GET /v1/devices", a.handleList)
	a.mux.HandleFunc("GET /v1/devices/{name}", a.handleGet)
	a.mux.HandleFunc("PATCH /v1/devices/{name}", a.handlePatch)
	a.mux.HandleFunc("DELETE /v1/devices/{name}", a.handleDelete)
	a.mux.HandleFunc("PUT /v1/devices/{name}/address", a.handleAddress)
	a.mux.HandleFunc("PUT /v1/devices/{name}/key", a.handleKey)
	a.mux.HandleFunc("POST /v1/devices/{name}/access-codes", a.handleAddAccessCode)
	a.mux.HandleFunc("DELETE /v1/devices/{name}/access-codes/{id}", a.handleRevokeAccessCode)
	a.mux.HandleFunc("PUT /v1/devices/{name}/acme-challenge", a.handleChallengePut)
	a.mux.HandleFunc("DELETE /v1/devices/{name}/acme-challenge", a.handleChallengeDelete)
	a.mux.HandleFunc("GET /v1/devices/{name}/acme-challenge", a.handleChallengeGet)
	a.mux.HandleFunc("POST /v1/devices/{name}/tsig", a.handleIssueTSIGKey)
	a.mux.HandleFunc("DELETE /v1/devices/{name}/tsig", a.handleRevokeTSIGKey)
	a.mux.HandleFunc("GET /v1/admin/backup", a.handleBackup)
	a.mux.HandleFunc("/nic/update", a.handleDyndns2)
	a.mux.HandleFunc("/update", a.handleDyndns2)
	a.mux.HandleFunc("POST /update", a.handleUpdatePost) // acme-dns, or dyndns2 by POST
	a.mux.HandleFunc("POST /register", a.handleRegister)
	a.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		a.fail(w, http.StatusNotFound, "no such endpoint: %s %s", r.Method, r.URL.Path)
	})
}

// SetOpenRegistration switches open registration from the next request on.
func (a *API) SetOpenRegistration(open bool) { a.open.Store(open) }

// SetTrustedProxies replaces the proxies whose X-Forwarded-For is believed.
func (a *API) SetTrustedProxies(p []netip.Prefix) {
	p = slices.Clone(p)
	a.proxies.Store(&p)
}

// ServeHTTP serves one request; the API is an http.Handler.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxBodyBytes)
	w.Header().Set("Cache-Control", "no-store")
	if !strings.HasPrefix(r.URL.Path, "/") {
		a.fail(w, http.StatusBadRequest, "request target %q is not a path", r.RequestURI)
		return
	}
	if n := headerSize(r); n > maxHeaderBytes {
		a.fail(w, http.StatusRequestHeaderFieldsTooLarge, "request headers are %d bytes; at most %d are accepted", n, maxHeaderBytes)
		return
	}
	a.mux.ServeHTTP(w, r)
}

// headerSize is the size of the request line and headers as sent, near enough.
func headerSize(r *http.Request) int {
	n := len(r.Method) + len(r.RequestURI) + len(r.Proto) + 4
	for k, vs := range r.Header {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n
}

// retryAfter sets Retry-After to d in whole seconds.
func retryAfter(w http.ResponseWriter, d time.Duration) {
	w.Header().Set("Retry-After", strconv.Itoa(int((d+time.Second-1)/time.Second)))
}

// Addr returns the address the API listens on (zero without a socket).
func (a *API) Addr() netip.AddrPort {
	if a.ln == nil {
		return netip.AddrPort{}
	}
	return netaddr.AddrPort(a.ln.Addr())
}

// LocalAddr returns the local operator's socket address, or nil.
func (a *API) LocalAddr() net.Addr {
	if a.local == nil {
		return nil
	}
	return a.local.Addr()
}

// ConnStats returns the network listener's connections held now and those
// refused over a cap.
func (a *API) ConnStats() connlimit.Stats { return a.conns.Stats() }

// serve serves ln in the background; its result goes to done.
func (a *API) serve(ln net.Listener) {
	a.served++
	go func() { a.done <- a.srv.Serve(ln) }()
}

// Done delivers the error that stopped serving before Shutdown was asked
// for (a listener failed); it never delivers without a socket.
func (a *API) Done() <-chan error { return a.done }

// Shutdown stops accepting requests, lets in-flight ones finish until ctx
// ends, and stops the background sweeper.
func (a *API) Shutdown(ctx context.Context) error {
	err := a.srv.Shutdown(ctx)
	a.stopOnce.Do(func() {
		close(a.stop)
		for range a.served {
			if serr := <-a.done; !errors.Is(serr, http.ErrServerClosed) {
				err = errors.Join(err, serr)
			}
		}
	})
	a.wg.Wait()
	if err != nil {
		return fmt.Errorf("http api shutdown: %w", err)
	}
	return nil
}

func (a *API) sweep() {
	defer a.wg.Done()
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-a.stop:
			return
		case <-t.C:
			a.fails.sweep()
			a.regs.sweep()
		}
	}
}

// clientAddr is the caller's address: the connection's, or the last
// untrusted hop of X-Forwarded-For when the connection comes from a trusted proxy.
func (a *API) clientAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	addr := ap.Addr().Unmap()
	if !a.trusted(addr) {
		return addr
	}
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		h, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			return addr
		}
		addr = h.Unmap()
		if !a.trusted(addr) {
			break
		}
	}
	return addr
}

func (a *API) trusted(addr netip.Addr) bool {
	for _, p := range *a.proxies.Load() {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// isAdmin reports whether the request is the operator's: it came in on the
// local listener, or it carries the admin token as a bearer token.
func (a *API) isAdmin(r *http.Request) bool {
	if isLocal(r) {
		return true
	}
	tok, ok := bearer(r)
	return ok && a.isAdminToken(tok)
}

// isAdminToken reports, in constant time, whether tok is the admin token.
func (a *API) isAdminToken(tok string) bool {
	return subtle.ConstantTimeCompare([]byte(tok), a.admin) == 1
}

func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:]), true
	}
	return "", false
}

// writeJSON writes v with status code.
func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// fail answers with an error status and a one-line reason.
func (a *API) fail(w http.ResponseWriter, code int, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	msg = strings.ReplaceAll(msg, "\n", " ")
	writeJSON(w, code, client.ErrorBody{Error: msg})
}

// event passes e to the connection log, if there is one.
func (a *API) event(e connlog.Event) {
	if a.events != nil {
		a.events.Log(e)
	}
}

// masked returns the masked form of a client address for logs.
func masked(a netip.Addr) string {
	if !a.IsValid() {
		return "unknown"
	}
	return anonymize.Addr(a).String()
}

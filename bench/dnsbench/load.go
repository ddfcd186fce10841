package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// apiClient talks to nasreach's HTTP API on loopback.
type apiClient struct {
	base  string // http://127.0.0.1:port
	admin string
	hc    *http.Client
}

// sourceAddrs is how many loopback addresses (127.0.1.0 up) the API
// clients' connections come from, in turn: the daemon caps connections per
// source address (a hundredth of a listener's; 23 with a file limit of
// 20,000), and a benchmark's hundreds of clients stand for as many NAS
// devices, not one.
const sourceAddrs = 64

func newAPIClient(base, admin string, conns int) *apiClient {
	var next atomic.Uint32
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		n := next.Add(1) % sourceAddrs
		src := &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(n))}
		return (&net.Dialer{Timeout: 5 * time.Second, LocalAddr: src}).DialContext(ctx, network, addr)
	}
	tr := &http.Transport{
		Proxy:               nil, // loopback only, whatever the environment says
		DialContext:         dial,
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		DisableCompression:  true,
	}
	return &apiClient{base: base, admin: admin, hc: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

func (c *apiClient) close() { c.hc.CloseIdleConnections() }

// do sends one request and returns the status and body.
func (c *apiClient) do(ctx context.Context, method, path string, body any, auth func(*http.Request)) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	auth(req)
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	return resp.StatusCode, data, err
}

func (c *apiClient) asAdmin(r *http.Request) { r.Header.Set("Authorization", "Bearer "+c.admin) }

// waitReady polls GET /v1/ip until the API answers.
func (c *apiClient) waitReady(ctx context.Context, s *server, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		if s.exited() {
			return fmt.Errorf("%s exited before serving (%v); see %s", s.name, s.err, s.log)
		}
		code, _, err := c.do(ctx, http.MethodGet, "/v1/ip", nil, func(*http.Request) {})
		if err == nil && code == http.StatusOK {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s API at %s does not answer after %s; see %s", s.name, c.base, timeout, s.log)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// create registers a device as admin and returns its token.
func (c *apiClient) create(ctx context.Context, name string) (string, error) {
	code, body, err := c.do(ctx, http.MethodPost, "/v1/devices", map[string]string{"name": name}, c.asAdmin)
	if err != nil {
		return "", fmt.Errorf("create %s: %w", name, err)
	}
	var out struct{ Token string }
	if code != http.StatusCreated || json.Unmarshal(body, &out) != nil || out.Token == "" {
		return "", fmt.Errorf("create %s: HTTP %d %s", name, code, bytes.TrimSpace(body))
	}
	return out.Token, nil
}

// setAddress sets both addresses of a device as admin.
func (c *apiClient) setAddress(ctx context.Context, name string, v4, v6 netip.Addr) error {
	body := map[string]string{"ipv4": v4.String(), "ipv6": v6.String()}
	code, resp, err := c.do(ctx, http.MethodPut, "/v1/devices/"+name+"/address", body, c.asAdmin)
	if err != nil {
		return fmt.Errorf("set address of %s: %w", name, err)
	}
	if code != http.StatusOK {
		return fmt.Errorf("set address of %s: HTTP %d %s", name, code, bytes.TrimSpace(resp))
	}
	return nil
}

// dyndns2 sends one dyndns2 update with the device's own credentials, as
// ddclient and routers do, and checks that the reply is "good IP".
func (c *apiClient) dyndns2(ctx context.Context, zone, name, token string, v4 netip.Addr) error {
	q := url.Values{"hostname": {name + "." + zone}, "myip": {v4.String()}}
	code, body, err := c.do(ctx, http.MethodGet, "/nic/update?"+q.Encode(), nil, func(r *http.Request) { r.SetBasicAuth(name, token) })
	if err != nil {
		return fmt.Errorf("dyndns2 update of %s: %w", name, err)
	}
	if want := "good " + v4.String(); code != http.StatusOK || strings.TrimSpace(string(body)) != want {
		return fmt.Errorf("dyndns2 update of %s: HTTP %d %q, want %q", name, code, bytes.TrimSpace(body), want)
	}
	return nil
}

// phase is the outcome of running one operation many times concurrently.
type phase struct {
	Done    int
	Elapsed time.Duration
	Lat     []time.Duration // per completed operation, sorted
}

func (p phase) rate() float64 { return float64(p.Done) / p.Elapsed.Seconds() }

// percentile returns the q-quantile (0..1) of the latencies.
func (p phase) percentile(q float64) time.Duration {
	if len(p.Lat) == 0 {
		return 0
	}
	return p.Lat[min(len(p.Lat)-1, int(q*float64(len(p.Lat))))]
}

// runConcurrent calls op(i) for i in [0, n) from workers goroutines. It stops
// at the first error, or quietly when ctx ends (the time bound of a phase),
// and reports how many calls completed.
func runConcurrent(ctx context.Context, n, workers int, op func(ctx context.Context, i int) error) (phase, error) {
	var (
		next     atomic.Int64
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
		lats     = make([][]time.Duration, workers)
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				t0 := time.Now()
				if err := op(ctx, i); err != nil {
					if ctx.Err() == nil {
						mu.Lock()
						if firstErr == nil {
							firstErr = err
						}
						mu.Unlock()
						cancel()
					}
					return
				}
				lats[w] = append(lats[w], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	p := phase{Elapsed: time.Since(start), Lat: slices.Concat(lats...)}
	p.Done = len(p.Lat)
	slices.Sort(p.Lat)
	if firstErr != nil {
		return p, firstErr
	}
	if p.Done == 0 {
		return p, errors.New("no operation completed in time")
	}
	return p, nil
}

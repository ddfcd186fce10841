package link

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"
)

// maxAPIResponse bounds what the agent reads from the daemon's API.
const maxAPIResponse = 64 << 10

// apiLoop publishes the device key once and keeps the device's DDNS address
// current: it asks /v1/ip for the WAN address after each login and every
// AddressEvery, and updates the device only when the address changed.
func (a *Agent) apiLoop() {
	published := false
	var last netip.Addr
	t := time.NewTicker(a.cfg.AddressEvery)
	defer t.Stop()
	for {
		if !published {
			if err := a.publishKey(a.ctx); err != nil {
				a.log.Warn().Err(err).Msg("cannot publish the device key; will retry")
			} else {
				published = true
				a.log.Info().Str("fingerprint", a.fingerprint).Msg("published the device key")
			}
		}
		if ip, err := a.wanAddress(a.ctx); err != nil {
			a.log.Warn().Err(err).Msg("cannot learn the WAN address")
		} else if ip != last {
			if err := a.putAddress(a.ctx, ip); err != nil {
				a.log.Warn().Err(err).Msg("cannot update the device address")
			} else {
				last = ip
				a.log.Info().Msg("device address updated")
			}
		}
		select {
		case <-a.ctx.Done():
			return
		case <-t.C:
		case <-a.kick:
		}
	}
}

func (a *Agent) call(ctx context.Context, method, path string, body any, out any) error {
	u, err := url.JoinPath(a.cfg.API, path)
	if err != nil {
		return fmt.Errorf("api url %q: %w", a.cfg.API, err)
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+a.cfg.Token)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAPIResponse))
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: HTTP %d: %s", method, path, resp.StatusCode, strings.TrimSpace(string(data)))
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: unexpected answer: %w", method, path, err)
		}
	}
	return nil
}

func (a *Agent) publishKey(ctx context.Context) error {
	return a.call(ctx, http.MethodPut, "/v1/devices/"+url.PathEscape(a.cfg.Device)+"/key", map[string]string{
		"public_key": base64.StdEncoding.EncodeToString(a.spki),
	}, nil)
}

func (a *Agent) wanAddress(ctx context.Context) (netip.Addr, error) {
	var out struct {
		IP string `json:"ip"`
	}
	if err := a.call(ctx, http.MethodGet, "/v1/ip", nil, &out); err != nil {
		return netip.Addr{}, err
	}
	ip, err := netip.ParseAddr(out.IP)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("/v1/ip answered %q, not an address", out.IP)
	}
	return ip.Unmap(), nil
}

func (a *Agent) putAddress(ctx context.Context, ip netip.Addr) error {
	field := "ipv6"
	if ip.Is4() {
		field = "ipv4"
	}
	return a.call(ctx, http.MethodPut, "/v1/devices/"+url.PathEscape(a.cfg.Device)+"/address", map[string]string{field: ip.String()}, nil)
}

package link

import (
	"context"
	"net/netip"
	"time"

	"github.com/nasreach/nasreach/api/client"
)

// apiLoop publishes the device key once and keeps the device's DDNS address
// current: after each login, every AddressEvery and whenever STUN reports a
// new mapping, it takes the WAN address from STUN (the server-reflexive
// address of the agent's socket) or, without a fresh one, from /v1/ip, and
// updates the device only when the address changed.
func (a *Agent) apiLoop() {
	api, err := client.New(client.Config{Server: a.cfg.API, Token: a.cfg.Token, HTTPClient: a.http})
	if err != nil {
		// Link itself still works; only the key and the address go unpublished.
		a.log.Error().Err(err).Msg("cannot use the daemon API; the device key and address will not be published")
		return
	}
	published := false
	var last netip.Addr
	t := time.NewTicker(a.cfg.AddressEvery)
	defer t.Stop()
	for {
		if !published {
			if _, err := api.SetPublicKey(a.ctx, a.cfg.Device, a.spki); err != nil {
				a.log.Warn().Err(err).Msg("cannot publish the device key; will retry")
			} else {
				published = true
				a.log.Info().Str("fingerprint", a.fingerprint).Msg("published the device key")
			}
		}
		ip, fromSTUN := a.wanAddress()
		var werr error
		if !fromSTUN {
			ip, werr = api.CallerAddress(a.ctx)
		}
		if werr != nil {
			a.log.Warn().Err(werr).Msg("cannot learn the WAN address")
		} else if ip = ip.Unmap(); ip != last {
			if err := putAddress(a.ctx, api, a.cfg.Device, ip); err != nil {
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

// putAddress sets the device's address of ip's family and leaves the other
// one as it is: the agent learns one WAN address at a time.
func putAddress(ctx context.Context, api *client.Client, device string, ip netip.Addr) error {
	s := ip.String()
	u := client.AddressUpdate{IPv6: &s}
	if ip.Is4() {
		u = client.AddressUpdate{IPv4: &s}
	}
	_, err := api.SetAddress(ctx, device, u)
	return err
}

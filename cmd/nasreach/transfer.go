package main

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/daemon"
	"github.com/nasreach/nasreach/dnsserver"
	"github.com/urfave/cli/v3"
)

// tsigKeysCredential is the systemd credential with the TSIG keys, one
// NAME:ALGORITHM:SECRET a line (# starts a comment): the keys stay out of
// the config file and the environment.
const tsigKeysCredential = "tsig-keys"

// transferFlags are serve's flags for secondaries: who may transfer the
// zone and who gets NOTIFYs.
func transferFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringSliceFlag{Name: "secondary", Usage: `secondary nameserver IP[:PORT] (port 53 if left out): the IP may transfer the zone (AXFR, IXFR over TCP) and IP:PORT gets a NOTIFY after each change; append " key=NAME" to sign its NOTIFYs (repeatable)`, Sources: cli.EnvVars("NASREACH_SECONDARY")},
		&cli.StringSliceFlag{Name: "tsig-key", Usage: "TSIG key NAME:hmac-sha256:BASE64SECRET (kdig's hmac-sha256:NAME:SECRET too); a transfer signed with it is allowed from any address (repeatable)", DefaultText: "the systemd credential " + tsigKeysCredential + ", one key a line", Sources: cli.EnvVars("NASREACH_TSIG_KEY")},
	}
}

// transferConfigFromFlags reads transferFlags and the tsig-keys credential.
// Errors are *daemon.SettingError.
func transferConfigFromFlags(cmd *cli.Command) (daemon.TransferConfig, error) {
	var c daemon.TransferConfig
	var errs []error
	fail := func(setting string, err error) { errs = append(errs, &daemon.SettingError{Setting: setting, Err: err}) }
	for _, v := range cmd.StringSlice("secondary") {
		sec, err := parseSecondary(v)
		if err != nil {
			fail("secondary", err)
			continue
		}
		c.Secondaries = append(c.Secondaries, sec)
	}
	for _, v := range cmd.StringSlice("tsig-key") {
		k, err := dnsserver.ParseKey(v)
		if err != nil {
			fail("tsig-key", fmt.Errorf("--tsig-key: %w", err)) // never the value: it holds the secret
			continue
		}
		c.TSIGKeys = append(c.TSIGKeys, k)
	}
	text, file, err := readCredential(tsigKeysCredential)
	if err != nil {
		fail("tsig-key", err)
	}
	for i, line := range strings.Split(text, "\n") {
		line, _, _ = strings.Cut(line, "#")
		if line = strings.TrimSpace(line); line == "" {
			continue
		}
		k, err := dnsserver.ParseKey(line)
		if err != nil {
			fail("tsig-key", fmt.Errorf("systemd credential %s line %d: %w", file, i+1, err))
			continue
		}
		c.TSIGKeys = append(c.TSIGKeys, k)
	}
	return c, errors.Join(errs...)
}

// parseSecondary reads IP[:PORT][ key=NAME]; an IPv6 address with a port
// is written [IP]:PORT.
func parseSecondary(v string) (dnsserver.Secondary, error) {
	var sec dnsserver.Secondary
	fields := strings.Fields(v)
	if len(fields) == 0 || len(fields) > 2 {
		return sec, fmt.Errorf("--secondary %q: want IP[:PORT], e.g. 198.51.100.7 or 198.51.100.7:53 key=xfr-key", v)
	}
	if len(fields) == 2 {
		name, ok := strings.CutPrefix(fields[1], "key=")
		if !ok || name == "" {
			return sec, fmt.Errorf("--secondary %q: after the address only key=NAME may follow", v)
		}
		sec.Key = dns.CanonicalName(name)
	}
	if ap, err := netip.ParseAddrPort(fields[0]); err == nil {
		sec.Addr = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	} else if ip, err := netip.ParseAddr(fields[0]); err == nil && ip.Zone() == "" {
		sec.Addr = netip.AddrPortFrom(ip.Unmap(), 53)
	} else {
		return sec, fmt.Errorf("--secondary %q: %q is not IP or IP:PORT ([IP]:PORT for IPv6)", v, fields[0])
	}
	return sec, nil
}

// manSecondaries is the man page's section on secondaries.
const manSecondaries = `.SH SECONDARIES
Knot, NSD or BIND can serve the zone as secondaries.
\fB\-\-secondary\fR \fIIP\fR[:\fIPORT\fR] (repeatable) lets that IP transfer the zone over TCP (AXFR, and IXFR from a history of the last 100,000 changes)
and sends a NOTIFY to IP:PORT (port 53 by default) after every change, coalesced and retried;
\fB\-\-tsig\-key\fR \fINAME\fR:hmac\-sha256:\fISECRET\fR (repeatable, or the systemd credential tsig\-keys, one a line) lets a transfer signed with that key come from any address.
Anyone else is REFUSED; a bad signature is NOTAUTH (BADKEY, BADSIG). A device with DDNS off is in no transfer.
SIGHUP applies changed secondaries and keys. The README has Knot and NSD configs that work as pasted; check a key with
\fBkdig \-y hmac\-sha256:\fR\fINAME\fR:\fISECRET\fR \fB@\fR\fIPRIMARY\fR \fIZONE\fR \fBAXFR\fR.
`

package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/urfave/cli/v3"
)

// manCommand prints the nasreach(8) man page, generated from the command tree
// so that it never disagrees with --help.
func manCommand() *cli.Command {
	return &cli.Command{
		Name:   "man",
		Usage:  "print the nasreach(8) man page (roff)",
		Hidden: true,
		Description: describe("make install installs it as nasreach(8); this shows it without installing.",
			"nasreach man | man -l -"),
		Action: func(_ context.Context, cmd *cli.Command) error {
			// The running tree, which urfave has completed (the
			// completion command), not a fresh one.
			return writeMan(cmd.Root().Writer, cmd.Root())
		},
	}
}

// roff escapes text for a man page.
func roff(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}

// manExample is a paragraph of the EXAMPLES section and its commands.
type manExample struct {
	text     string
	commands []string
}

// manExamples is the EXAMPLES section: the first day of an operator, in order.
var manExamples = []manExample{
	{"Run the daemon on the development defaults (loopback ports, data in ./data), or from its config file:",
		[]string{"nasreach serve", "nasreach serve --config /etc/nasreach/nasreach.toml"}},
	{"Check a config file, reporting every problem with its line, without starting:",
		[]string{"nasreach config check --config /etc/nasreach/nasreach.toml"}},
	{"Register a device (its token is shown once), give it an address as its DDNS client would, and resolve it:",
		[]string{"nasreach device add nas1", "nasreach device set-address --ipv4 203.0.113.10 nas1",
			"dig @127.0.0.1 -p 10053 nas1.myqnapcloud.com A +short"}},
	{"Manage devices of a daemon on this machine as root (through its local socket, no token), or from elsewhere with the admin token:",
		[]string{"nasreach device --data /var/lib/nasreach list",
			"NASREACH_ADMIN_TOKEN=$TOKEN nasreach device --server https://ddns.example.net list --json"}},
	{"Let a device update its own address by DNS UPDATE (nsupdate -k, ddclient's protocol=nsupdate) with a key of its own:",
		[]string{"nasreach device tsig add --key-file /etc/ddclient/nas1.key nas1"}},
	{"Let Link clients in only with an access code, and issue one:",
		[]string{"nasreach device set --access token nas1", "nasreach device code add nas1"}},
	{"On the NAS, expose its web interface through the relay; on a client, reach it at 127.0.0.1:8443:",
		[]string{"NASREACH_TOKEN=$TOKEN nasreach agent --server relay.example.net:7443 --device nas1 --expose 443=127.0.0.1:443",
			"NASREACH_ACCESS_CODE=$CODE nasreach connect --server relay.example.net:7443 nas1:443"}},
	{"Take a daily snapshot of the store, and count last month's connections:",
		[]string{"nasreach backup --data /var/lib/nasreach --out /var/backups/nasreach",
			"nasreach logs stats --dir /var/log/nasreach --from 2026-01-01 --to 2026-01-31"}},
	{"Complete commands and flags in bash:",
		[]string{"source <(nasreach completion bash)"}},
}

func writeMan(w io.Writer, root *cli.Command) error {
	var b strings.Builder
	fmt.Fprintf(&b, ".TH NASREACH 8 %q \"nasreach %s\" \"System Administration\"\n", time.Now().UTC().Format(time.DateOnly), roff(version))
	fmt.Fprintf(&b, ".SH NAME\nnasreach \\- %s\n", roff(root.Usage))
	b.WriteString(".SH SYNOPSIS\n.B nasreach\n.I command\n[\\fIoptions\\fR]\n")
	b.WriteString(".SH DESCRIPTION\nOne daemon (\\fBnasreach serve\\fR) is the authoritative DDNS nameserver for a zone, " +
		"the HTTP API that devices update through (REST and dyndns2), a STUN and TURN server, " +
		"the Link relay that reaches a NAS nobody can dial, and the privacy-keeping connection log; " +
		"the other commands manage it through its API (\\fBdevice\\fR, \\fBbackup\\fR), read its logs, " +
		"or are the two ends of Link (\\fBagent\\fR on the NAS, \\fBconnect\\fR on a client).\n")
	b.WriteString(".SH COMMANDS\n")
	var walk func(prefix string, c *cli.Command)
	walk = func(prefix string, c *cli.Command) {
		for _, sub := range c.Commands {
			if sub.Hidden {
				continue
			}
			name := prefix + " " + sub.Name
			fmt.Fprintf(&b, ".SS \"%s %s\"\n%s\n", roff(name), roff(sub.ArgsUsage), roff(sub.Usage))
			writeManDescription(&b, sub.Description)
			for _, f := range sub.Flags {
				writeManFlag(&b, f)
			}
			walk(name, sub)
		}
	}
	walk("nasreach", root)
	b.WriteString(manRRL + manSTUNTURN + manLink + manSecondaries + manDynamicUpdate)
	b.WriteString(".SH EXAMPLES\n")
	for _, e := range manExamples {
		fmt.Fprintf(&b, ".PP\n%s\n.PP\n.RS\n.nf\n", roff(e.text))
		for _, c := range e.commands {
			b.WriteString(roff(c) + "\n")
		}
		b.WriteString(".fi\n.RE\n")
	}
	b.WriteString(".SH SIGNALS\n.TP\n.B SIGHUP\nre-read the configuration and apply what can change live; the log names settings that need a restart.\n" +
		".TP\n.BR SIGINT \", \" SIGTERM\nfinish requests in progress and stop.\n")
	b.WriteString(".SH FILES\n.TP\n.I /etc/nasreach/nasreach.toml\nconfiguration (keys are the serve option names; see \\fBnasreach config default\\fR)\n" +
		".TP\n.I /var/lib/nasreach/nasreach.db\nthe device table\n.TP\n.I /var/lib/nasreach/admin.token\nthe admin token, mode 0600\n" +
		".TP\n.I /var/lib/nasreach/nasreach.sock\nthe local socket the device and backup commands use on the daemon's machine, mode 0600\n" +
		".TP\n.I /var/lib/nasreach/link\\-relay.crt\nthe Link relay's self-signed certificate, when no \\fB\\-\\-tls\\-cert\\fR is given\n" +
		".TP\n.I /var/log/nasreach/conn\\-YYYY\\-MM\\-DD.jsonl\nconnection logs, masked, kept six months\n")
	b.WriteString(".SH SEE ALSO\n.BR systemd.exec (5),\n.BR ddclient (8),\n.BR inadyn (8),\n.BR turnserver (1),\n.BR dig (1)\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// manRRL describes DNS rate limiting; manSTUNTURN and manLink describe the
// two relays: what they are for and the options that matter.
const (
	manRRL = `.SH "DNS RATE LIMITING"
A UDP query's source address is not proven, so an attacker can have answers sent to a victim.
As Knot and BIND do, serve limits UDP answers per client network (IPv4 /24, IPv6 /56):
\fB\-\-rrl\-rate\fR answers per second for one name and type, \fB\-\-rrl\-nxdomain\-rate\fR NXDOMAIN answers for the whole zone,
\fB\-\-rrl\-error\-rate\fR error answers; 0 lifts a limit.
Every \fB\-\-rrl\-slip\fR\-th limited answer is sent empty with TC set, so that a real resolver behind a limited network asks again over TCP, which is never limited; the others are dropped.
\fB\-\-rrl\-exempt\fR networks (loopback unless told otherwise) are never limited.
Whatever the limits, a UDP answer is at most 3 times the size of its query: ANY gets one RRset (RFC 8482),
UDP answers carry no glue, and a bigger answer is sent empty with TC set.
\fBnasreach_dns_rrl_total\fR counts the answers dropped and slipped.
`
	manSTUNTURN = `.SH "STUN AND TURN"
On \fB\-\-stun\fR (UDP and TCP; 0.0.0.0:3478 in production) the daemon answers STUN Binding requests (RFC 8489):
a client learns the address and port it is seen from, and nothing is stored.
Unless \fB\-\-turn=false\fR, the same port is a TURN relay (RFC 8656) for WebRTC-style clients that cannot reach each other directly;
with \fB\-\-tls\-cert\fR and \fB\-\-tls\-key\fR also TURN over TLS on \fB\-\-turns\fR (0.0.0.0:5349).
Clients send peer traffic to \fB\-\-turn\-relay\-ip\fR, the server's public address, which is required when \fB\-\-stun\fR is 0.0.0.0.
Credentials are those coturn users know:
.TP
a registered device
username: the device name; password: the lower-case hex SHA-256 of its token (the agent computes it).
.TP
\fB\-\-turn\-user\fR \fINAME:PASSWORD\fR
static long-term credentials, repeatable.
.TP
\fB\-\-turn\-secret\fR \fISECRET\fR
TURN REST API ephemeral credentials, as coturn's static-auth-secret: username \fIEXPIRY:NAME\fR (a Unix time), password base64(HMAC-SHA1(\fISECRET\fR, username)).
.PP
Peers on loopback, private, shared, link-local and other special-purpose addresses, and the server's own, are refused (403);
\fB\-\-turn\-allow\-peer\fR \fICIDR\fR opens a range.
Quotas: \fB\-\-turn\-max\-allocations\fR, \fB\-\-turn\-user\-quota\fR, \fB\-\-turn\-max\-lifetime\fR, \fB\-\-turn\-bandwidth\fR.
EVEN-PORT and RESERVATION-TOKEN (RFC 8656) are served as RTP/RTCP clients such as coturn's turnutils_uclient expect:
an even relayed port, and with the R bit the port above held for 30 s for the same user's allocation that names its token;
a held port counts towards \fB\-\-turn\-user\-quota\fR until taken.
A device deleted, or with Link switched off, loses its TURN credentials and allocations at once.
The relay never stores or logs payload; the connection log gets one record per allocation.
Every refused request (a wrong password or unknown user, a quota, a refused peer, any other error answer) is counted in
\fBnasreach_turn_refused_total\fR by reason, logged with the client address masked, and recorded in the connection log.
`
	manLink = `.SH LINK
Link reaches a NAS behind CGNAT or a firewall with no port forward.
The NAS runs \fBnasreach agent\fR, which holds one outbound QUIC connection to the relay (\fB\-\-link\fR, UDP; 0.0.0.0:7443 in production) and serves the ports it \fB\-\-expose\fRs, nothing else;
a client runs \fBnasreach connect\fR, which forwards each local TCP connection to one of those ports.
Inside every relayed stream client and NAS speak TLS 1.3 with the device's own key, which the client pins
(trust on first use in its known_devices file, or \fB\-\-fingerprint\fR), so the relay forwards ciphertext it cannot read.
.PP
The relay's certificate is \fB\-\-tls\-cert\fR and \fB\-\-tls\-key\fR, shared with TURN over TLS; agents and clients check it against the system roots.
Without them serve generates a self-signed one in the data directory once and logs its fingerprint, which agents and clients pin with \fB\-\-relay\-fingerprint\fR.
Limits: \fB\-\-link\-max\-agents\fR, \fB\-\-link\-max\-streams\fR, \fB\-\-link\-stream\-rate\fR, \fB\-\-link\-stream\-burst\fR, \fB\-\-link\-idle\-timeout\fR.
.PP
Sessions move to a direct path when one works: the relay introduces client and agent (their STUN and interface addresses), both punch a hole through their NATs with authenticated UDP probes, and the client opens QUIC straight to the agent, pinning the same device key.
The first session goes through the relay at once; a direct path that fails sends the next ones back through it.
\fBconnect\fR logs \fBpath=direct\fR or \fBpath=relay\fR for each session.
\fB\-\-direct never\fR on \fBagent\fR or \fBconnect\fR, or \fB\-\-link\-direct=false\fR on \fBserve\fR (live on reload), keeps every byte on the relay.
.PP
\fBnasreach device set \-\-link=false\fR \fINAME\fR ends a device's sessions at once and refuses new ones;
\fB\-\-access token\fR makes clients present an access code (\fBnasreach device code add\fR \fINAME\fR, then \fBconnect \-\-access\-code\fR).
`
)

// writeManDescription writes a command's Description: its text as a
// paragraph, its examples (see describe) as literal lines.
func writeManDescription(b *strings.Builder, desc string) {
	text, examples, _ := strings.Cut(desc, examplesHeading)
	if text = strings.TrimSpace(text); text != "" {
		b.WriteString(".PP\n" + roff(text) + "\n")
	}
	var lines []string
	for l := range strings.SplitSeq(examples, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, roff(l))
		}
	}
	if len(lines) > 0 {
		b.WriteString(".PP\n" + examplesHeading + "\n.RS\n.nf\n" + strings.Join(lines, "\n") + "\n.fi\n.RE\n")
	}
}

func writeManFlag(b *strings.Builder, f cli.Flag) {
	df, ok := f.(cli.DocGenerationFlag)
	if !ok {
		return
	}
	names := f.Names()
	if names[0] == "help" || names[0] == "version" {
		return // urfave's own, on every command
	}
	fmt.Fprintf(b, ".TP\n\\fB\\-\\-%s\\fR", roff(names[0]))
	if df.TakesValue() {
		b.WriteString(" \\fIvalue\\fR")
	}
	b.WriteString("\n" + roff(df.GetUsage()))
	if rf, ok := f.(cli.RequiredFlag); !ok || !rf.IsRequired() {
		if d := df.GetDefaultText(); d != "" {
			fmt.Fprintf(b, " (default: %s)", roff(d))
		} else if v := df.GetValue(); v != "" && v != `""` && df.TakesValue() {
			fmt.Fprintf(b, " (default: %s)", roff(v))
		}
	}
	if env := df.GetEnvVars(); len(env) > 0 {
		fmt.Fprintf(b, " [%s]", roff(strings.Join(env, ", ")))
	}
	b.WriteString("\n")
}

// manDynamicUpdate is the man page's section on RFC 2136 updates.
const manDynamicUpdate = `.SH "DYNAMIC UPDATE"
A device may change its own A and AAAA records, and its ACME challenge TXT at _acme\-challenge.\fINAME\fR, with DNS UPDATE (RFC 2136)
signed with its TSIG key, as \fBnsupdate\fR, ddclient's nsupdate protocol, certbot's dns\-rfc2136 plugin and lego's rfc2136 provider send it,
over UDP or TCP.
\fBPOST /v1/devices/\fR\fINAME\fR\fB/tsig\fR (device token or admin) issues the key, named after the device's FQDN,
hmac\-sha256, the secret shown once; calling it again replaces the key, \fBDELETE\fR revokes it.
Any other name or type is REFUSED, an unsigned or badly signed update NOTAUTH; prerequisites are evaluated
and the update applied in one transaction, answered once committed. The secret is stored as it is in the store
(checking a signature needs it) and copied by \fBnasreach backup\fR. Try it with
\fBnsupdate \-y hmac\-sha256:\fR\fINAME\fR:\fISECRET\fR.
`

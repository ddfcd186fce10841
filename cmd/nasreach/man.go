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

func writeMan(w io.Writer, root *cli.Command) error {
	var b strings.Builder
	fmt.Fprintf(&b, ".TH NASREACH 8 %q \"nasreach %s\" \"System Administration\"\n", time.Now().UTC().Format(time.DateOnly), roff(version))
	fmt.Fprintf(&b, ".SH NAME\nnasreach \\- %s\n", roff(root.Usage))
	b.WriteString(".SH SYNOPSIS\n.B nasreach\n.I command\n[\\fIoptions\\fR]\n")
	b.WriteString(".SH DESCRIPTION\nOne daemon (\\fBnasreach serve\\fR) is the authoritative DDNS nameserver for a zone, " +
		"the HTTP API that devices update through (REST and dyndns2), and the privacy-keeping connection log; " +
		"the other commands manage it through its API.\n")
	b.WriteString(".SH COMMANDS\n")
	var walk func(prefix string, c *cli.Command)
	walk = func(prefix string, c *cli.Command) {
		for _, sub := range c.Commands {
			if sub.Hidden {
				continue
			}
			name := prefix + " " + sub.Name
			fmt.Fprintf(&b, ".SS \"%s %s\"\n%s\n", roff(name), roff(sub.ArgsUsage), roff(sub.Usage))
			for _, f := range sub.Flags {
				writeManFlag(&b, f)
			}
			walk(name, sub)
		}
	}
	walk("nasreach", root)
	b.WriteString(".SH SIGNALS\n.TP\n.B SIGHUP\nre-read the configuration and apply what can change live; the log names settings that need a restart.\n" +
		".TP\n.BR SIGINT \", \" SIGTERM\nfinish requests in progress and stop.\n")
	b.WriteString(".SH FILES\n.TP\n.I /etc/nasreach/nasreach.toml\nconfiguration (keys are the serve option names; see \\fBnasreach config default\\fR)\n" +
		".TP\n.I /var/lib/nasreach/nasreach.db\nthe device table\n.TP\n.I /var/lib/nasreach/admin.token\nthe admin token, mode 0600\n" +
		".TP\n.I /var/log/nasreach/conn\\-YYYY\\-MM\\-DD.jsonl\nconnection logs, masked, kept six months\n")
	b.WriteString(".SH SEE ALSO\n.BR systemd.exec (5),\n.BR ddclient (8),\n.BR inadyn (8)\n")
	_, err := io.WriteString(w, b.String())
	return err
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

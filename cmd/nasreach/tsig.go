package main

import (
	"context"
	"fmt"
	"os"

	"github.com/nasreach/nasreach/api/client"
	"github.com/urfave/cli/v3"
)

// tsigCommand is "device tsig": a device's TSIG key for DNS dynamic updates
// (RFC 2136), as nsupdate and ddclient's nsupdate protocol use it.
func tsigCommand() *cli.Command {
	return &cli.Command{
		Name:  "tsig",
		Usage: "issue and revoke a device's TSIG key for DNS dynamic updates (nsupdate)",
		Description: describe("A device with a TSIG key may change its own A and AAAA records with DNS UPDATE (RFC 2136), "+
			"as nsupdate -y hmac-sha256:NAME:SECRET or ddclient's protocol=nsupdate (a BIND key file) send it. "+
			"The key is named after the device's FQDN; its secret is shown once, when issued. "+
			"Issuing a key again replaces the old one, which stops working at once.",
			"nasreach device tsig add nas1",
			"nasreach device tsig add --key-file /etc/ddclient/nas1.key nas1",
			"nasreach device tsig rm nas1"),
		Commands: []*cli.Command{
			{
				Name: "add", Usage: "issue a TSIG key (replacing the old one) and print it, or write it as a BIND key file", ArgsUsage: "NAME",
				Description: describe("With --key-file the key is written (mode 0600) in the form tsig-keygen prints, "+
					"which nsupdate -k and ddclient's password= take, and the secret is not printed.",
					"nasreach device tsig add nas1",
					"nasreach device tsig add --key-file nas1.key nas1"),
				Flags:  []cli.Flag{&cli.StringFlag{Name: "key-file", Usage: "write the key to this file (mode 0600, replaced if it exists) instead of printing its secret"}},
				Action: tsigAdd,
			},
			{
				Name: "rm", Usage: "revoke a device's TSIG key; updates signed with it are refused at once", ArgsUsage: "NAME",
				Description: describe("", "nasreach device tsig rm nas1"),
				Action:      tsigRm,
			},
		},
	}
}

// bindKeyFile is k in the form of a BIND key file (tsig-keygen's output).
func bindKeyFile(k client.IssuedTSIGKey) string {
	return fmt.Sprintf("key \"%s\" {\n\talgorithm %s;\n\tsecret \"%s\";\n};\n", k.Name, k.Algorithm, k.Secret)
}

func tsigAdd(ctx context.Context, cmd *cli.Command) error {
	name, c, err := nameAndClient(cmd)
	if err != nil {
		return err
	}
	k, err := c.IssueTSIGKey(ctx, name)
	if err != nil {
		return fmt.Errorf("issue a TSIG key for %s: %w", name, err)
	}
	w := cmd.Root().Writer
	if file := cmd.String("key-file"); file != "" {
		if err := writeKeyFile(file, bindKeyFile(k)); err != nil {
			return fmt.Errorf("the new key of %s is in force but could not be written (issue another): %w", name, err)
		}
		fmt.Fprintf(w, "wrote TSIG key %s (%s) to %s\n(nsupdate -k %s; ddclient: protocol=nsupdate, password=%s)\n", k.Name, k.Algorithm, file, file, file)
		return nil
	}
	fmt.Fprintf(w, "name:      %s\nalgorithm: %s\nsecret:    %s\n(the secret is shown only now; nsupdate -y %s:%s:SECRET takes it)\n",
		k.Name, k.Algorithm, k.Secret, k.Algorithm, k.Name)
	return nil
}

// writeKeyFile writes a key file readable by its owner only, replacing
// the file at path.
func writeKeyFile(path, text string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	// An existing file keeps its mode through O_TRUNC: make it private.
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.WriteString(text); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func tsigRm(ctx context.Context, cmd *cli.Command) error {
	name, c, err := nameAndClient(cmd)
	if err != nil {
		return err
	}
	if err := c.RevokeTSIGKey(ctx, name); err != nil {
		return fmt.Errorf("revoke the TSIG key of %s: %w", name, err)
	}
	fmt.Fprintf(cmd.Root().Writer, "revoked the TSIG key of %s (if it had one)\n", name)
	return nil
}

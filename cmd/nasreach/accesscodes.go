package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"text/tabwriter"
	"time"

	"github.com/nasreach/nasreach/api/client"
	"github.com/urfave/cli/v3"
)

// accessCodeCommand is "device code": the Link access codes of a device,
// which clients of a device with access "token" must present.
func accessCodeCommand() *cli.Command {
	return &cli.Command{
		Name:  "code",
		Usage: "issue, list and revoke a device's Link access codes",
		Description: describe("A device with access \"token\" (nasreach device set --access token NAME) lets a Link client in "+
			"only with one of its access codes (nasreach connect --access-code). A code is shown once, when issued; "+
			"the daemon keeps only its hash.",
			"nasreach device code add nas1",
			"nasreach device code list nas1",
			"nasreach device code rm nas1 k3v9qzaxm2"),
		Commands: []*cli.Command{
			{
				Name: "add", Usage: "issue an access code and print it (shown once) with its id", ArgsUsage: "NAME",
				Description: describe("", "nasreach device code add nas1"),
				Action:      accessCodeAdd,
			},
			{
				Name: "list", Usage: "list a device's access codes: ids and when issued, never the codes", ArgsUsage: "NAME",
				Description: describe("", "nasreach device code list nas1"),
				Action:      accessCodeList,
			},
			{
				Name: "rm", Usage: "revoke an access code; it stops working at once", ArgsUsage: "NAME ID",
				Description: describe("", "nasreach device code rm nas1 k3v9qzaxm2"),
				Action:      accessCodeRm,
			},
		},
	}
}

func accessCodeAdd(ctx context.Context, cmd *cli.Command) error {
	name, c, err := nameAndClient(cmd)
	if err != nil {
		return err
	}
	ac, err := c.AddAccessCode(ctx, name)
	if err != nil {
		return fmt.Errorf("issue an access code for %s: %w", name, err)
	}
	w := cmd.Root().Writer
	fmt.Fprintf(w, "id:   %s\ncode: %s\n(the code is shown only now; Link clients pass it with --access-code)\n", ac.ID, ac.Code)
	if d, err := c.Device(ctx, name); err == nil && d.Access != client.AccessToken {
		fmt.Fprintf(w, "(%s has access %s, so clients need no code yet; 'nasreach device set --access token %s' requires one)\n", d.Name, d.Access, d.Name)
	}
	return nil
}

func accessCodeList(ctx context.Context, cmd *cli.Command) error {
	name, c, err := nameAndClient(cmd)
	if err != nil {
		return err
	}
	d, err := c.Device(ctx, name)
	if err != nil {
		return err
	}
	w := cmd.Root().Writer
	if len(d.AccessCodes) == 0 {
		fmt.Fprintf(w, "%s has no access codes ('nasreach device code add %s' issues one)\n", d.Name, d.Name)
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tCREATED")
	for _, ac := range d.AccessCodes {
		fmt.Fprintf(tw, "%s\t%s\n", ac.ID, ac.Created.UTC().Format(time.RFC3339))
	}
	return tw.Flush()
}

func accessCodeRm(ctx context.Context, cmd *cli.Command) error {
	if cmd.Args().Len() != 2 {
		return fmt.Errorf("rm: want a device NAME and an access code ID ('nasreach device code list NAME' shows the ids)")
	}
	name, id := cmd.Args().Get(0), cmd.Args().Get(1)
	c, err := newAPIClient(cmd)
	if err != nil {
		return err
	}
	if err := c.RevokeAccessCode(ctx, name, id); err != nil {
		if ce := (*client.Error)(nil); errors.As(err, &ce) && ce.Status == http.StatusNotFound {
			return fmt.Errorf("revoke access code %s of %s: %w ('nasreach device code list %s' shows its codes)", id, name, err, name)
		}
		return fmt.Errorf("revoke access code %s of %s: %w", id, name, err)
	}
	fmt.Fprintf(cmd.Root().Writer, "revoked access code %s of %s\n", id, name)
	return nil
}

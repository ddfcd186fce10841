package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/nasreach/nasreach/store"
	"github.com/urfave/cli/v3"
)

// storeCommand inspects the store file offline: the daemon refuses a damaged
// store at start, and this says the same about a file, a snapshot included,
// without starting anything.
func storeCommand() *cli.Command {
	return &cli.Command{
		Name:  "store",
		Usage: "inspect the store file while the daemon is stopped",
		Description: describe("",
			"systemctl stop nasreach && nasreach store check --data /var/lib/nasreach",
			"nasreach store check --db /var/backups/nasreach/nasreach-2026-12-01.db"),
		Commands: []*cli.Command{
			{
				Name: "check",
				Usage: "check the store file read-only: size, header pages, every page (bbolt's consistency check) " +
					"and every device record; exit status 1 and the reason when it is damaged",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "data", Value: defaultDataDir, Usage: "the daemon's data directory; checks <data>/" + store.FileName, Sources: cli.EnvVars("NASREACH_DATA", "STATE_DIRECTORY")},
					&cli.StringFlag{Name: "db", Usage: "a store file to check instead, e.g. a snapshot from nasreach backup"},
				},
				Description: describe("Read-only and offline: it refuses a store the daemon holds (check a snapshot instead). "+
					"A damaged store is never modified; restore a backup or move the file away to start empty.",
					"nasreach store check --data /var/lib/nasreach",
					"nasreach store check --db /var/backups/nasreach/nasreach-2026-12-01.db"),
				Action: storeCheck,
			},
		},
	}
}

func storeCheck(_ context.Context, cmd *cli.Command) error {
	path := cmd.String("db")
	if path == "" {
		path = filepath.Join(cmd.String("data"), store.FileName)
	}
	r, err := store.Check(path, true)
	if errors.Is(err, store.ErrLocked) {
		return fmt.Errorf("%w; stop it to check its store, or check a snapshot (nasreach backup --out DIR, then nasreach store check --db FILE)", err)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(cmd.Root().Writer, "store %s is sound: %d devices, %d access codes, %d quarantined names; "+
		"schema %d, %d bytes in %d pages of %d (%d free), transaction %d\n",
		r.Path, r.Devices, r.AccessCodes, r.Quarantined, r.Schema, r.Bytes, r.Pages, r.PageSize, r.FreePages, r.TxID)
	return nil
}

package main

import (
	"cmp"
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
		Usage: "inspect the store file while the daemon is stopped, or import it into etcd",
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
			{
				Name: "import",
				Usage: "copy a store file (a snapshot from nasreach backup, or a stopped node's nasreach.db) " +
					"into an empty etcd prefix: move from bbolt to etcd, or restore an etcd table",
				Flags: append([]cli.Flag{
					&cli.StringFlag{Name: "db", Required: true, Usage: "the store file to import; it is checked first and only read"},
				}, storeFlags()[1:]...),
				Description: describe("The prefix must hold no device table yet; the file is checked in full first. "+
					"Start the nodes with --store etcd on the prefix afterwards (restart any already running on it).",
					"nasreach store import --db /var/backups/nasreach/nasreach-2026-12-01.db --etcd-endpoints https://etcd1:2379 --etcd-prefix /nasreach"),
				Action: storeImport,
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

func storeImport(ctx context.Context, cmd *cli.Command) error {
	sc := storeConfigFromFlags(cmd)
	if len(sc.EtcdEndpoints) == 0 {
		return errors.New("etcd-endpoints: give the client URLs of the cluster to import into")
	}
	rep, err := store.ImportEtcd(ctx, cmd.String("db"), store.EtcdConfig{
		Endpoints: sc.EtcdEndpoints, Prefix: sc.EtcdPrefix, CertFile: sc.EtcdCert, KeyFile: sc.EtcdKey, CAFile: sc.EtcdCA,
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(cmd.Root().Writer, "imported %s into etcd prefix %s: %d devices, %d access codes, %d quarantined names; serial %d\n",
		cmd.String("db"), cmp.Or(sc.EtcdPrefix, "/nasreach"), rep.Devices, rep.AccessCodes, rep.Quarantined, rep.Serial)
	return nil
}

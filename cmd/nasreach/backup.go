package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/nasreach/nasreach/api/client"
	"github.com/nasreach/nasreach/connlog"
	"github.com/nasreach/nasreach/store"
	"github.com/urfave/cli/v3"
)

// backupPrefix names snapshots backupPrefix+YYYY-MM-DD.db.
const backupPrefix = "nasreach-"

// backupCommand takes an online snapshot through the running daemon and
// deletes snapshots past the retention, so that erased data leaves backups too.
func backupCommand() *cli.Command {
	return &cli.Command{
		Name:  "backup",
		Usage: "write a consistent snapshot of the running daemon's store and delete snapshots past retention",
		Description: describe("Run it daily (a systemd timer or cron); restore by copying a snapshot to <data>/nasreach.db "+
			"while the daemon is stopped.",
			"nasreach backup --data /var/lib/nasreach --out /var/backups/nasreach"),
		Flags: append(apiClientFlags(),
			&cli.StringFlag{Name: "out", Required: true, Usage: "directory for snapshots (nasreach-YYYY-MM-DD.db; a second one on a day .2.db, and so on)"},
			&cli.DurationFlag{Name: "retention", Value: connlog.DefaultRetention, Usage: "delete snapshots older than this", DefaultText: retentionDefault},
			&cli.BoolFlag{Name: "if-housekeeping", Usage: "on etcd, back up only if this node does the cluster's housekeeping, else say so and succeed: the same daily timer on every node, one backup a day"},
		),
		Action: runBackup,
	}
}

func runBackup(ctx context.Context, cmd *cli.Command) error {
	c, err := newAPIClient(cmd)
	if err != nil {
		return err
	}
	dir := cmd.String("out")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create backup directory: %w", err)
	}
	now := time.Now().UTC()
	tmp, err := os.CreateTemp(dir, ".partial-*")
	if err != nil {
		return fmt.Errorf("create snapshot file: %w", err)
	}
	defer os.Remove(tmp.Name()) // the kept snapshot is a link of its own
	backup := c.Backup
	if cmd.Bool("if-housekeeping") {
		backup = c.BackupIfHousekeeping
	}
	snapshot, err := backup(ctx)
	if apiErr := (*client.Error)(nil); errors.As(err, &apiErr) && apiErr.Status == http.StatusConflict && cmd.Bool("if-housekeeping") {
		tmp.Close()
		fmt.Fprintln(cmd.Root().Writer, "no snapshot: this node does not do the cluster's housekeeping; the node that does takes it")
		return nil
	}
	if err != nil {
		tmp.Close()
		return err
	}
	n, err := io.Copy(tmp, snapshot)
	snapshot.Close()
	err = errors.Join(err, tmp.Sync(), tmp.Close())
	if err != nil {
		return fmt.Errorf("download snapshot: %w", err)
	}
	if err := checkSnapshot(tmp.Name()); err != nil {
		return err
	}
	final, err := keepSnapshot(tmp.Name(), dir, now)
	if err != nil {
		return err
	}
	removed, err := connlog.RemoveDatedBefore(dir, backupPrefix, now.Add(-cmd.Duration("retention")))
	if err != nil {
		return fmt.Errorf("delete old snapshots: %w", err)
	}
	w := cmd.Root().Writer
	fmt.Fprintf(w, "snapshot %s (%d bytes)\n", final, n)
	for _, r := range removed {
		fmt.Fprintf(w, "deleted %s (past retention)\n", r)
	}
	return nil
}

// keepSnapshot gives the checked snapshot tmp its name in dir: the day's
// nasreach-YYYY-MM-DD.db, or, when a snapshot of that day is there already,
// the next free nasreach-YYYY-MM-DD.N.db. A link never replaces a file, so
// a second backup on one day cannot overwrite the first.
func keepSnapshot(tmp, dir string, now time.Time) (string, error) {
	day := backupPrefix + now.Format(time.DateOnly)
	for n := 1; n < 1000; n++ {
		name := day + ".db"
		if n > 1 {
			name = fmt.Sprintf("%s.%d.db", day, n)
		}
		final := filepath.Join(dir, name)
		err := os.Link(tmp, final)
		if err == nil {
			return final, nil
		}
		if !errors.Is(err, os.ErrExist) {
			return "", fmt.Errorf("store snapshot: %w", err)
		}
	}
	return "", fmt.Errorf("store snapshot: %s already holds 999 snapshots of %s", dir, now.Format(time.DateOnly))
}

// checkSnapshot checks a downloaded snapshot as nasreach store check does,
// so a bad download is refused rather than kept as a backup.
func checkSnapshot(path string) error {
	_, err := store.Check(path, true)
	if de := (*store.DamagedError)(nil); errors.As(err, &de) {
		return fmt.Errorf("the downloaded snapshot is damaged: %s", de.Problem)
	}
	if err != nil {
		return fmt.Errorf("check the downloaded snapshot: %w", err)
	}
	return nil
}

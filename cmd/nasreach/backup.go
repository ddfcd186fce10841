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
		Flags: append(deviceCommand().Flags,
			&cli.StringFlag{Name: "out", Required: true, Usage: "directory for snapshots (nasreach-YYYY-MM-DD.db)"},
			&cli.DurationFlag{Name: "retention", Value: connlog.DefaultRetention, Usage: "delete snapshots older than this (default six months)"},
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
	final := filepath.Join(dir, backupPrefix+now.Format(time.DateOnly)+".db")
	tmp, err := os.CreateTemp(dir, ".partial-*")
	if err != nil {
		return fmt.Errorf("create snapshot file: %w", err)
	}
	defer os.Remove(tmp.Name()) // after the rename this removes nothing
	resp, err := c.request(ctx, http.MethodGet, "/v1/admin/backup", nil)
	if err != nil {
		tmp.Close()
		return err
	}
	n, err := io.Copy(tmp, resp.Body)
	resp.Body.Close()
	err = errors.Join(err, tmp.Sync(), tmp.Close())
	if err != nil {
		return fmt.Errorf("download snapshot: %w", err)
	}
	if err := checkSnapshot(tmp.Name()); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), final); err != nil {
		return fmt.Errorf("store snapshot: %w", err)
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

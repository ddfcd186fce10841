package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"filippo.io/age"
	"github.com/nasreach/nasreach/connlog"
	"github.com/urfave/cli/v3"
)

// logsCommand reads connection logs: aggregate stats, decrypted records, and
// the key pair for encrypted logs.
func logsCommand() *cli.Command {
	dirFlags := []cli.Flag{
		&cli.StringFlag{Name: "data", Value: defaultDataDir, Usage: "the daemon's data directory", Sources: cli.EnvVars("NASREACH_DATA", "STATE_DIRECTORY")},
		&cli.StringFlag{Name: "dir", Usage: "connection log directory", DefaultText: "<data>/logs", Sources: cli.EnvVars("NASREACH_LOG_DIR", "LOGS_DIRECTORY")},
		&cli.StringFlag{Name: "key", Usage: "age private key file, to read encrypted logs"},
	}
	return &cli.Command{
		Name:  "logs",
		Usage: "read connection logs (counts, records) and make the key for encrypted logs",
		Description: describe("Connection logs hold masked client addresses and counts, never payload, one file per UTC day, "+
			"for six months (serve --log-retention).",
			"nasreach logs stats --dir /var/log/nasreach",
			"nasreach logs read --dir /var/log/nasreach --key ~/nasreach-logs.key"),
		Commands: []*cli.Command{
			{
				Name:  "stats",
				Usage: "aggregate counts per day and service; no address or device name unless --by-device",
				Description: describe("",
					"nasreach logs stats --dir /var/log/nasreach --from 2026-01-01 --to 2026-01-31",
					"nasreach logs stats --json | jq '.rows[] | select(.service == \"link\") | .bytes_out'"),
				Flags: append([]cli.Flag{
					&cli.StringFlag{Name: "from", Usage: "first day, YYYY-MM-DD"},
					&cli.StringFlag{Name: "to", Usage: "last day, YYYY-MM-DD"},
					&cli.BoolFlag{Name: "by-device", Usage: "add per-device counts (names devices: operator use only)"},
					jsonFlag(),
				}, dirFlags...),
				Action: logsStats,
			},
			{
				Name: "read", Usage: "print the records of log files as JSON lines, decrypting with --key", ArgsUsage: "[FILE...]",
				Description: describe("Without FILE, every log file in the log directory (--dir), oldest first; "+
					"a FILE given by name alone is looked for there too.",
					"nasreach logs read --dir /var/log/nasreach --key ~/nasreach-logs.key conn-2026-12-01.jsonl.age",
					"nasreach logs read --dir /var/log/nasreach | jq -c 'select(.outcome != \"ok\")'"),
				Flags: dirFlags, Action: logsRead,
			},
			{
				Name:  "keygen",
				Usage: "create an age key pair for --log-encrypt-to; keep the private key away from the server",
				Description: describe("Run it on your own machine, copy only the public key to the server.",
					"nasreach logs keygen --out ~/nasreach-logs.key"),
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "out", Required: true, Usage: "private key file to create (mode 0600)"},
					&cli.StringFlag{Name: "pub", Usage: "public key file to create", DefaultText: "<out>.pub"},
				},
				Action: logsKeygen,
			},
		},
	}
}

func logDir(cmd *cli.Command) string {
	if d := cmd.String("dir"); d != "" {
		return d
	}
	return filepath.Join(cmd.String("data"), "logs")
}

func identities(cmd *cli.Command) ([]age.Identity, error) {
	if k := cmd.String("key"); k != "" {
		return connlog.LoadIdentities(k)
	}
	return nil, nil
}

func parseDay(flag, v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.DateOnly, v)
	if err != nil {
		return t, fmt.Errorf("--%s %q: want YYYY-MM-DD", flag, v)
	}
	return t, nil
}

func logsStats(_ context.Context, cmd *cli.Command) error {
	var o connlog.StatsOptions
	var err error
	if o.From, err = parseDay("from", cmd.String("from")); err != nil {
		return err
	}
	if o.To, err = parseDay("to", cmd.String("to")); err != nil {
		return err
	}
	if o.Identities, err = identities(cmd); err != nil {
		return err
	}
	o.ByDevice = cmd.Bool("by-device")
	st, err := connlog.Summarize(logDir(cmd), o)
	if err != nil {
		return err
	}
	if cmd.Bool("json") {
		if st.Rows == nil {
			st.Rows = []connlog.StatsRow{} // [], not null, for jq
		}
		return printJSON(cmd.Root().Writer, st)
	}
	return st.WriteText(cmd.Root().Writer)
}

func logsRead(_ context.Context, cmd *cli.Command) error {
	files, err := logFiles(cmd)
	if err != nil {
		return err
	}
	ids, err := identities(cmd)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(cmd.Root().Writer)
	defer w.Flush()
	enc := json.NewEncoder(w)
	for _, f := range files {
		if err := connlog.ReadFile(f, ids, func(r connlog.Record) error { return enc.Encode(r) }); err != nil {
			return err
		}
	}
	return nil
}

// logFiles are the files logs read prints: those named (a bare name that is
// not in the working directory is taken from the log directory), or every
// log file in the log directory.
func logFiles(cmd *cli.Command) ([]string, error) {
	dir := logDir(cmd)
	if cmd.Args().Len() == 0 {
		files, err := connlog.Files(dir)
		if err != nil {
			return nil, fmt.Errorf("read: %w", err)
		}
		if len(files) == 0 {
			return nil, fmt.Errorf("read: no connection log files in %s (see --dir)", dir)
		}
		return files, nil
	}
	var files []string
	for _, f := range cmd.Args().Slice() {
		if _, err := os.Stat(f); errors.Is(err, os.ErrNotExist) && filepath.Base(f) == f {
			f = filepath.Join(dir, f)
		}
		files = append(files, f)
	}
	return files, nil
}

func logsKeygen(_ context.Context, cmd *cli.Command) error {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		return fmt.Errorf("generate key: %w", err)
	}
	out := cmd.String("out")
	pub := cmd.String("pub")
	if pub == "" {
		pub = out + ".pub"
	}
	f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create private key file (it must not exist yet): %w", err)
	}
	_, err = fmt.Fprintf(f, "# nasreach connection log key, created %s\n# public key: %s\n%s\n",
		time.Now().UTC().Format(time.RFC3339), id.Recipient(), id)
	if err = errors.Join(err, f.Close()); err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	if err := os.WriteFile(pub, []byte(id.Recipient().String()+"\n"), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", pub, err)
	}
	fmt.Fprintf(cmd.Root().Writer, "private key: %s (keep it off the server)\npublic key:  %s\nstart the daemon with --log-encrypt-to %s\n", out, pub, pub)
	return nil
}

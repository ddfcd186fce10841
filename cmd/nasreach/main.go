// Command nasreach is the nasreach daemon and its command-line tools: serve
// runs the DDNS nameserver, the API, STUN/TURN and the Link relay; device,
// backup and logs manage it; agent and connect are the two ends of Link.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"
	"github.com/urfave/cli/v3"
)

// version is set by the linker (make build) from git describe.
var version = "dev"

func main() {
	if err := newApp(os.Stdout, os.Stderr).Run(context.Background(), os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "nasreach:", err)
		os.Exit(1)
	}
}

// newApp builds the command tree; tests run it with their own writers.
func newApp(stdout, stderr io.Writer) *cli.Command {
	return withGroupActions(&cli.Command{
		Name:    "nasreach",
		Usage:   "self-hostable remote access for NAS devices: DDNS nameserver, relay, privacy by design",
		Version: version,
		Description: describe("",
			"nasreach serve --config /etc/nasreach/nasreach.toml",
			"nasreach device add nas1",
			"nasreach help device"),
		Writer:    stdout,
		ErrWriter: stderr,
		// helpCommand replaces urfave's, which would be listed under
		// every command and only looks one level down.
		HideHelpCommand:                 true,
		EnableShellCompletion:           true,
		ConfigureShellCompletionCommand: configureCompletion,
		Commands: []*cli.Command{
			serveCommand(),
			deviceCommand(),
			agentCommand(),
			connectCommand(),
			logsCommand(),
			configCommand(),
			manCommand(),
			backupCommand(),
			storeCommand(),
			helpCommand(),
		},
	})
}

// logFlags are the logging flags every long-running subcommand takes.
func logFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error", Sources: cli.EnvVars("NASREACH_LOG_LEVEL")},
		&cli.StringFlag{Name: "log-format", Value: "auto", Usage: "json, console, or auto (console on a terminal, JSON otherwise)", Sources: cli.EnvVars("NASREACH_LOG_FORMAT")},
	}
}

// newLogger builds the process logger from the log flags, writing to w (the
// app's ErrWriter: standard error in the binary, a buffer in tests that read
// the log). Its level is a logLevel that a reload changes
// (daemon.Config.SetLogLevel), not zerolog's process-wide one.
func newLogger(cmd *cli.Command, w io.Writer) (zerolog.Logger, *logLevel, error) {
	lvl, err := parseLogLevel(cmd.String("log-level"))
	if err != nil {
		return zerolog.Logger{}, nil, err
	}
	switch f := cmd.String("log-format"); f {
	case "json":
	case "console":
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: "15:04:05"}
	case "auto":
		if fd, ok := w.(interface{ Fd() uintptr }); ok && isatty.IsTerminal(fd.Fd()) {
			w = zerolog.ConsoleWriter{Out: w, TimeFormat: "15:04:05"}
		}
	default:
		return zerolog.Logger{}, nil, fmt.Errorf("--log-format %q: want json, console or auto", f)
	}
	lv := &logLevel{}
	lv.Set(lvl)
	return zerolog.New(w).Sample(lv).With().Timestamp().Logger(), lv, nil
}

// parseLogLevel reads --log-level.
func parseLogLevel(s string) (zerolog.Level, error) {
	lvl, err := zerolog.ParseLevel(strings.ToLower(s))
	if err != nil || lvl == zerolog.NoLevel {
		return 0, fmt.Errorf("--log-level %q: want debug, info, warn or error", s)
	}
	return lvl, nil
}

// logLevel is the process logger's level, changed live by a reload. It is a
// zerolog.Sampler, which the logger asks before it builds an event, so a
// record below the level costs no formatting (a level-filtering writer
// would format it first).
type logLevel struct{ v atomic.Int32 }

// Set changes the level from the next record on.
func (l *logLevel) Set(lvl zerolog.Level) { l.v.Store(int32(lvl)) }

// Sample implements zerolog.Sampler.
func (l *logLevel) Sample(lvl zerolog.Level) bool { return int32(lvl) >= l.v.Load() }

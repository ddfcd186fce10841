package main

import (
	"context"

	"github.com/nasreach/nasreach/daemon"
	"github.com/rs/zerolog"
)

// reload re-reads the configuration serve would start with (args as
// os.Args: flags, environment and config file) and hands it to the daemon.
// A config that does not parse is refused whole and the running one is kept.
func reload(ctx context.Context, d *daemon.Daemon, args []string, log zerolog.Logger) {
	next, err := parseServeConfig(ctx, args)
	if err != nil {
		log.Error().Err(err).Msg("reload refused; the running configuration stays")
		return
	}
	d.Reload(next)
}

package turnserver

import (
	"fmt"

	"github.com/nasreach/nasreach/anonymize"
	"github.com/pion/logging"
	"github.com/rs/zerolog"
)

// pionLoggerFactory routes pion's logs to zerolog: warnings and errors only
// (pion's debug and info lines print every client and peer address), both at
// warn level (pion's errors are mostly a client gone away), and with every
// address in the text masked.
type pionLoggerFactory struct{ log zerolog.Logger }

// NewLogger implements logging.LoggerFactory.
func (f pionLoggerFactory) NewLogger(scope string) logging.LeveledLogger {
	return pionLogger{log: f.log.With().Str("scope", scope).Logger()}
}

type pionLogger struct{ log zerolog.Logger }

func (pionLogger) Trace(string)                        {}
func (pionLogger) Tracef(string, ...any)               {}
func (pionLogger) Debug(string)                        {}
func (pionLogger) Debugf(string, ...any)               {}
func (pionLogger) Info(string)                         {}
func (pionLogger) Infof(string, ...any)                {}
func (l pionLogger) Warn(msg string)                   { l.warn("%s", msg) }
func (l pionLogger) Warnf(format string, args ...any)  { l.warn(format, args...) }
func (l pionLogger) Error(msg string)                  { l.warn("%s", msg) }
func (l pionLogger) Errorf(format string, args ...any) { l.warn(format, args...) }

// warn formats and masks the message only when warn level is on: pion logs
// on hot paths (every failed send to a client gone away).
func (l pionLogger) warn(format string, args ...any) {
	if e := l.log.Warn(); e.Enabled() {
		e.Msg(anonymize.Text(fmt.Sprintf(format, args...)))
	}
}

// Package connlog is the only writer of connection logs: one JSON line per
// event about a connection (a DNS update, a relay or TURN session, optionally a
// DNS query), in one file per UTC day, with client addresses masked on write
// whatever the caller passed, deleted after the retention period, and
// optionally encrypted to a public key the daemon cannot decrypt with.
//
// File format: conn-YYYY-MM-DD.jsonl (plain) or conn-YYYY-MM-DD[.N].jsonl.age
// (an age file per day and daemon run: an age stream cannot be appended to),
// each line an object with the fields of Event in snake case.
package connlog

import (
	"bufio"
	"cmp"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"filippo.io/age"
	"github.com/nasreach/nasreach/anonymize"
	"github.com/rs/zerolog"
)

// Defaults for Config.
const (
	// DefaultRetention is six months: files older than this are deleted.
	DefaultRetention = 183 * 24 * time.Hour
	// DefaultQueue is how many events may wait for the writer before new ones
	// are dropped (and counted).
	DefaultQueue = 8192
	flushEvery   = time.Second
	pruneEvery   = time.Hour
	filePrefix   = "conn-"
	dayLayout    = "2006-01-02"
)

// Event is one record about a connection. Client is masked on write; Detail is
// scrubbed of addresses and e-mail. Payload is never an Event field.
type Event struct {
	Time     time.Time  // when it happened (the end, for a session); zero means now
	Service  string     // "ddns", "acme", "api", "dns", "link" or "turn"
	Kind     string     // "update", "query", "session", "allocation", ...
	Outcome  string     // "ok", "refused", "badauth", "error", ...
	Device   string     // the device concerned, if known
	Client   netip.Addr // the client's address; only its masked form is written
	Port     uint16     // the device port of a Link session
	Start    time.Time  // the start of a session
	BytesIn  int64      // bytes from the client
	BytesOut int64      // bytes to the client
	Peers    int        // distinct peer addresses (TURN)
	Detail   string     // a short reason
}

// Config configures New.
type Config struct {
	// Dir holds the log files; it is created 0700. Required.
	Dir string
	// Retention is how long files are kept; zero means DefaultRetention.
	Retention time.Duration
	// MaxBytes, when positive, caps the directory: the oldest closed days are
	// deleted first when it is exceeded.
	MaxBytes int64
	// Recipients, when set, encrypt every file to these age public keys; the
	// daemon keeps no private key and cannot read the files back.
	Recipients []age.Recipient
	// IPv6Prefix is how many bits of an IPv6 address are kept (32–64); zero
	// means anonymize.DefaultIPv6Prefix.
	IPv6Prefix int
	// Queue is the number of events buffered for the writer; zero means
	// DefaultQueue.
	Queue int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger receives the sink's own problems (drops, write errors).
	Logger zerolog.Logger
}

// Log writes connection events. Log never blocks its callers.
type Log struct {
	dir        string
	retention  time.Duration
	maxBytes   int64
	recipients []age.Recipient
	v6bits     int
	now        func() time.Time
	log        zerolog.Logger

	ch      chan Event
	dropped atomic.Uint64
	written atomic.Uint64
	closing chan struct{}
	done    chan struct{}
	once    sync.Once

	// Owned by the writer goroutine.
	pending uint64 // events in buf since the last flush that reached the file
	day     string
	file    *os.File
	buf     *bufio.Writer
	enc     io.WriteCloser // the age stream, when encrypting
	zl      zerolog.Logger
}

// New creates the directory, deletes files past retention and starts the writer.
func New(cfg Config) (*Log, error) {
	if cfg.Dir == "" {
		return nil, errors.New("connlog: Config.Dir is required")
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create connection log directory %s: %w", cfg.Dir, err)
	}
	l := &Log{
		dir: cfg.Dir, retention: cmp.Or(cfg.Retention, DefaultRetention), maxBytes: cfg.MaxBytes,
		recipients: cfg.Recipients, v6bits: cmp.Or(cfg.IPv6Prefix, anonymize.DefaultIPv6Prefix),
		now: cfg.Now, log: cfg.Logger,
		ch: make(chan Event, cmp.Or(cfg.Queue, DefaultQueue)), closing: make(chan struct{}), done: make(chan struct{}),
	}
	if l.now == nil {
		l.now = time.Now
	}
	if l.v6bits < 32 || l.v6bits > 64 {
		return nil, fmt.Errorf("connlog: Config.IPv6Prefix %d out of range 32–64", l.v6bits)
	}
	if _, err := l.Prune(); err != nil {
		return nil, err
	}
	go l.run()
	return l, nil
}

// Log queues e for writing. If the queue is full the event is dropped and
// counted; the relay and DNS paths never wait for the disk.
func (l *Log) Log(e Event) {
	if e.Time.IsZero() {
		e.Time = l.now()
	}
	select {
	case <-l.closing:
		l.dropped.Add(1)
		return
	default:
	}
	select {
	case l.ch <- e:
	default:
		l.dropped.Add(1)
	}
}

// Dropped returns how many events were dropped because the queue was full.
func (l *Log) Dropped() uint64 { return l.dropped.Load() }

// Written returns how many events have reached the log file.
func (l *Log) Written() uint64 { return l.written.Load() }

// Close writes every queued event, closes the current file (finishing the age
// stream) and stops the writer.
func (l *Log) Close() error {
	l.once.Do(func() { close(l.closing) })
	<-l.done
	return l.closeFile()
}

func (l *Log) run() {
	defer close(l.done)
	flush := time.NewTicker(flushEvery)
	defer flush.Stop()
	prune := time.NewTicker(pruneEvery)
	defer prune.Stop()
	var reported uint64
	for {
		select {
		case e := <-l.ch:
			l.write(e)
			if len(l.ch) == 0 {
				l.flush()
			}
		case <-flush.C:
			l.flush()
			if d := l.dropped.Load(); d != reported {
				l.log.Warn().Uint64("dropped_total", d).Msg("connection log queue was full; events were dropped")
				reported = d
			}
		case <-prune.C:
			if _, err := l.Prune(); err != nil {
				l.log.Error().Err(err).Msg("connection log retention failed")
			}
		case <-l.closing:
			for {
				select {
				case e := <-l.ch:
					l.write(e)
				default:
					l.flush()
					return
				}
			}
		}
	}
}

func (l *Log) write(e Event) {
	day := l.now().UTC().Format(dayLayout)
	if day != l.day || l.file == nil {
		if err := l.closeFile(); err != nil {
			l.log.Error().Err(err).Msg("close connection log")
		}
		if err := l.openDay(day); err != nil {
			l.log.Error().Err(err).Msg("open connection log; event lost")
			l.dropped.Add(1)
			return
		}
	}
	ev := l.zl.Log().Time("time", e.Time.UTC()).Str("service", e.Service).Str("kind", e.Kind)
	if e.Outcome != "" {
		ev = ev.Str("outcome", e.Outcome)
	}
	if e.Device != "" {
		ev = ev.Str("device", e.Device)
	}
	if e.Client.IsValid() {
		ev = ev.Str("client", anonymize.AddrBits(e.Client, l.v6bits).String())
	}
	if e.Port != 0 {
		ev = ev.Uint16("port", e.Port)
	}
	if !e.Start.IsZero() {
		ev = ev.Time("start", e.Start.UTC())
	}
	if e.BytesIn != 0 || e.BytesOut != 0 {
		ev = ev.Int64("bytes_in", e.BytesIn).Int64("bytes_out", e.BytesOut)
	}
	if e.Peers != 0 {
		ev = ev.Int("peers", e.Peers)
	}
	if e.Detail != "" {
		ev = ev.Str("detail", anonymize.TextBits(e.Detail, l.v6bits))
	}
	ev.Send()
	l.pending++
}

// openDay opens the file for day: appended to when plain, a new numbered
// segment when encrypted.
func (l *Log) openDay(day string) error {
	name := filepath.Join(l.dir, filePrefix+day+".jsonl")
	flags := os.O_WRONLY | os.O_CREATE | os.O_APPEND
	if len(l.recipients) > 0 {
		flags = os.O_WRONLY | os.O_CREATE | os.O_EXCL
		name += ".age"
		for n := 2; ; n++ {
			if _, err := os.Stat(name); errors.Is(err, os.ErrNotExist) {
				break
			}
			name = filepath.Join(l.dir, fmt.Sprintf("%s%s.%d.jsonl.age", filePrefix, day, n))
		}
	}
	f, err := os.OpenFile(name, flags, 0o600)
	if err != nil {
		return fmt.Errorf("open %s: %w", name, err)
	}
	l.file, l.day = f, day
	l.buf = bufio.NewWriterSize(f, 64<<10)
	var w io.Writer = l.buf
	if len(l.recipients) > 0 {
		enc, err := age.Encrypt(l.buf, l.recipients...)
		if err != nil {
			f.Close()
			l.file = nil
			return fmt.Errorf("encrypt %s: %w", name, err)
		}
		l.enc, w = enc, enc
	}
	l.zl = zerolog.New(w)
	return nil
}

// flush writes the buffered events to the file. A failed write (a full
// disk) loses them, counted as dropped, and drops the file too: a bufio
// writer keeps its first error forever, so the next event opens the day's
// file afresh and logging resumes once the disk has room.
func (l *Log) flush() {
	if l.buf == nil {
		return
	}
	if err := l.buf.Flush(); err != nil {
		l.log.Error().Err(err).Uint64("events_lost", l.pending).Msg("write connection log; reopening it for the next event")
		l.dropped.Add(l.pending)
		l.pending = 0
		l.discardFile()
		return
	}
	l.written.Add(l.pending)
	l.pending = 0
}

// discardFile closes the file without writing what is buffered.
func (l *Log) discardFile() {
	l.file.Close()
	l.file, l.buf, l.enc = nil, nil, nil
}

func (l *Log) closeFile() error {
	if l.file == nil {
		return nil
	}
	var errs []error
	if l.enc != nil {
		errs = append(errs, l.enc.Close())
		l.enc = nil
	}
	if err := l.buf.Flush(); err != nil {
		l.dropped.Add(l.pending)
		errs = append(errs, err)
	} else {
		l.written.Add(l.pending)
	}
	l.pending = 0
	errs = append(errs, l.file.Sync(), l.file.Close())
	l.file, l.buf = nil, nil
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close connection log: %w", err)
	}
	return nil
}

// Prune deletes log files dated before the retention period and, with
// MaxBytes, the oldest closed days until the directory fits. It returns the
// names it deleted.
func (l *Log) Prune() ([]string, error) {
	removed, err := RemoveDatedBefore(l.dir, filePrefix, l.now().Add(-l.retention))
	if err != nil || l.maxBytes <= 0 {
		return removed, err
	}
	files, err := datedFiles(l.dir, filePrefix)
	if err != nil {
		return removed, err
	}
	var total int64
	for _, f := range files {
		total += f.size
	}
	today := l.now().UTC().Format(dayLayout)
	for _, f := range files { // oldest first
		if total <= l.maxBytes || f.day.Format(dayLayout) == today {
			break
		}
		if err := os.Remove(filepath.Join(l.dir, f.name)); err != nil {
			return removed, fmt.Errorf("remove %s: %w", f.name, err)
		}
		total -= f.size
		removed = append(removed, f.name)
	}
	return removed, nil
}

type datedFile struct {
	name string
	day  time.Time
	size int64
}

// datedFiles lists files in dir named prefix+YYYY-MM-DD…, oldest first.
func datedFiles(dir, prefix string) ([]datedFile, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", dir, err)
	}
	var out []datedFile
	for _, e := range ents {
		day, ok := FileDay(e.Name(), prefix)
		if !ok || !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		out = append(out, datedFile{name: e.Name(), day: day, size: info.Size()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].day.Before(out[j].day) })
	return out, nil
}

// FileDay parses the UTC day out of a file named prefix+YYYY-MM-DD….
func FileDay(name, prefix string) (time.Time, bool) {
	rest, ok := strings.CutPrefix(name, prefix)
	if !ok || len(rest) < len(dayLayout) {
		return time.Time{}, false
	}
	day, err := time.Parse(dayLayout, rest[:len(dayLayout)])
	return day, err == nil
}

// RemoveDatedBefore deletes the files in dir named prefix+YYYY-MM-DD… whose
// whole day lies before cutoff, and returns their names. Backups use it too.
func RemoveDatedBefore(dir, prefix string, cutoff time.Time) ([]string, error) {
	files, err := datedFiles(dir, prefix)
	if err != nil {
		return nil, err
	}
	var removed []string
	for _, f := range files {
		if !f.day.Add(24 * time.Hour).Before(cutoff) {
			break
		}
		if err := os.Remove(filepath.Join(dir, f.name)); err != nil {
			return removed, fmt.Errorf("remove %s: %w", f.name, err)
		}
		removed = append(removed, f.name)
	}
	return removed, nil
}

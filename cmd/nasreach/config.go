package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nasreach/nasreach/daemon"
	"github.com/pelletier/go-toml/v2"
	"github.com/urfave/cli/v3"
)

// The config file is TOML with one top-level key per serve flag, named like
// the flag without its dashes prefix (dns = "0.0.0.0:53", ns = ["ns1=…"]).
// Precedence: command-line flag > NASREACH_* environment > file > default.
// Unknown keys and invalid values stop start-up with the file and line.

// configFileName is looked for in $CONFIGURATION_DIRECTORY when --config is
// not given.
const configFileName = "nasreach.toml"

func configFlag() cli.Flag {
	return &cli.StringFlag{Name: "config", Usage: "TOML config file", DefaultText: "$CONFIGURATION_DIRECTORY/" + configFileName + " when it exists", Sources: cli.EnvVars("NASREACH_CONFIG")}
}

// configPath returns the config file to read, or "" for none.
func configPath(cmd *cli.Command) string {
	if p := cmd.String("config"); p != "" {
		return p
	}
	if dir := os.Getenv("CONFIGURATION_DIRECTORY"); dir != "" {
		// systemd may pass several directories separated by ':'.
		first, _, _ := strings.Cut(dir, ":")
		p := filepath.Join(first, configFileName)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// configSource is the config file serve read: where each key it set stands,
// and the file's own errors (unknown keys, bad values), so that every
// problem, including the daemon's checks of a setting, is reported at once
// with the line that caused it.
type configSource struct {
	path  string
	lines map[string]int // key → line, for the keys the file set
	errs  []lineError
}

// lineError is an error at a line of the config file (0: not in the file).
type lineError struct {
	line int
	err  error
}

// apply is serve's Before hook: it sets every flag the file names that
// neither the command line nor the environment set. A file that cannot be
// read or parsed stops here; a bad key or value is kept for report with
// the daemon's own checks.
func (src *configSource) apply(ctx context.Context, cmd *cli.Command) (context.Context, error) {
	*src = configSource{path: configPath(cmd), lines: map[string]int{}}
	if src.path == "" {
		return ctx, nil
	}
	path := src.path
	data, err := os.ReadFile(path)
	if err != nil {
		return ctx, fmt.Errorf("config: %w", err)
	}
	var doc map[string]any
	if err := toml.Unmarshal(data, &doc); err != nil {
		var de *toml.DecodeError
		if errors.As(err, &de) {
			row, col := de.Position()
			return ctx, fmt.Errorf("config %s line %d column %d: %s", path, row, col, de.Error())
		}
		return ctx, fmt.Errorf("config %s: %w", path, err)
	}
	known := map[string]cli.Flag{}
	for _, f := range cmd.Flags {
		known[f.Names()[0]] = f
	}
	for _, key := range sortedKeys(doc) {
		line := keyLine(data, key)
		src.lines[key] = line
		fail := func(format string, args ...any) {
			src.errs = append(src.errs, lineError{line, fmt.Errorf(format, args...)})
		}
		f, ok := known[key]
		if !ok || key == "config" {
			fail("unknown key %q (see 'nasreach config default' for every key)", key)
			continue
		}
		if cmd.IsSet(key) {
			delete(src.lines, key) // the command line or the environment wins
			continue
		}
		values, err := configValues(doc[key])
		if err != nil {
			fail("key %q: %w", key, err)
			continue
		}
		if _, slice := f.(*cli.StringSliceFlag); !slice && len(values) != 1 {
			fail("key %q takes one value, not a list", key)
			continue
		}
		for _, v := range values {
			if err := cmd.Set(key, v); err != nil {
				fail("key %q: invalid value %q: %v", key, v, err)
				break
			}
		}
	}
	return ctx, nil
}

// report joins the file's errors and err (from building and validating the
// daemon's configuration) into one error, every problem on its own line in
// the file's order, those the file did not cause last. A *daemon.SettingError
// about a key the file set names the file and line.
func (src *configSource) report(err error) error {
	all := slices.Clone(src.errs)
	for _, e := range flatten(err) {
		line := 0
		var se *daemon.SettingError
		if errors.As(e, &se) {
			line = src.lines[se.Setting]
		}
		all = append(all, lineError{line, e})
	}
	if len(all) == 0 {
		return nil
	}
	slices.SortStableFunc(all, func(a, b lineError) int {
		return cmp.Compare(cmp.Or(a.line, math.MaxInt), cmp.Or(b.line, math.MaxInt))
	})
	out := make([]error, len(all))
	for i, e := range all {
		out[i] = e.err
		if e.line > 0 {
			out[i] = fmt.Errorf("config %s line %d: %w", src.path, e.line, e.err)
		}
	}
	return errors.Join(out...)
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// configValues turns a TOML value into the strings a flag parses.
func configValues(v any) ([]string, error) {
	switch x := v.(type) {
	case string:
		return []string{x}, nil
	case bool:
		return []string{strconv.FormatBool(x)}, nil
	case int64:
		return []string{strconv.FormatInt(x, 10)}, nil
	case float64:
		return []string{strconv.FormatFloat(x, 'f', -1, 64)}, nil
	case []any:
		var out []string
		for _, e := range x {
			s, err := configValues(e)
			if err != nil || len(s) != 1 {
				return nil, errors.New("a list may hold only strings, numbers and booleans")
			}
			out = append(out, s[0])
		}
		return out, nil
	case map[string]any:
		return nil, errors.New("tables are not used: every setting is a top-level key")
	}
	return nil, fmt.Errorf("unsupported value of type %T", v)
}

// keyLine finds the line where key is set, for error messages.
func keyLine(data []byte, key string) int {
	k := regexp.QuoteMeta(key)
	re := regexp.MustCompile(`^\s*(?:(?:"` + k + `"|'` + k + `'|` + k + `)\s*=|\[\s*` + k + `\s*\])`)
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		if re.MatchString(sc.Text()) {
			return n
		}
	}
	return 0
}

// configCommand checks a config file and prints the default one.
func configCommand() *cli.Command {
	return &cli.Command{
		Name:  "config",
		Usage: "check a config file, or print the default one",
		Description: describe("The file is TOML with one top-level key per serve flag; a flag or NASREACH_* variable overrides it.",
			"nasreach config check --config /etc/nasreach/nasreach.toml",
			"nasreach config default > nasreach.toml"),
		Commands: []*cli.Command{
			configCheckCommand(),
			{
				Name:        "default",
				Usage:       "print a fully commented default config file",
				Description: describe("", "nasreach config default > /etc/nasreach/nasreach.toml"),
				Action: func(_ context.Context, cmd *cli.Command) error {
					return writeDefaultConfig(cmd.Root().Writer)
				},
			},
		},
	}
}

// flatten lists the errors err joins, however deeply (nil: none).
func flatten(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	if err == nil {
		return nil
	}
	return []error{err}
}

// configCheckCommand is serve without the serving: the same flags,
// environment and config file, the same checks, every problem at once.
func configCheckCommand() *cli.Command {
	c := serveLikeCommand(func(ctx context.Context, cmd *cli.Command, cfg daemon.Config) error {
		fmt.Fprintln(cmd.Root().Writer, "configuration ok")
		return nil
	})
	c.Name = "check"
	c.Usage = "validate the configuration serve would run with (config file, environment and serve's flags), without starting"
	c.UsageText = "nasreach config check [--config FILE] [serve flags]"
	c.Description = describe("Every problem is reported at once, in the file's order, each with its line.",
		"nasreach config check --config /etc/nasreach/nasreach.toml",
		"nasreach config check --config nasreach.toml --zone nas.example.net")
	return c
}

// parseServeConfig runs serve's flag, environment and config-file parsing on
// args (as os.Args) and the daemon's checks, and returns the daemon
// configuration without starting.
func parseServeConfig(ctx context.Context, args []string) (daemon.Config, error) {
	var cfg daemon.Config
	sc := serveLikeCommand(func(_ context.Context, _ *cli.Command, c daemon.Config) error {
		cfg = c
		return nil
	})
	root := &cli.Command{Name: "nasreach", Commands: []*cli.Command{sc}, Writer: io.Discard, ErrWriter: io.Discard, HideHelpCommand: true}
	if err := root.Run(ctx, args); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// writeDefaultConfig prints every serve setting with its help and default,
// commented out.
func writeDefaultConfig(w io.Writer) error {
	var b strings.Builder
	b.WriteString("# nasreach configuration (TOML). Every setting is a top-level key named\n")
	b.WriteString("# like the serve flag; uncomment what you change. Precedence: command-line\n")
	b.WriteString("# flag > NASREACH_* environment variable > this file > built-in default.\n")
	b.WriteString("# Check a file with: nasreach config check --config FILE\n")
	for _, f := range serveCommand().Flags {
		name := f.Names()[0]
		if name == "config" {
			continue
		}
		usage, value := "", ""
		switch x := f.(type) {
		case *cli.StringFlag:
			usage, value = x.Usage, strconv.Quote(x.Value)
		case *cli.BoolFlag:
			usage, value = x.Usage, strconv.FormatBool(x.Value)
		case *cli.DurationFlag:
			usage, value = x.Usage, strconv.Quote(formatDuration(x.Value))
		case *cli.IntFlag:
			usage, value = x.Usage, strconv.FormatInt(int64(x.Value), 10)
		case *cli.Int64Flag:
			usage, value = x.Usage, strconv.FormatInt(x.Value, 10)
		case *cli.FloatFlag:
			usage, value = x.Usage, strconv.FormatFloat(x.Value, 'f', -1, 64)
		case *cli.StringSliceFlag:
			usage, value = x.Usage, "[]"
		default:
			return fmt.Errorf("config default: flag %s has a type the generator does not know (%T)", name, f)
		}
		if df, ok := f.(cli.DocGenerationFlag); ok && df.GetDefaultText() != "" {
			usage += " (default: " + df.GetDefaultText() + ")"
		}
		fmt.Fprintf(&b, "\n# %s\n#%s = %s\n", usage, name, value)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// formatDuration writes whole hours and minutes without the trailing zero units.
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

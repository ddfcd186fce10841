package main

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/urfave/cli/v3"
)

// commandPaths lists every command of the tree as the words that name it
// ({"device", "code", "add"}), hidden ones included, and the root as the
// empty path. The tree is taken after a run, when urfave has added its
// completion command, so that a command added in any way is in the list.
func commandPaths(t *testing.T) [][]string {
	t.Helper()
	root := newApp(io.Discard, io.Discard)
	if err := root.Run(context.Background(), []string{"nasreach", "--version"}); err != nil {
		t.Fatal(err)
	}
	paths := [][]string{nil}
	var walk func(prefix []string, c *cli.Command)
	walk = func(prefix []string, c *cli.Command) {
		for _, sub := range c.Commands {
			p := append(slices.Clone(prefix), sub.Name)
			paths = append(paths, p)
			walk(p, sub)
		}
	}
	walk(nil, root)
	return paths
}

// helpOf is what "nasreach PATH... --help" prints.
func helpOf(t *testing.T, path []string) string {
	t.Helper()
	out, err := runNasreach(t, append(slices.Clone(path), "--help")...)
	if err != nil {
		t.Fatalf("nasreach %s --help: %v\n%s", strings.Join(path, " "), err, out)
	}
	return out
}

func TestEveryCommandsHelpHasAnExample(t *testing.T) {
	paths := commandPaths(t)
	for _, want := range [][]string{{"completion", "fish"}, {"help"}, {"man"}} {
		if !slices.ContainsFunc(paths, func(p []string) bool { return slices.Equal(p, want) }) {
			t.Errorf("the command tree has no %q", strings.Join(want, " "))
		}
	}
	example := regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(examplesHeading) + `\n\s+[^\n]*\bnasreach `)
	for _, p := range paths {
		if help := helpOf(t, p); !example.MatchString(help) {
			t.Errorf("'nasreach %s --help' shows no example (give the command a Description made by describe):\n%s", strings.Join(p, " "), help)
		}
	}
}

func TestEveryFlagShowsItsDefaultOnce(t *testing.T) {
	for _, p := range commandPaths(t) {
		for line := range strings.SplitSeq(helpOf(t, p), "\n") {
			if strings.HasPrefix(strings.TrimSpace(line), "--") && strings.Count(strings.ToLower(line), "default") > 1 {
				t.Errorf("'nasreach %s --help' gives a default twice (state it in Value or DefaultText, not in Usage):\n%s", strings.Join(p, " "), line)
			}
		}
	}
	man, err := runNasreach(t, "man")
	if err != nil {
		t.Fatal(err)
	}
	for entry := range strings.SplitSeq(man, ".TP\n") {
		// A flag's entry is its name, then its text.
		lines := strings.SplitN(entry, "\n", 3)
		if entry := strings.Join(lines[:min(2, len(lines))], "\n"); strings.HasPrefix(entry, `\fB\-\-`) && strings.Count(strings.ToLower(entry), "default") > 1 {
			t.Errorf("the man page gives a default twice:\n%s", entry)
		}
	}
}

func TestHelpCommandShowsTheHelpOfAnyCommand(t *testing.T) {
	for _, p := range [][]string{nil, {"device"}, {"logs", "stats"}, {"completion", "bash"}} {
		got, err := runNasreach(t, append([]string{"help"}, p...)...)
		if err != nil {
			t.Fatalf("nasreach help %s: %v\n%s", strings.Join(p, " "), err, got)
		}
		if want := helpOf(t, p); got != want {
			t.Errorf("'nasreach help %s' printed\n%s\nwant what --help prints:\n%s", strings.Join(p, " "), got, want)
		}
	}
	if out, _ := runNasreach(t, "help"); !regexp.MustCompile(`(?m)^\s+help\s+.*\n\s+completion\s`).MatchString(out) {
		t.Errorf("'nasreach help' does not list help and completion:\n%s", out)
	}
	for _, c := range []struct{ args, want []string }{
		{[]string{"help", "nosuch"}, []string{`nasreach has no command "nosuch"`, "'nasreach help'"}},
		{[]string{"help", "device", "nosuch"}, []string{`nasreach device has no command "nosuch"`, "'nasreach help device'"}},
		{[]string{"nosuch"}, []string{`nasreach has no command "nosuch"`}},
		{[]string{"logs", "nosuch"}, []string{`nasreach logs has no command "nosuch"`, "'nasreach help logs'"}},
		{[]string{"completion", "tcsh"}, []string{`nasreach completion has no command "tcsh"`}},
	} {
		out, err := runNasreach(t, c.args...)
		for _, w := range c.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("nasreach %s: err %v, want one saying %s (output %q)", strings.Join(c.args, " "), err, w, out)
			}
		}
	}
}

func TestCompletionScriptsForBashZshAndFish(t *testing.T) {
	for _, c := range []struct{ shell, want string }{
		{"bash", "complete -o bashdefault -o default -F __nasreach_bash_autocomplete nasreach"},
		{"zsh", "compdef _nasreach nasreach"},
		{"fish", "complete -c nasreach"},
	} {
		script, err := runNasreach(t, "completion", c.shell)
		if err != nil || !strings.Contains(script, c.want) {
			t.Errorf("nasreach completion %s: %v; the script lacks %q:\n%s", c.shell, err, c.want, script)
			continue
		}
		shell, err := exec.LookPath(c.shell)
		if err != nil {
			t.Logf("no %s to check the syntax of its script", c.shell)
			continue
		}
		file := filepath.Join(t.TempDir(), "nasreach."+c.shell)
		os.WriteFile(file, []byte(script), 0o644)
		if out, err := exec.Command(shell, "-n", file).CombinedOutput(); err != nil {
			t.Errorf("%s -n rejects the completion script: %v\n%s", c.shell, err, out)
		}
	}
	// The scripts ask the binary itself for the words that fit. (At the top
	// level urfave reads os.Args, the test binary's, so that case is not
	// run in-process.)
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"device", "--generate-shell-completion"}, []string{"add:", "list:", "rm:"}},
		{[]string{"logs", "stats", "--by", "--generate-shell-completion"}, []string{"--by-device:"}},
	} {
		out, err := runNasreach(t, c.args...)
		for _, w := range c.want {
			if err != nil || !strings.Contains(out, w) {
				t.Errorf("nasreach %s: %v; want %q among\n%s", strings.Join(c.args, " "), err, w, out)
			}
		}
	}
}

func TestManPageHasExamplesAndDescribesSTUNTURNAndLink(t *testing.T) {
	man, err := runNasreach(t, "man")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{".SH EXAMPLES", `.SH "STUN AND TURN"`, ".SH LINK", `.SH "DYNAMIC UPDATE"`, `\fBnasreach agent\fR`, `\fBnasreach connect\fR`,
		`\-\-turn\-secret`, `\-\-relay\-fingerprint`, `.SS "nasreach device code add NAME"`, `.SS "nasreach completion "`,
		"nasreach device set\\-address \\-\\-ipv4 203.0.113.10 nas1"} {
		if !strings.Contains(man, want) {
			t.Errorf("man page lacks %q", want)
		}
	}
	if groff, err := exec.LookPath("groff"); err == nil {
		cmd := exec.Command(groff, "-man", "-ww", "-z")
		cmd.Stdin = strings.NewReader(man)
		if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
			t.Errorf("groff warns about the man page: %v\n%s", err, out)
		}
	}
}

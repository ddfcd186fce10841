package nasreach_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The README is a contract: its command blocks work when a newcomer pastes
// them into a terminal of a fresh checkout. TestReadmeRunsAsWritten pastes
// them, and these are its rules:
//
//   - Every fenced code block names its language. Shell blocks (```sh) run
//     in README order, in one bash session (set -euo pipefail), in a copy of
//     the checkout, while `make run` goes in a second "terminal" as the tour
//     asks; a block that must not run there (the set-up commands themselves,
//     production snippets) says why just before its fence:
//     <!-- not run: REASON -->. So a new unmarked block is run, and fails the
//     test if it does not work.
//   - In a shell block, a comment line right after a command (or after such a
//     comment) is what the command prints: each one must appear, in order,
//     among the block's output lines; "…" in it matches anything. A comment
//     that describes the next command comes after a blank line.
//
// The tour runs twice, the second time after `rm -rf data` as a newcomer who
// starts over does, and both runs must pass. It uses the README's fixed dev
// ports (127.0.0.1:10053, 10080, 10090, 13478, 17443 and the tour's 8080 and
// 8443, read from the README); no other test binds them, and a port that is
// taken (a `make run` still going) fails the test at once, naming it.

const (
	// readmeBuildBound bounds `make run` until it is ready: the first build
	// in a cold Go cache compiles every dependency.
	readmeBuildBound = 5 * time.Minute
	// readmeTourBound bounds one pass through the README's blocks.
	readmeTourBound = 2 * time.Minute
	// readmeStopBound bounds the exit of what the tour started once told to.
	readmeStopBound = 15 * time.Second
	// readmeBlockEnd, followed by a README line number, marks the end of a
	// block's output in the session's stdout.
	readmeBlockEnd = "readme-test: end of the block at README.md:"
)

// readmeShells are the languages of blocks that hold shell commands.
var readmeShells = []string{"sh", "bash", "shell", "console"}

var readmeNotRun = regexp.MustCompile(`^<!--\s*not run:\s*(.*?)\s*-->$`)

// readmeBlock is one fenced code block of README.md.
type readmeBlock struct {
	Line   int      // the line of its opening fence
	Lang   string   // its info string
	Lines  []string // the lines between the fences
	NotRun string   // the reason of a <!-- not run: REASON --> just before it
}

// readmeLine is a line of README.md, with its number.
type readmeLine struct {
	N    int
	Text string
}

// parseReadme returns the README's fenced code blocks, or every breach of the
// rules above at once.
func parseReadme(text string) ([]readmeBlock, error) {
	var blocks []readmeBlock
	var cur *readmeBlock
	var errs []error
	prev := "" // the last non-blank line outside a block
	for i, line := range strings.Split(text, "\n") {
		n, trimmed := i+1, strings.TrimSpace(line)
		if cur != nil {
			if trimmed == "```" {
				blocks, cur, prev = append(blocks, *cur), nil, ""
			} else {
				cur.Lines = append(cur.Lines, line)
			}
			continue
		}
		if !strings.HasPrefix(trimmed, "```") {
			if trimmed != "" {
				prev = trimmed
			}
			continue
		}
		b := readmeBlock{Line: n, Lang: strings.TrimSpace(strings.TrimPrefix(trimmed, "```"))}
		if b.Lang == "" {
			errs = append(errs, fmt.Errorf("README.md:%d: a code block without a language: ```sh for commands (this test runs them), ```text or another language for the rest", n))
		}
		if m := readmeNotRun.FindStringSubmatch(prev); m != nil {
			if b.NotRun = m[1]; b.NotRun == "" {
				errs = append(errs, fmt.Errorf("README.md:%d: <!-- not run: --> without a reason", n-1))
			}
		} else if strings.HasPrefix(prev, "<!--") {
			errs = append(errs, fmt.Errorf("README.md:%d: %s before a code block: the only marker is <!-- not run: REASON -->", n-1, prev))
		}
		cur = &b
	}
	if cur != nil {
		errs = append(errs, fmt.Errorf("README.md:%d: the code block never ends", cur.Line))
	}
	return blocks, errors.Join(errs...)
}

// runs reports whether the test runs the block.
func (b readmeBlock) runs() bool { return slices.Contains(readmeShells, b.Lang) && b.NotRun == "" }

// expected returns the output the block shows: comment lines right after a
// command.
func (b readmeBlock) expected() []readmeLine {
	var out []readmeLine
	afterCommand := false
	for i, l := range b.Lines {
		t := strings.TrimSpace(l)
		switch {
		case t == "":
			afterCommand = false
		case strings.HasPrefix(t, "#"):
			if afterCommand {
				out = append(out, readmeLine{b.Line + 1 + i, strings.TrimSpace(strings.TrimPrefix(t, "#"))})
			}
		default:
			afterCommand = true
		}
	}
	return out
}

// outputMatches reports whether an output line is the shown one, "…" being
// anything.
func outputMatches(shown, got string) bool {
	parts := strings.Split(shown, "…")
	for i := range parts {
		parts[i] = regexp.QuoteMeta(parts[i])
	}
	return regexp.MustCompile("^" + strings.Join(parts, ".*") + "$").MatchString(strings.TrimSpace(got))
}

// readmeListenParagraph returns the README's paragraph that says where
// `make run` listens.
func readmeListenParagraph(text string) string {
	for p := range strings.SplitSeq(text, "\n\n") {
		if strings.HasPrefix(p, "`make run` prints where it listens") {
			return p
		}
	}
	return ""
}

var loopbackAddr = regexp.MustCompile(`127\.0\.0\.1:\d+`)

func TestReadmeRunsAsWritten(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the README test builds the daemon and runs the tour")
	}
	raw, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(raw)
	blocks, err := parseReadme(text)
	if err != nil {
		t.Fatal(err)
	}
	var tour []readmeBlock
	for _, b := range blocks {
		if b.runs() {
			tour = append(tour, b)
		}
	}
	if len(tour) == 0 {
		t.Fatal("README.md has no shell block to run")
	}
	// The tour's first terminal runs `make run`, the first set-up command.
	if setup := blocks[0]; !slices.Contains(readmeShells, setup.Lang) || len(setup.Lines) == 0 || !strings.HasPrefix(strings.TrimSpace(setup.Lines[0]), "make run") {
		t.Fatalf("README.md:%d: the first block is not the set-up with `make run` first, which the tour runs in its first terminal", setup.Line)
	}
	listens := readmeListenParagraph(text)
	if listens == "" {
		t.Fatal("README.md no longer says where `make run` listens (\"`make run` prints where it listens: …\")")
	}
	ports := map[string]bool{}
	for _, a := range loopbackAddr.FindAllString(listens, -1) {
		ports[a] = true
	}
	for _, b := range tour {
		for _, a := range loopbackAddr.FindAllString(strings.Join(b.Lines, "\n"), -1) {
			ports[a] = true
		}
	}
	needReadmePrograms(t, "bash", "make", "go", "git", "curl", "dig", "python3", "openssl", "sha256sum")
	if err := portsFree(ports); err != nil {
		t.Fatalf("%v: the README test runs the tour on the README's ports; stop whatever holds it (a `make run`?)", err)
	}

	tmp := t.TempDir()
	work := filepath.Join(tmp, "nasreach")
	copyCheckout(t, work)
	config := filepath.Join(tmp, "config")
	env := newcomerEnv(config)
	for run := 1; run <= 2; run++ {
		start := time.Now()
		daemon := startGroup(t, work, env, filepath.Join(tmp, fmt.Sprintf("make-run-%d.log", run)), "make", "run")
		if out := daemon.waitFor(t, `"message":"nasreach ready"`, readmeBuildBound); run == 1 {
			checkListenClaims(t, listens, out, work)
		}
		session := runTour(t, tour, work, env, tmp, run)
		checkShownOutput(t, tour, session, run)
		// Ctrl-C in make run's terminal.
		daemon.stop(t, syscall.SIGINT)
		if err := waitPortsFree(ports); err != nil {
			t.Errorf("run %d: after the tour and Ctrl-C in make run: %v", run, err)
		}
		t.Logf("run %d of the tour: %s", run, time.Since(start).Round(100*time.Millisecond))
		if t.Failed() {
			return
		}
		if run == 1 {
			// Starting over, as a newcomer does.
			if err := os.RemoveAll(filepath.Join(work, "data")); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(config, "nasreach")); err == nil {
		t.Errorf("the tour wrote into the user's config directory (%s/nasreach): it keeps its state in the working directory", config)
	}
}

// needReadmePrograms skips the test when a program the README uses is
// missing, unless it runs as root or in CI, where `make test-deps` installs
// them and missing is a failure.
func needReadmePrograms(t *testing.T, names ...string) {
	t.Helper()
	var missing []string
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			missing = append(missing, n)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := fmt.Sprintf("the README's commands need %s: `make test-deps` installs them (TEST_DEBS)", strings.Join(missing, ", "))
	if os.Geteuid() == 0 || os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// portsFree returns an error naming the first address, TCP or UDP, that
// another process holds.
func portsFree(addrs map[string]bool) error {
	for _, a := range slices.Sorted(maps.Keys(addrs)) {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			return fmt.Errorf("TCP port %s is taken", a)
		}
		ln.Close()
		pc, err := net.ListenPacket("udp", a)
		if err != nil {
			return fmt.Errorf("UDP port %s is taken", a)
		}
		pc.Close()
	}
	return nil
}

// waitPortsFree waits, within readmeStopBound, until every address is free.
func waitPortsFree(addrs map[string]bool) error {
	deadline := time.Now().Add(readmeStopBound)
	for {
		err := portsFree(addrs)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// copyCheckout copies the checkout's files (what git tracks, and new files it
// does not ignore) to dir: a fresh clone with this change in it.
func copyCheckout(t *testing.T, dir string) {
	t.Helper()
	out, err := exec.Command("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard").Output()
	if err != nil {
		t.Fatalf("git ls-files: %v: the README test copies the checkout", err)
	}
	for name := range strings.SplitSeq(strings.TrimRight(string(out), "\x00"), "\x00") {
		b, err := os.ReadFile(name)
		if errors.Is(err, os.ErrNotExist) {
			continue // deleted in the working tree
		}
		if err != nil {
			t.Fatal(err)
		}
		info, err := os.Stat(name)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, info.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
}

// newcomerEnv is this process's environment as a fresh terminal has it:
// nothing of nasreach's own settings or of the make that runs the tests, the
// user config directory in config (the go tool keeps its own settings file),
// and BUILDFLAGS empty so that `make run` reuses the Go build cache of the
// tests (as the Makefile lets tests do).
func newcomerEnv(config string) []string {
	var env []string
	if os.Getenv("GOENV") == "" {
		if out, err := exec.Command("go", "env", "GOENV").Output(); err == nil {
			env = append(env, "GOENV="+strings.TrimSpace(string(out)))
		}
	}
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "NASREACH_") || slices.Contains([]string{"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "BUILDFLAGS", "XDG_CONFIG_HOME"}, k) {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "BUILDFLAGS=", "XDG_CONFIG_HOME="+config)
}

// group is a command running in its own process group, as a terminal runs
// a job: a signal to the group reaches everything it started.
type group struct {
	cmd  *exec.Cmd
	log  string // its stdout and stderr
	done chan struct{}
	err  error
}

func startGroup(t *testing.T, dir string, env []string, logPath string, name string, args ...string) *group {
	t.Helper()
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	g := &group{cmd: exec.Command(name, args...), log: logPath, done: make(chan struct{})}
	g.cmd.Dir, g.cmd.Env, g.cmd.Stdout, g.cmd.Stderr = dir, env, f, f
	g.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := g.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { g.err = g.cmd.Wait(); close(g.done) }()
	t.Cleanup(func() { g.kill() })
	return g
}

// kill ends every process of the group at once.
func (g *group) kill() {
	_ = syscall.Kill(-g.cmd.Process.Pid, syscall.SIGKILL)
	<-g.done
}

// alive reports whether any process of the group is still running.
func (g *group) alive() bool { return syscall.Kill(-g.cmd.Process.Pid, 0) == nil }

// output returns what the group printed so far.
func (g *group) output() string {
	b, _ := os.ReadFile(g.log)
	return string(b)
}

// waitFor waits until the group prints want and returns its output so far.
func (g *group) waitFor(t *testing.T, want string, bound time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		out := g.output()
		switch {
		case strings.Contains(out, want):
			return out
		case time.Now().After(deadline):
			t.Fatalf("%s did not print %s within %s:\n%s", g.cmd, want, bound, out)
		}
		select {
		case <-g.done:
			t.Fatalf("%s exited (%v) before printing %s:\n%s", g.cmd, g.err, want, g.output())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stop sends sig to the group and waits, within readmeStopBound, until every
// process in it has exited; it fails the test for any that does not.
func (g *group) stop(t *testing.T, sig syscall.Signal) {
	t.Helper()
	_ = syscall.Kill(-g.cmd.Process.Pid, sig)
	deadline := time.Now().Add(readmeStopBound)
	for g.alive() && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if g.alive() {
		t.Errorf("%s: still running %s after %s", g.cmd, readmeStopBound, sig)
	}
	g.kill()
}

// checkListenClaims checks the README's "`make run` prints where it listens"
// against what it printed: every address and the admin token file.
func checkListenClaims(t *testing.T, paragraph, out, work string) {
	t.Helper()
	claims := loopbackAddr.FindAllString(paragraph, -1)
	token := regexp.MustCompile("`(\\./data/[^`]+)`").FindStringSubmatch(paragraph)
	if len(claims) == 0 || token == nil {
		t.Fatalf("README.md's paragraph on where `make run` listens names no address or no admin token file:\n%s", paragraph)
	}
	claims = append(claims, strings.TrimPrefix(token[1], "./"), "relay_fingerprint")
	for _, c := range claims {
		if !strings.Contains(out, c) {
			t.Errorf("README.md says `make run` prints %s; it does not:\n%s", c, out)
		}
	}
	if info, err := os.Stat(filepath.Join(work, token[1])); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("admin token file %s: %v, want mode 0600 as the README says", token[1], err)
	}
}

// tourSession is what one pass through the blocks printed.
type tourSession struct {
	stdout, stderr string
}

// runTour runs the blocks, in order, in one bash session in work, the way a
// newcomer pastes them into a second terminal, and checks that whatever they
// start in the background is gone when the last block has run.
func runTour(t *testing.T, tour []readmeBlock, work string, env []string, tmp string, run int) tourSession {
	t.Helper()
	var script strings.Builder
	readmeLineOf := map[int]int{} // script line → README line
	script.WriteString("set -euo pipefail\n")
	script.WriteString(`trap 'rc=$?; echo "readme-test: line $LINENO exited $rc" >&2' ERR` + "\n")
	n := 3
	for _, b := range tour {
		for i, l := range b.Lines {
			script.WriteString(l + "\n")
			readmeLineOf[n] = b.Line + 1 + i
			n++
		}
		fmt.Fprintf(&script, "printf '\\n%%s\\n' '%s%d'\n", readmeBlockEnd, b.Line)
		n++
	}
	path := filepath.Join(tmp, fmt.Sprintf("tour-%d.sh", run))
	if err := os.WriteFile(path, []byte(script.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	stdoutPath, stderrPath := filepath.Join(tmp, fmt.Sprintf("tour-%d.out", run)), filepath.Join(tmp, fmt.Sprintf("tour-%d.err", run))
	stdout, err := os.Create(stdoutPath)
	if err != nil {
		t.Fatal(err)
	}
	defer stdout.Close()
	stderr, err := os.Create(stderrPath)
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), readmeTourBound)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", path)
	cmd.Dir, cmd.Env, cmd.Stdout, cmd.Stderr = work, env, stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	runErr := cmd.Run()
	pgid := cmd.Process.Pid
	defer syscall.Kill(-pgid, syscall.SIGKILL)
	read := func(p string) string { b, _ := os.ReadFile(p); return string(b) }
	s := tourSession{stdout: read(stdoutPath), stderr: read(stderrPath)}
	if runErr != nil {
		where := ""
		if m := regexp.MustCompile(`readme-test: line (\d+) exited (\d+)`).FindStringSubmatch(s.stderr); m != nil {
			ln, _ := strconv.Atoi(m[1])
			where = fmt.Sprintf("README.md:%d: exit status %s: ", readmeLineOf[ln], m[2])
		}
		if ctx.Err() != nil {
			where = fmt.Sprintf("the tour took longer than %s: ", readmeTourBound)
		}
		t.Fatalf("run %d: %s%v\n--- stdout\n%s\n--- stderr\n%s", run, where, runErr, s.stdout, s.stderr)
	}
	deadline := time.Now().Add(readmeStopBound)
	for syscall.Kill(-pgid, 0) == nil && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if syscall.Kill(-pgid, 0) == nil {
		t.Errorf("run %d: the tour's blocks left programs running %s after the last one:\n%s", run, readmeStopBound, s.stderr)
	}
	return s
}

// checkShownOutput checks that every output the README shows appears, in
// order, in what its block printed.
func checkShownOutput(t *testing.T, tour []readmeBlock, s tourSession, run int) {
	t.Helper()
	printed := map[int][]string{} // block line → its output lines
	var cur []string
	sc := bufio.NewScanner(strings.NewReader(s.stdout))
	for sc.Scan() {
		if ln, ok := strings.CutPrefix(sc.Text(), readmeBlockEnd); ok {
			n, _ := strconv.Atoi(ln)
			printed[n], cur = cur, nil
			continue
		}
		cur = append(cur, sc.Text())
	}
	for _, b := range tour {
		got := printed[b.Line]
		for _, want := range b.expected() {
			i := slices.IndexFunc(got, func(l string) bool { return outputMatches(want.Text, l) })
			if i < 0 {
				t.Errorf("run %d: README.md:%d shows %q, but the block printed:\n%s\n--- stderr\n%s",
					run, want.N, want.Text, strings.Join(printed[b.Line], "\n"), s.stderr)
				break
			}
			got = got[i+1:]
		}
	}
}

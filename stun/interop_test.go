package stun

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/testutil"
)

var reflexiveRE = regexp.MustCompile(`UDP reflexive addr: (\S+)`)

func TestCoturnStunclientLearnsItsAddress(t *testing.T) {
	bin := testutil.NeedTool(t, "turnutils_stunclient")
	s := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "-L", "127.0.0.1", "-p", fmt.Sprint(s.Addr().Port()), "127.0.0.1").CombinedOutput()
	if err != nil {
		t.Fatalf("turnutils_stunclient: %v\n%s", err, out)
	}
	m := reflexiveRE.FindSubmatch(out)
	if m == nil {
		t.Fatalf("no reflexive address in output:\n%s", out)
	}
	if got := string(m[1]); !regexp.MustCompile(`^127\.0\.0\.1:\d+$`).MatchString(got) {
		t.Errorf("reflexive address %q, want 127.0.0.1:port", got)
	}
	if st := s.Stats(); st.Answered == 0 || st.Dropped != 0 {
		t.Errorf("stats %+v, want answers and nothing dropped", st)
	}
}

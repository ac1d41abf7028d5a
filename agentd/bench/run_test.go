package bench

import (
	"context"
	"strings"
	"testing"
	"time"
)

// An unknown scenario name is refused before anything runs.
func TestRunRefusesUnknownScenario(t *testing.T) {
	rep, err := Run(context.Background(), Options{Only: []string{"stop-e2e", "nosuch"}, Work: t.TempDir(),
		Logf: func(string, ...any) { t.Fatal("a scenario ran") }})
	if err == nil || rep != nil || !strings.Contains(err.Error(), `"nosuch"`) {
		t.Fatalf("report %v, err %v", rep, err)
	}
}

// -skip names are checked like -only's, and a skipped scenario does not run.
func TestRunSkip(t *testing.T) {
	if _, err := Run(context.Background(), Options{Skip: []string{"nosuch"}, Work: t.TempDir(),
		Logf: func(string, ...any) { t.Fatal("a scenario ran") }}); err == nil || !strings.Contains(err.Error(), `"nosuch"`) {
		t.Fatalf("err %v", err)
	}
	rep, err := Run(context.Background(), Options{Only: []string{"cluster"}, Skip: []string{"cluster"}, Work: t.TempDir(),
		Logf: func(string, ...any) { t.Fatal("a scenario ran") }})
	if err != nil || len(rep.Rows) != 0 || len(rep.Errors) != 0 {
		t.Fatalf("report %+v, err %v", rep, err)
	}
}

// The idle rate takes the measuring query off the counter's difference and
// divides by the window and the replicas.
func TestIdleRate(t *testing.T) {
	for _, c := range []struct {
		before, after int64
		window        time.Duration
		replicas      int
		want          float64
	}{
		{100, 161, 10 * time.Second, 3, 2},
		{100, 101, 10 * time.Second, 3, 0}, // only the measuring query
		{100, 100, 10 * time.Second, 3, 0}, // never negative
		{100, 161, 0, 3, 0},
		{100, 161, time.Second, 0, 0},
	} {
		if got := idleRate(c.before, c.after, c.window, c.replicas); got != c.want {
			t.Errorf("idleRate(%d, %d, %s, %d) = %v, want %v", c.before, c.after, c.window, c.replicas, got, c.want)
		}
	}
	if n, err := parseStatusCounter("Questions", "12345"); err != nil || n != 12345 {
		t.Errorf("parseStatusCounter: %d, %v", n, err)
	}
	for _, v := range []string{"", "-1", "1.5", "x"} {
		if _, err := parseStatusCounter("Questions", v); err == nil {
			t.Errorf("parseStatusCounter(%q): no error", v)
		}
	}
}

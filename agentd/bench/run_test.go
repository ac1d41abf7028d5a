package bench

import (
	"context"
	"strings"
	"testing"
)

// An unknown scenario name is refused before anything runs.
func TestRunRefusesUnknownScenario(t *testing.T) {
	rep, err := Run(context.Background(), Options{Only: []string{"stop-e2e", "nosuch"}, Work: t.TempDir(),
		Logf: func(string, ...any) { t.Fatal("a scenario ran") }})
	if err == nil || rep != nil || !strings.Contains(err.Error(), `"nosuch"`) {
		t.Fatalf("report %v, err %v", rep, err)
	}
}

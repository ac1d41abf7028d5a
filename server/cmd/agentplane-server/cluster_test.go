package main

import (
	"context"
	"errors"
	"slices"
	"testing"
)

// fakeEngine has the engine's side of the replicas' contract.
type fakeEngine struct {
	changed []int64
	adopted []string
}

func (e *fakeEngine) Changed(ids []int64) { e.changed = append(e.changed, ids...) }

func (e *fakeEngine) Adopt(_ context.Context, replicaID string) (int, error) {
	e.adopted = append(e.adopted, replicaID)
	return 0, errors.New("adopt failed") // logged, not fatal
}

// The hooks reach the engine's Changed and Adopt once it is set, and do
// nothing before.
func TestEngineHooks(t *testing.T) {
	var h engineHooks
	h.changed([]int64{1}) // before set: nothing
	h.gone("b")
	e := &fakeEngine{}
	h.set(e)
	h.changed([]int64{4, 5})
	h.gone("b")
	if !slices.Equal(e.changed, []int64{4, 5}) || !slices.Equal(e.adopted, []string{"b"}) {
		t.Fatalf("changed %v, adopted %v", e.changed, e.adopted)
	}
}

package task

import (
	"slices"
	"testing"
)

func TestRetaken(t *testing.T) {
	// holdsHost says a subtask holds the host it acts on, as agentop's
	// subtasks do.
	holdsHost := func(st *Subtask) []Resource {
		if st.HostID == 0 {
			return nil
		}
		return []Resource{{Kind: "host", ID: st.HostID}}
	}
	hosts := func(op Operation, subs string, hostIDs ...int64) []int64 {
		tk := build(op, subs)
		for i, h := range hostIDs {
			tk.Subtasks[i].HostID = h
		}
		var ids []int64
		for _, r := range retaken(tk, holdsHost) {
			ids = append(ids, r.ID)
		}
		return ids
	}
	tests := []struct {
		name string
		got  []int64
		want []int64
	}{
		{"forward: ready, running and pending; deduplicated", hosts(OpRetry,
			"SUCCESSFUL/EXECUTE/1 READY/RETRY/2 PENDING/EXECUTE/1 PENDING/EXECUTE/1", 10, 20, 30, 20), []int64{20, 30}},
		{"forward: failed and done hosts are not taken", hosts(OpExecute,
			"SUCCESSFUL/SKIP/1 FAILED/EXECUTE/1 RUNNING/EXECUTE/1", 10, 20, 30), []int64{30}},
		{"forward: canceling holds its host", hosts(OpExecute,
			"CANCELING/CANCEL/1 PENDING/EXECUTE/1", 10, 0), []int64{10}},
		{"rolling back: only what will be undone", hosts(OpRollback,
			"READY/ROLLBACK/2 RUNNING/ROLLBACK/2 PENDING/ROLLBACK/2 PENDING/EXECUTE/1", 10, 20, 30, 40), []int64{10, 20}},
		{"no host", hosts(OpExecute, "READY/EXECUTE/1 PENDING/EXECUTE/1", 0, 0), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !slices.Equal(tt.got, tt.want) {
				t.Fatalf("retaken = %v, want %v", tt.got, tt.want)
			}
		})
	}
}

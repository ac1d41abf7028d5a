package cluster

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"agentplane/server/internal/errs"
	"agentplane/server/internal/fleet"
)

// What a dispatch on a peer ends with reaches the caller as the same
// kind of error (fleet.ErrAgentLost still is one), with the result.
func TestDoneRoundTrip(t *testing.T) {
	at := time.UnixMilli(1_700_000_000_000).UTC()
	res := fleet.Result{SubtaskID: 3, Attempt: 2, Outcome: fleet.Canceled, Message: "canceled", FinishTime: at}
	for _, tt := range []struct {
		err  error
		want error
	}{
		{nil, nil},
		{fmt.Errorf("%w: not heard from for 31s", fleet.ErrAgentLost), fleet.ErrAgentLost},
		{fleet.ErrSuperseded, errs.ErrAborted},
		{context.DeadlineExceeded, errs.ErrAborted},
		{fmt.Errorf("x: %w", errs.ErrInvalidArgument), errs.ErrInvalidArgument},
	} {
		got, err := ended(done(res, tt.err), 3, 2)
		if got != res {
			t.Fatalf("%v: result %+v, want %+v", tt.err, got, res)
		}
		if (tt.want == nil) != (err == nil) || tt.want != nil && (!errors.Is(err, tt.want) || err.Error() != tt.err.Error()) {
			t.Fatalf("%v: error %v, want one of %v", tt.err, err, tt.want)
		}
	}
	if d := done(fleet.Result{}, fmt.Errorf("%w (to c)", fleet.ErrMoved)); !d.GetMoved() || d.GetResult() != nil {
		t.Fatalf("moved: %v", d)
	}
}

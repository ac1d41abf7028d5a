package host

import (
	"fmt"

	"agentplane/server/internal/errs"
)

// BusyError is the errs.ErrConflict of an agent operation refused because
// task taskID holds host hostID's lock: its text names both for the log,
// its message tells the user what to do.
func BusyError(hostID, taskID int64) error {
	return errs.WithMessage(fmt.Errorf("host %d: agent operation in progress (task %d): %w", hostID, taskID, errs.ErrConflict),
		fmt.Sprintf("Host %d already has an agent operation in progress (task %d); wait for it to end or cancel it.", hostID, taskID))
}

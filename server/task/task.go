// Package task owns asynchronous DAG tasks: their model, the state machine of
// tasks and subtasks (OCP's semantics), the built-in task plans, and the
// event-driven engine that runs them. It knows nothing of protobuf or HTTP.
package task

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"agentplane/server/errs"
)

// Status is a task's status.
type Status string

// Task statuses.
const (
	StatusRunning    Status = "RUNNING"
	StatusFailed     Status = "FAILED"
	StatusSuccessful Status = "SUCCESSFUL"
)

// Final reports whether no more work will happen without an operator.
func (s Status) Final() bool { return s == StatusFailed || s == StatusSuccessful }

// SubtaskStatus is a subtask's status.
type SubtaskStatus string

// Subtask statuses.
const (
	SubtaskPending    SubtaskStatus = "PENDING"
	SubtaskReady      SubtaskStatus = "READY"
	SubtaskRunning    SubtaskStatus = "RUNNING"
	SubtaskCanceling  SubtaskStatus = "CANCELING"
	SubtaskFailed     SubtaskStatus = "FAILED"
	SubtaskSuccessful SubtaskStatus = "SUCCESSFUL"
)

// Type says who started a task.
type Type string

// Task types.
const (
	TypeManual       Type = "MANUAL"
	TypeScheduled    Type = "SCHEDULED"
	TypeSysScheduled Type = "SYS_SCHEDULED"
)

// Operation is what was last asked of a task or subtask.
type Operation string

// Operations.
const (
	OpExecute      Operation = "EXECUTE"
	OpRetry        Operation = "RETRY"
	OpRollback     Operation = "ROLLBACK"
	OpSkip         Operation = "SKIP"
	OpCancel       Operation = "CANCEL"
	OpRollbackSkip Operation = "ROLLBACK_SKIP"
)

// NodeTypeJavaTask is the node type OCP reports for every built-in subtask.
const NodeTypeJavaTask = "JAVA_TASK"

// Context holds a task's parameters, as OCP's task context.
type Context struct {
	ListMap     map[string][]string
	Parallel    bool
	ParallelIdx int
	StringMap   map[string]string
}

// Task is an asynchronous DAG task.
type Task struct {
	ID               int64
	Name             string
	Type             Type
	Operation        Operation
	Status           Status
	Creator          string
	Executor         string
	HostID           int64 // 0 when the task acts on no single host
	StartTime        time.Time
	EndTime          time.Time // zero while not final
	TaskDefinitionID int64
	Context          Context
	Subtasks         []Subtask // in execution (topological) order
}

// Subtask is one node of a task's DAG.
type Subtask struct {
	ID               int64
	TaskID           int64
	Name             string
	Description      string
	ClassName        string
	NodeType         string
	Operation        Operation
	Status           SubtaskStatus
	SeriesID         int
	Upstreams        []int64
	Downstreams      []int64
	Timeout          time.Duration // whole seconds
	RunTime          int           // attempt number; 1 before the first run
	ParallelIdx      int
	ProhibitRollback bool
	HostID           int64 // host the subtask acts on
	Executor         string
	StartTime        time.Time // zero before the first run
	EndTime          time.Time // zero while not final
	Message          string
}

// Subtask returns the subtask with the given id, or nil.
func (t *Task) Subtask(id int64) *Subtask {
	for i := range t.Subtasks {
		if t.Subtasks[i].ID == id {
			return &t.Subtasks[i]
		}
	}
	return nil
}

// ListQuery filters, orders and pages tasks. Zero values match everything.
// Page is 1-based; Size is 1..2000.
type ListQuery struct {
	Name   string // contained in the name, case-insensitive
	Status Status
	Type   Type
	HostID int64 // tasks with a subtask on this host
	Sort   Sort
	Page   int
	Size   int
}

// Sort orders a list: by Field (SortID when empty), descending when Desc.
type Sort struct {
	Field string
	Desc  bool
}

// Sort fields.
const (
	SortID        = "id"
	SortName      = "name"
	SortStatus    = "status"
	SortStartTime = "startTime"
	SortEndTime   = "endTime"
)

// sortFields are the fields a task list may be sorted by.
var sortFields = []string{SortID, SortName, SortStatus, SortStartTime, SortEndTime}

// ParseSort parses the API's sort parameter: "field", "field,asc" or
// "field,desc" (the direction in any case); "" is the default order
// (newest first). ErrInvalidArgument otherwise.
func ParseSort(v string) (Sort, error) {
	if v == "" {
		return Sort{}, nil
	}
	field, dir, hasDir := strings.Cut(v, ",")
	if !slices.Contains(sortFields, field) {
		return Sort{}, fmt.Errorf("sort field must be one of %s, got %q: %w", strings.Join(sortFields, ", "), field, errs.ErrInvalidArgument)
	}
	switch {
	case !hasDir || strings.EqualFold(dir, "asc"):
		return Sort{Field: field}, nil
	case strings.EqualFold(dir, "desc"):
		return Sort{Field: field, Desc: true}, nil
	}
	return Sort{}, fmt.Errorf("sort direction must be asc or desc, got %q: %w", dir, errs.ErrInvalidArgument)
}

// Page is one page of tasks and the total count over all pages.
type Page struct {
	Tasks []Task
	Total int64
}

// Plan is a task to create: the task and its subtasks (in execution order,
// IDs unset) and the DAG's edges as pairs of indexes into Subtasks
// (upstream, downstream). Locks lists the hosts whose agent-operation lock
// the task takes at creation; creation fails with ErrConflict when another
// task holds one.
type Plan struct {
	Task  Task
	Edges [][2]int
	Locks []int64
	// Idempotency, when set, makes creation return the task created earlier
	// with the same Scope (and refuse one whose Fingerprint differs).
	Idempotency *Idempotency
}

// Idempotency identifies a create request that may be repeated: Scope is
// the caller and their Idempotency-Key, Fingerprint what was asked (both
// hashed to fixed length).
type Idempotency struct {
	Scope       string
	Fingerprint string
}

// LogLine is one line of a subtask's log.
type LogLine struct {
	RunTime int
	Time    time.Time
	Line    string
}

// SubtaskLogLine is a line of the log of subtask SubtaskID.
type SubtaskLogLine struct {
	SubtaskID int64
	LogLine
}

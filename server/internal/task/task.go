// Package task owns asynchronous DAG tasks: their model (task.go), the state
// machine of tasks and subtasks (OCP's semantics, machine.go), the resources
// a task holds while it runs (resource.go), the event-driven Engine that runs
// them (engine.go, attempt.go, memory.go; which replica runs which task:
// owner.go, sweep.go), the Service of the operations
// users call on them (service.go, ops.go), and the LogWriter that batches
// subtask log lines (logwriter.go). The plans of particular tasks live with
// their executors (agentop). It knows nothing of protobuf or HTTP.
package task

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"agentplane/server/internal/errs"
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
	// Owner is the replica that runs the task, and the epoch of its claim
	// (see owner.go): only that claim's writes are stored.
	Owner Owner
}

// Owner is a task's owner: the id of the replica that runs it (the
// registry's, see package replica; "" for a task made before tasks had
// owners, or by a server without an id) and Epoch, a fencing token that
// each claim of the task raises by one (1 at creation).
type Owner struct {
	Replica string
	Epoch   int64
}

// OwnedTask is a task's id and its owner, as a claim starts from.
type OwnedTask struct {
	ID    int64
	Owner Owner
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
// Page is 1-based; Size is 1..paging.MaxSize (0: the defaults).
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
// (upstream, downstream). Resources are what the task holds from its
// creation (see Resource); creation fails with ErrConflict when another task
// holds one.
type Plan struct {
	Task      Task
	Edges     [][2]int
	Resources []Resource
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
	// Header marks an attempt's header line, written by the engine (never
	// by an agent): headers are kept when older lines are dropped to bound
	// the log, and are shown without a time prefix.
	Header bool
	// Seq is the line's position in the log, set when it is read: a later
	// line has a greater Seq.
	Seq int64
}

// Bounds of one subtask's stored log, the defaults of the store's limits:
// past either, the oldest lines (not the attempt headers) are dropped and a
// marker line says how many lines and bytes were dropped.
const (
	DefaultLogMaxBytes = 1 << 20 // bytes of line text
	DefaultLogMaxLines = 10000
)

// MaxLogPageLines is the most lines a page of a log holds (and the default
// LogQuery.Limit); MaxLogPageBytes the most bytes of line text, past the
// first line: together they bound what one read of a log holds in memory.
const (
	MaxLogPageLines = 10000
	MaxLogPageBytes = 1 << 20
)

// LogQuery asks for a page of a subtask's log.
type LogQuery struct {
	// After: the lines after this position, the Next of the previous page;
	// 0 starts from the first line. Negative is invalid.
	After int64
	// Limit: at most this many lines, 1..MaxLogPageLines; 0 means
	// MaxLogPageLines.
	Limit int
}

// LogPage is a page of a subtask's log.
type LogPage struct {
	// Text is the page's lines, one per line of text (see Service.SubtaskLog).
	Text string
	// Lines is how many lines Text holds.
	Lines int
	// Next is the position to pass as LogQuery.After for the following
	// page (the same After when the page is empty): a reader following a
	// running subtask's log polls with it.
	Next int64
	// More says lines after this page were already stored when it was read.
	More bool
}

// SubtaskLogLine is a line of the log of subtask SubtaskID.
type SubtaskLogLine struct {
	SubtaskID int64
	LogLine
}

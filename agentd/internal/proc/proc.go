// Package proc owns finding, stopping and starting the OCP Agent's base
// processes on this host: discovery filtered from /proc and completed with
// gopsutil, a process identity checked before every signal, the stop
// sequence (ocp_agentd first, SIGTERM, grace, SIGKILL, verify, rescan), what
// a running process needs to be started again (StartSpec), and the start
// sequence (bin/ocp_agentctl start, else the recorded command lines with
// ocp_agentd first, then verify).
package proc

import (
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// BaseNames are the OCP Agent's base processes. ocp_agentd supervises the
// other two and is stopped first.
var BaseNames = []string{"ocp_agentd", "ocp_mgragent", "ocp_monagent"}

// Supervisor is the base process that restarts the others.
const Supervisor = "ocp_agentd"

// Target is a base process found at discovery: its identity (PID, CreateTime,
// Exe) is checked again right before every signal.
type Target struct {
	PID        int32
	Name       string    // base name, one of BaseNames
	Exe        string    // executable path, without a " (deleted)" suffix
	CreateTime time.Time // process start time (millisecond precision)
	Cmdline    string    // command line, space separated
	User       string    // user name the process runs as
	Cwd        string    // working directory, empty when unreadable
}

// EventKind is a step in stopping or starting one process.
type EventKind int

// Event kinds.
const (
	EventFound       EventKind = iota + 1 // found, will be stopped
	EventSigtermSent                      // SIGTERM sent
	EventExited                           // exited (a zombie counts)
	EventSigkillSent                      // SIGKILL sent after the grace period
	EventSkipped                          // a base name outside the install home, left alone
	EventError                            // something failed for this process; see Message
	EventStarted                          // started, or found running already
	EventOutput                           // a line of bin/ocp_agentctl's output; Target is empty
)

// Event is one step of a stop or a start, reported as it happens.
type Event struct {
	Kind    EventKind
	Target  Target
	Time    time.Time
	Message string // a human-readable line for the subtask log
}

// Stopper is agentd's one handle on the base processes whose executable lies
// under InstallHome, not only their stop: Scan finds them (scan.go),
// ReadStartSpec records how one was started (spec.go), StopAll stops them
// (stop.go) and StartAll starts them again (start.go).
type Stopper struct {
	InstallHome string        // e.g. /home/admin/ocp_agent; must be absolute
	Grace       time.Duration // default grace between SIGTERM and SIGKILL (used when StopAll's grace is 0)
	MaxRounds   int           // rescan/restop rounds bound; 0 means 3
	StartWait   time.Duration // how long StartAll waits for the processes to run after starting them; 0 means 30s
	Log         zerolog.Logger
	Observer    Observer // told of scans, signals and commands (observe.go); nil: none

	scans atomic.Int64 // full scans of /proc made, for tests
}

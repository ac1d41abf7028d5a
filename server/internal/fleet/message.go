// Package fleet owns the connected agentds: one session per host, the
// commands dispatched to them and waiting for results, and what the agents
// report (heartbeats, progress, results). It knows nothing of gRPC; the
// AgentService adapter translates the stream's messages to these types.
package fleet

import (
	"time"

	"agentplane/server/internal/host"
)

// Hello is the first message of an agentd's stream.
type Hello struct {
	// Identity is the host the stream's verified client certificate names;
	// nil when it presented none.
	Identity *Identity
	// Token is the bootstrap token; accepted only when the fleet has one
	// (the server runs with --insecure) and the stream has no Identity.
	Token         string
	HostID        int64 // 0 at first registration
	HostName      string
	InnerIP       string
	MachineID     string
	AgentdVersion string
	InstallHome   string // the OCP Agent install home agentd watches
	// InstallHomeMissing: InstallHome does not exist on the host; its
	// agent is recorded as host.AgentNotInstalled.
	InstallHomeMissing bool
	Processes          []host.Process // base processes running now
}

// Identity is an agent's host as its verified client certificate names it.
type Identity struct {
	HostID   int64  // from the URI SAN agentplane://hosts/<id>
	HostName string // the certificate's common name
	// Serial (lowercase hex) and validity of the certificate, checked
	// against the certificates the server issued (Config.Certs).
	Serial              string
	NotBefore, NotAfter time.Time
}

// Welcome answers a Hello.
type Welcome struct {
	HostID            int64
	HeartbeatInterval time.Duration
	// Epoch is the stream's fencing token: the host's epoch in the store,
	// which the registration of this stream raised by one. 0 when the
	// registry keeps none.
	Epoch int64
}

// Command is work for an agentd, fenced by (SubtaskID, Attempt), and by
// Epoch against a server that no longer holds the host's stream.
type Command struct {
	SubtaskID int64
	Attempt   int
	Timeout   time.Duration // time left for the work
	// Epoch is the epoch of the session the command is sent on; the
	// session sets it (Dispatch's is ignored).
	Epoch int64
	// Resumed: the attempt may have reached agentd before (the server
	// restarted while it ran), so Dispatch asks agentd what became of it
	// (Query) before sending it (see query.go).
	Resumed bool
	// The action; exactly one is set.
	StopAgent  *StopAgent
	StartAgent *StartAgent
}

// StopAgent stops the OCP Agent's base processes. Grace 0 means agentd's own.
type StopAgent struct {
	Grace time.Duration
}

// StartAgent starts the OCP Agent's base processes (see the proto's
// StartAgentAction).
type StartAgent struct{}

// Cancel asks an agentd to stop the work of a command.
type Cancel struct {
	SubtaskID int64
	Attempt   int
	Reason    string
	Epoch     int64 // the epoch of the session it is sent on, set by the session
}

// Query asks an agentd what became of a command before it is sent again.
type Query struct {
	SubtaskID int64
	Attempt   int
	Epoch     int64 // the epoch of the session it is sent on, set by the session
}

// CommandState is what an agentd knows of a command (Answer).
type CommandState int

// Command states.
const (
	// StateUnknown: agentd never received the command.
	StateUnknown CommandState = iota + 1
	// StateWaiting: agentd journaled it as begun and waits for the
	// go-ahead (Begin); it touched nothing yet.
	StateWaiting
	// StateRunning: agentd is doing the work; its result follows.
	StateRunning
	// StateFinished: the command ended; Answer.Result is its result.
	StateFinished
)

// Answer is an agentd's answer to a Query.
type Answer struct {
	SubtaskID int64
	Attempt   int
	State     CommandState
	Result    *Result // set when State is StateFinished
}

// Ack tells an agentd that its result is stored.
type Ack struct {
	SubtaskID int64
	Attempt   int
}

// Begin is an agentd asking for the go-ahead to begin a command it
// received, before its first signal or process start (see Fleet.Receive).
type Begin struct {
	SubtaskID int64
	Attempt   int
}

// BeginAnswer answers a Begin: Proceed, or a refusal and why. A refusal
// with AskAgain is for now only: agentd keeps the command, touching
// nothing, and asks again when the command or a Query about it comes again
// (see fence.go).
type BeginAnswer struct {
	SubtaskID int64
	Attempt   int
	Proceed   bool
	Reason    string // why not; empty when Proceed
	AskAgain  bool
}

// Outbound is one message to an agentd; exactly one field is set.
type Outbound struct {
	Command     *Command
	Cancel      *Cancel
	Ack         *Ack
	BeginAnswer *BeginAnswer
	Query       *Query
}

// Heartbeat proves an agentd is alive; Processes nil means not reported.
type Heartbeat struct {
	Processes []host.Process
}

// Progress is one step of a running command.
type Progress struct {
	SubtaskID int64
	Attempt   int
	Time      time.Time
	Message   string
	PID       int32
}

// Outcome is how a command ended.
type Outcome int

// Outcomes.
const (
	Succeeded Outcome = iota + 1
	Failed
	Canceled
)

// Result is the final outcome of a command.
type Result struct {
	SubtaskID  int64
	Attempt    int
	Outcome    Outcome
	Message    string
	FinishTime time.Time
}

// Inbound is one message from an agentd after its Hello; exactly one field
// is set.
type Inbound struct {
	Heartbeat *Heartbeat
	Progress  *Progress
	Result    *Result
	Begin     *Begin
	Answer    *Answer
}

type key struct {
	subtask int64
	attempt int
}

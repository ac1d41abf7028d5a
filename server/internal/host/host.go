// Package host owns hosts: their registry record and the OCP Agent's state on
// them. The operations on the agent that turn into tasks are agentop's.
package host

import "time"

// Status is a host's status, as in OCP.
type Status string

// Host statuses.
const (
	StatusNew       Status = "NEW"
	StatusAvailable Status = "AVAILABLE"
	StatusOnline    Status = "ONLINE"
	StatusOffline   Status = "OFFLINE"
	StatusDeleting  Status = "DELETING"
)

// AgentStatus is the state of the OCP Agent on a host.
type AgentStatus string

// Agent statuses; the zero value means not known yet.
const (
	AgentUnknown AgentStatus = ""
	AgentStarted AgentStatus = "STARTED"
	AgentStopped AgentStatus = "STOPPED"
	// AgentNotInstalled: agentd found no install home on the host (its
	// --install-home), and no base process runs. A registration says so
	// with it (Host.AgentStatus); it stays while nothing runs, through
	// stops, until a base process runs or agentd registers again with an
	// install home.
	AgentNotInstalled AgentStatus = "NOT_INSTALLED"
)

// ResourceKind is the kind of task.Resource that is a host's agent-operation
// lock: the task holding the resource {ResourceKind, id} is the one agent
// operation on host id (Host.OpTaskID). agentop says which tasks hold it
// (agentop/lock.go); the store takes and releases it.
const ResourceKind = "host"

// Host is a machine with an agentd.
type Host struct {
	ID            int64
	Name          string
	InnerIP       string
	MachineID     string
	Status        Status
	AgentStatus   AgentStatus // in a registration: AgentNotInstalled when agentd found no install home, else unset
	AgentdVersion string
	InstallHome   string    // the OCP Agent install home agentd watches
	RevokeTime    time.Time // when an admin revoked the host's agent identity; zero if not
	LastSeen      time.Time // last time agentd was heard from; zero if never
	OpTaskID      int64     // agent-operation task holding the host (its Resource); 0 if none
	Processes     []Process // OCP Agent processes as agentd last reported them
	CreateTime    time.Time
	UpdateTime    time.Time
	// Epoch counts the agent streams the server accepted for the host
	// (RegisterHost adds one for each): the current stream's fencing token,
	// sent with its commands. 0 before the first.
	Epoch int64
	// Replica is the id of the server replica the host's current (or
	// last) stream was registered on (RegisterHost records it with the
	// epoch); "" for a host registered before replicas shared a fleet.
	Replica string
}

// Process is one OCP Agent base process as agentd reported it. A host's
// record keeps every base process agentd has seen there: STARTED while
// agentd reports it, STOPPED (with its last details) once it does not.
type Process struct {
	PID            int32
	Name           string
	Exe            string
	Cmdline        string
	User           string
	CreateTime     time.Time
	Status         AgentStatus // STARTED or STOPPED; as reported by agentd, STARTED
	LastActiveTime time.Time   // last report that had it running
}

// Agent is the OCP Agent on a host, as agentd last reported it (OCP's
// HostAgent).
type Agent struct {
	HostID      int64
	InnerIP     string
	InstallHome string
	Version     string // empty: agentd does not know it
	Status      AgentStatus
	LastSeen    time.Time
	Processes   []Process // every base process seen on the host, by name
	CreateTime  time.Time
	UpdateTime  time.Time
}

// ListQuery pages hosts. Page is 1-based (0: the first); Size is
// 1..paging.MaxSize (0: paging.DefaultSize).
type ListQuery struct {
	Page int
	Size int
}

// Page is one page of hosts and the total count over all pages.
type Page struct {
	Hosts []Host
	Total int64
}

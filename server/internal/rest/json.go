package rest

import (
	"path"
	"time"

	"agentplane/server/internal/auth"
	"agentplane/server/internal/host"
	"agentplane/server/internal/task"
)

// The JSON shapes. Task and subtask fields are those of the OCP API page's
// example (declared in its alphabetical order), plus a few optional extras;
// arrays and maps always render as [] and {}, never null.

type taskJSON struct {
	Context          contextJSON   `json:"context"`
	Creator          string        `json:"creator"`
	EndTime          *string       `json:"endTime,omitempty"` // extra: once final
	Executor         string        `json:"executor"`
	HostID           int64         `json:"hostId"`
	ID               int64         `json:"id"`
	Name             string        `json:"name"`
	Operation        string        `json:"operation"`
	StartTime        *string       `json:"startTime"`
	Status           string        `json:"status"`
	Subtasks         []subtaskJSON `json:"subtasks"`
	TaskDefinitionID int64         `json:"taskDefinitionId"`
	Type             string        `json:"type"`
}

type contextJSON struct {
	ListMap     map[string][]string `json:"listMap"`
	Parallel    bool                `json:"parallel"`
	ParallelIdx int                 `json:"parallelIdx"`
	StringMap   map[string]string   `json:"stringMap"`
}

type subtaskJSON struct {
	ClassName        string  `json:"className"`
	Description      string  `json:"description"`
	Downstreams      []int64 `json:"downstreams"`
	EndTime          *string `json:"endTime,omitempty"`  // extra
	Executor         string  `json:"executor,omitempty"` // extra: once run
	ID               int64   `json:"id"`
	Message          string  `json:"message,omitempty"` // extra: why it failed
	Name             string  `json:"name"`
	NodeType         string  `json:"nodeType"`
	Operation        string  `json:"operation"`
	ParallelIdx      int     `json:"parallelIdx"`
	ProhibitRollback bool    `json:"prohibitRollback"`
	RunTime          int     `json:"runTime"`
	SeriesID         int     `json:"seriesId"`
	StartTime        *string `json:"startTime,omitempty"` // extra
	Status           string  `json:"status"`
	Timeout          int64   `json:"timeout"` // seconds
	Upstreams        []int64 `json:"upstreams"`
}

func toTaskJSON(t *task.Task) taskJSON {
	subs := make([]subtaskJSON, 0, len(t.Subtasks))
	for i := range t.Subtasks {
		subs = append(subs, toSubtaskJSON(&t.Subtasks[i]))
	}
	listMap := make(map[string][]string, len(t.Context.ListMap))
	for k, v := range t.Context.ListMap {
		listMap[k] = nonNil(v)
	}
	stringMap := make(map[string]string, len(t.Context.StringMap))
	for k, v := range t.Context.StringMap {
		stringMap[k] = v
	}
	return taskJSON{
		Context: contextJSON{
			ListMap:     listMap,
			Parallel:    t.Context.Parallel,
			ParallelIdx: t.Context.ParallelIdx,
			StringMap:   stringMap,
		},
		Creator:          t.Creator,
		EndTime:          optTime(t.EndTime),
		Executor:         t.Executor,
		HostID:           t.HostID,
		ID:               t.ID,
		Name:             t.Name,
		Operation:        string(t.Operation),
		StartTime:        optTime(t.StartTime),
		Status:           string(t.Status),
		Subtasks:         subs,
		TaskDefinitionID: t.TaskDefinitionID,
		Type:             string(t.Type),
	}
}

func toSubtaskJSON(s *task.Subtask) subtaskJSON {
	return subtaskJSON{
		ClassName:        s.ClassName,
		Description:      s.Description,
		Downstreams:      nonNil(s.Downstreams),
		EndTime:          optTime(s.EndTime),
		Executor:         s.Executor,
		ID:               s.ID,
		Message:          s.Message,
		Name:             s.Name,
		NodeType:         s.NodeType,
		Operation:        string(s.Operation),
		ParallelIdx:      s.ParallelIdx,
		ProhibitRollback: s.ProhibitRollback,
		RunTime:          s.RunTime,
		SeriesID:         s.SeriesID,
		StartTime:        optTime(s.StartTime),
		Status:           string(s.Status),
		Timeout:          int64(s.Timeout / time.Second),
		Upstreams:        nonNil(s.Upstreams),
	}
}

type hostJSON struct {
	ID                int64   `json:"id"`
	Name              string  `json:"name"`
	InnerIPAddress    string  `json:"innerIpAddress"`
	MachineID         string  `json:"machineId"`
	Status            string  `json:"status"`
	AgentStatus       string  `json:"agentStatus"` // STARTED, STOPPED, NOT_INSTALLED or UNKNOWN
	AgentdVersion     string  `json:"agentdVersion"`
	LastAvailableTime *string `json:"lastAvailableTime"` // null if never seen
	OperationTaskID   int64   `json:"operationTaskId"`   // 0 if none
	CreateTime        *string `json:"createTime"`
	UpdateTime        *string `json:"updateTime"`
	RevokeTime        *string `json:"revokeTime"` // null unless an admin revoked the host's agent identity
}

func toHostJSON(h *host.Host) hostJSON {
	agent := string(h.AgentStatus)
	if agent == "" {
		agent = "UNKNOWN"
	}
	return hostJSON{
		ID:                h.ID,
		Name:              h.Name,
		InnerIPAddress:    h.InnerIP,
		MachineID:         h.MachineID,
		Status:            string(h.Status),
		AgentStatus:       agent,
		AgentdVersion:     h.AgentdVersion,
		LastAvailableTime: optTime(h.LastSeen),
		OperationTaskID:   h.OpTaskID,
		CreateTime:        optTime(h.CreateTime),
		UpdateTime:        optTime(h.UpdateTime),
		RevokeTime:        optTime(h.RevokeTime),
	}
}

// hostAgentJSON is OCP's HostAgent: the OCP Agent on one host.
type hostAgentJSON struct {
	ID                 int64         `json:"id"` // the host's id: one agent per host
	Version            string        `json:"version"`
	InstallHome        string        `json:"installHome"`
	LogHome            string        `json:"logHome"` // installHome + "/log"
	LastAvailableTime  *string       `json:"lastAvailableTime"`
	HostID             int64         `json:"hostId"`
	HostInnerIPAddress string        `json:"hostInnerIpAddress"`
	Status             string        `json:"status"` // STARTED, STOPPED or NOT_INSTALLED
	Processes          []processJSON `json:"processes"`
	CreateTime         *string       `json:"createTime"`
	UpdateTime         *string       `json:"updateTime"`
}

// processJSON is one OCP Agent base process of a HostAgent.
type processJSON struct {
	HostID         int64   `json:"hostId"`
	Alias          string  `json:"alias"` // ocp_agentd, ocp_mgragent, ocp_monagent
	PID            int32   `json:"pid"`
	User           string  `json:"user"`
	StartCommand   string  `json:"startCommand"`
	Ports          []int   `json:"ports"`       // not known: always []
	ElapsedTime    int64   `json:"elapsedTime"` // seconds since it started while STARTED, else 0
	LastActiveTime *string `json:"lastActiveTime"`
	Status         string  `json:"status"` // STARTED or STOPPED
}

// toHostAgentJSON renders a host's agent as of now. An agent whose status is
// not known yet is STARTED when a base process runs, else STOPPED.
func toHostAgentJSON(a *host.Agent, now time.Time) hostAgentJSON {
	procs := make([]processJSON, 0, len(a.Processes))
	running := false
	for _, p := range a.Processes {
		status, elapsed := host.AgentStopped, int64(0)
		if p.Status == host.AgentStarted {
			status, running = host.AgentStarted, true
			if !p.CreateTime.IsZero() && now.After(p.CreateTime) {
				elapsed = int64(now.Sub(p.CreateTime) / time.Second)
			}
		}
		procs = append(procs, processJSON{
			HostID:         a.HostID,
			Alias:          p.Name,
			PID:            p.PID,
			User:           p.User,
			StartCommand:   p.Cmdline,
			Ports:          []int{},
			ElapsedTime:    elapsed,
			LastActiveTime: optTime(p.LastActiveTime),
			Status:         string(status),
		})
	}
	status := a.Status
	if status == host.AgentUnknown {
		status = host.AgentStopped
		if running {
			status = host.AgentStarted
		}
	}
	logHome := ""
	if a.InstallHome != "" {
		logHome = path.Join(a.InstallHome, "log")
	}
	return hostAgentJSON{
		ID:                 a.HostID,
		Version:            a.Version,
		InstallHome:        a.InstallHome,
		LogHome:            logHome,
		LastAvailableTime:  optTime(a.LastSeen),
		HostID:             a.HostID,
		HostInnerIPAddress: a.InnerIP,
		Status:             string(status),
		Processes:          procs,
		CreateTime:         optTime(a.CreateTime),
		UpdateTime:         optTime(a.UpdateTime),
	}
}

// logJSON is the body of a page of a subtask's log: OCP's log text, and
// where the next page starts.
type logJSON struct {
	Log        string `json:"log"`
	Lines      int    `json:"lines"`
	NextOffset int64  `json:"nextOffset"`
	More       bool   `json:"more"`
}

// pageJSON is OCP's list body: data{contents[], page{...}}.
type pageJSON[T any] struct {
	Contents []T     `json:"contents"`
	Page     pageRef `json:"page"`
}

type pageRef struct {
	TotalElements int64 `json:"totalElements"`
	TotalPages    int64 `json:"totalPages"`
	Number        int   `json:"number"` // 1-based
	Size          int   `json:"size"`
}

func newPageRef(total int64, number, size int) pageRef {
	return pageRef{
		TotalElements: total,
		TotalPages:    (total + int64(size) - 1) / int64(size),
		Number:        number,
		Size:          size,
	}
}

// userJSON is a user as the API shows it: never the password hash.
type userJSON struct {
	ID         int64    `json:"id"`
	Username   string   `json:"username"`
	Roles      []string `json:"roles"`
	CreateTime *string  `json:"createTime"`
}

func toUserJSON(u auth.User) userJSON {
	roles := make([]string, 0, len(u.Roles))
	for _, r := range u.Roles {
		roles = append(roles, string(r))
	}
	return userJSON{ID: u.ID, Username: u.Username, Roles: roles, CreateTime: optTime(u.CreateTime)}
}

// batchRequest is the body of POST /compute/hosts/batchStopAgents,
// batchStartAgents and batchRestartAgents.
type batchRequest struct {
	HostIDs []int64 `json:"hostIds"`
}

// createUserRequest is the body of POST /iam/users.
type createUserRequest struct {
	Username string   `json:"username"`
	Password string   `json:"password"`
	Roles    []string `json:"roles"`
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

package fleet

import (
	"fmt"
	"slices"

	"agentplane/server/internal/errs"
	"agentplane/server/internal/host"
)

// Bounds on what an agentd reports. What it sends is stored (the host's
// row, a subtask's log and result), so a report over a bound is refused
// with ErrInvalidArgument, which ends the stream; nothing is cut.
const (
	// MaxReportedProcesses bounds the processes of one Hello or Heartbeat.
	MaxReportedProcesses = 64
	// MaxFieldBytes bounds a short text: host name, address, machine id,
	// version, install home, a process's executable and user.
	MaxFieldBytes = 4096
	// MaxTextBytes bounds a long text: a process's command line, a progress
	// line, a result's message.
	MaxTextBytes = 64 << 10
)

// BaseProcessNames are the OCP Agent's base processes, the only ones an
// agentd reports.
var BaseProcessNames = []string{"ocp_agentd", "ocp_mgragent", "ocp_monagent"}

// checkHello checks a Hello's fields against the bounds.
func checkHello(h Hello) error {
	for _, f := range []struct{ name, v string }{
		{"host name", h.HostName}, {"inner IP address", h.InnerIP}, {"machine id", h.MachineID},
		{"agentd version", h.AgentdVersion}, {"install home", h.InstallHome},
	} {
		if err := checkLen("hello", f.name, f.v, MaxFieldBytes); err != nil {
			return err
		}
	}
	return checkProcesses("hello", h.Processes)
}

// checkInbound checks a message's fields against the bounds.
func checkInbound(m Inbound) error {
	switch {
	case m.Heartbeat != nil:
		return checkProcesses("heartbeat", m.Heartbeat.Processes)
	case m.Progress != nil:
		return checkLen("progress", "message", m.Progress.Message, MaxTextBytes)
	case m.Result != nil:
		return checkLen("result", "message", m.Result.Message, MaxTextBytes)
	case m.Answer != nil:
		return checkAnswer(*m.Answer)
	}
	return nil
}

// checkAnswer checks an answer to a query: a known state, and with
// StateFinished the result of the command queried.
func checkAnswer(a Answer) error {
	switch a.State {
	case StateUnknown, StateWaiting, StateRunning:
		return nil
	case StateFinished:
		r := a.Result
		if r == nil || r.SubtaskID != a.SubtaskID || r.Attempt != a.Attempt {
			return fmt.Errorf("answer about subtask %d attempt %d: finished without its result: %w", a.SubtaskID, a.Attempt, errs.ErrInvalidArgument)
		}
		return checkLen("answer", "result's message", r.Message, MaxTextBytes)
	}
	return fmt.Errorf("answer about subtask %d attempt %d with state %d: %w", a.SubtaskID, a.Attempt, a.State, errs.ErrInvalidArgument)
}

func checkProcesses(what string, ps []host.Process) error {
	if len(ps) > MaxReportedProcesses {
		return fmt.Errorf("%s reports %d processes, at most %d allowed: %w", what, len(ps), MaxReportedProcesses, errs.ErrInvalidArgument)
	}
	for i, p := range ps {
		if !slices.Contains(BaseProcessNames, p.Name) {
			return fmt.Errorf("%s: process %d is named %.64q; agentd reports only the base processes %v: %w", what, i, p.Name, BaseProcessNames, errs.ErrInvalidArgument)
		}
		for _, f := range []struct {
			name, v string
			max     int
		}{{"executable", p.Exe, MaxFieldBytes}, {"user", p.User, MaxFieldBytes}, {"command line", p.Cmdline, MaxTextBytes}} {
			if err := checkLen(what, fmt.Sprintf("process %d's %s", i, f.name), f.v, f.max); err != nil {
				return err
			}
		}
	}
	return nil
}

func checkLen(what, field, v string, max int) error {
	if len(v) > max {
		return fmt.Errorf("%s: %s of %d bytes, at most %d allowed: %w", what, field, len(v), max, errs.ErrInvalidArgument)
	}
	return nil
}

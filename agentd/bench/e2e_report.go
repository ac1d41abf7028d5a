package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	taskv1 "agentplane/gen/agentplane/task/v1"
)

func e2eMessages(t *taskv1.Task) string {
	var out []string
	for _, st := range t.GetSubtasks() {
		if st.GetMessage() != "" {
			out = append(out, st.GetName()+": "+st.GetMessage())
		}
	}
	return strings.Join(out, "; ")
}

// e2eAgentdTimes reads agentd's JSON log: when each subtask's command
// started and finished there (millisecond timestamps).
func e2eAgentdTimes(paths []string) map[int64][2]time.Time {
	out := map[int64][2]time.Time{}
	for _, p := range paths {
		e2eAgentdLog(p, out)
	}
	return out
}

func e2eAgentdLog(path string, out map[int64][2]time.Time) {
	eachLogLine(path, func(line []byte) {
		var e struct {
			Msg     string `json:"message"`
			Subtask int64  `json:"subtask_id"`
			Time    string `json:"time"`
		}
		if json.Unmarshal(line, &e) != nil || e.Subtask == 0 {
			return
		}
		i := map[string]int{"command started": 0, "command finished": 1}
		k, ok := i[e.Msg]
		if !ok {
			return
		}
		t, err := time.Parse(time.RFC3339Nano, e.Time)
		if err != nil {
			return
		}
		v := out[e.Subtask]
		v[k] = t
		out[e.Subtask] = v
	})
}

// e2eRows turns the samples into the report: the end-to-end row, the
// baseline row, a row per subtask (its end − start on the server's
// millisecond clock), and a row of the time between them.
func e2eRows(samples []e2eSample, base *Latencies, agentdLogs []string) []Row {
	var total, accept Latencies
	for _, s := range samples {
		total.Add(s.total)
		accept.Add(s.accept)
	}
	main := Row{Bench: "stop-e2e", Case: "3 graceful processes, gRPC, WatchTask", Baseline: "bench SIGTERM+wait p50"}
	total.Fill(&main)
	if b := base.Quantile(0.5); b > 0 {
		main.Ratio = float64(total.Quantile(0.5)) / float64(b)
	}
	p50, p99 := total.Quantile(0.5), total.Quantile(0.99)
	main.Check("p50 ≤ 15 ms, p99 ≤ 50 ms", p50 <= 15*time.Millisecond && p99 <= 50*time.Millisecond)
	main.Note = fmt.Sprintf("request → SUCCESSFUL seen by WatchTask; stops rotate over %d agentds (each ≥ %s apart: the agent stream's message limit), server on SQLite, all TLS", e2eHosts, e2eHostInterval)

	baseRow := Row{Bench: "stop-e2e", Case: "baseline: bench stops 3 fakes itself",
		Note: "SIGTERM ocp_agentd via pidfd, wait; then the other two, wait (agentd's order, no checks)"}
	base.Fill(&baseRow)

	rows := []Row{main, baseRow}
	acceptRow := Row{Bench: "stop-e2e", Case: "part: accept (request → task)"}
	accept.Fill(&acceptRow)
	rows = append(rows, acceptRow)

	if len(samples) == 0 {
		return rows
	}
	// Phases on the server's clock (ms), in DAG order.
	names := []string{}
	for _, st := range samples[0].task.GetSubtasks() {
		names = append(names, st.GetName())
	}
	durs := make([]Latencies, len(names))
	gaps := make([]Latencies, len(names)+1) // before each subtask, and after the last until the task's end
	var notify Latencies                    // task end → the final task seen by the client
	var dispatch, agentdExec, result Latencies
	agentdTimes := e2eAgentdTimes(agentdLogs)
	for _, s := range samples {
		t := s.task
		prev := t.GetStartTime().AsTime()
		for i, st := range t.GetSubtasks() {
			if i >= len(names) {
				break
			}
			start, end := st.GetStartTime().AsTime(), st.GetEndTime().AsTime()
			gaps[i].Add(start.Sub(prev))
			durs[i].Add(end.Sub(start))
			prev = end
			if at, ok := agentdTimes[st.GetId()]; ok && !at[0].IsZero() && !at[1].IsZero() {
				dispatch.Add(at[0].Sub(start))
				agentdExec.Add(at[1].Sub(at[0]))
				result.Add(end.Sub(at[1]))
			}
		}
		end := t.GetEndTime().AsTime()
		gaps[len(names)].Add(end.Sub(prev))
		notify.Add(s.seen.Sub(end))
	}
	for i, n := range names {
		r := Row{Bench: "stop-e2e", Case: fmt.Sprintf("part: subtask %d %s", i+1, n)}
		durs[i].Fill(&r)
		if i == 0 {
			r.Note = "subtasks and gaps on the server's clock, whole milliseconds (0 prints as -)"
		}
		if dispatch.Len() > 0 && strings.HasPrefix(n, "Stop all") {
			r.Extra = map[string]float64{}
			e2eExtra(r.Extra, "to_agentd", &dispatch)
			e2eExtra(r.Extra, "agentd_run", &agentdExec)
			e2eExtra(r.Extra, "result_back", &result)
			r.Note = "split by agentd's log (ms): server → agentd's \"command started\" → \"command finished\" → subtask end"
		}
		rows = append(rows, r)
	}
	gapRow := Row{Bench: "stop-e2e", Case: "part: between subtasks (queueing)", Extra: map[string]float64{},
		Note: "server clock (ms): task start → subtask 1, between subtasks, last → task end; task end → WatchTask delivery (client clock)"}
	var sum Latencies
	for _, s := range samples {
		t := s.task
		busy := time.Duration(0)
		for _, st := range t.GetSubtasks() {
			busy += st.GetEndTime().AsTime().Sub(st.GetStartTime().AsTime())
		}
		sum.Add(t.GetEndTime().AsTime().Sub(t.GetStartTime().AsTime()) - busy)
	}
	sum.Fill(&gapRow)
	e2eExtra(gapRow.Extra, "start_to_1", &gaps[0])
	for i := 1; i < len(names); i++ {
		e2eExtra(gapRow.Extra, fmt.Sprintf("%d_to_%d", i, i+1), &gaps[i])
	}
	e2eExtra(gapRow.Extra, fmt.Sprintf("%d_to_end", len(names)), &gaps[len(names)])
	e2eExtra(gapRow.Extra, "end_to_watch", &notify)
	return append(rows, gapRow)
}

func e2eExtra(m map[string]float64, name string, l *Latencies) {
	m[name+"_p50_ms"] = Ms(l.Quantile(0.5))
	m[name+"_p99_ms"] = Ms(l.Quantile(0.99))
}

// eachLogLine calls f with each line of the log at path (none when it
// cannot be read).
func eachLogLine(path string, f func(line []byte)) {
	fh, err := os.Open(path)
	if err != nil {
		return
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f(sc.Bytes())
	}
}

package rest

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"agentplane/server/internal/task"
)

// extraKeys lists, per object path, the keys a rendered body may have beyond
// the spec example's; "*" marks a map whose keys are data (task parameters),
// neither required nor limited. The main test checks their values apart.
var extraKeys = map[string][]string{
	"$.data":                   {"endTime"},
	"$.data.subtasks[]":        {"endTime", "executor", "startTime", "message"},
	"$.data.context.listMap":   {"*"},
	"$.data.context.stringMap": {"*"},
}

func loadExample(t *testing.T) map[string]any {
	t.Helper()
	b, err := os.ReadFile("testdata/stop_response_example.json")
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func jsonType(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case float64:
		return "number"
	case string:
		return "string"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	}
	return fmt.Sprintf("%T", v)
}

// sameShape reports every difference between want's and got's key sets and
// JSON types, recursively; array elements of got are each compared with
// want's first element.
func sameShape(path string, want, got any) []string {
	if wt, gt := jsonType(want), jsonType(got); wt != gt {
		return []string{fmt.Sprintf("%s: %s, want %s", path, gt, wt)}
	}
	var diffs []string
	switch w := want.(type) {
	case map[string]any:
		g := got.(map[string]any)
		allowed := extraKeys[path]
		dataMap := slices.Contains(allowed, "*") // keys are data, not schema
		for k, wv := range w {
			gv, ok := g[k]
			if !ok && dataMap {
				continue
			}
			if !ok {
				diffs = append(diffs, fmt.Sprintf("%s.%s: missing", path, k))
				continue
			}
			diffs = append(diffs, sameShape(path+"."+k, wv, gv)...)
		}
		for k := range g {
			if _, ok := w[k]; !ok && !dataMap && !slices.Contains(allowed, k) {
				diffs = append(diffs, fmt.Sprintf("%s.%s: not in the spec example", path, k))
			}
		}
	case []any:
		if len(w) == 0 {
			break
		}
		for _, gv := range got.([]any) {
			diffs = append(diffs, sameShape(path+"[]", w[0], gv)...)
		}
	}
	return diffs
}

func TestStopResponseMatchesSpecExample(t *testing.T) {
	example := loadExample(t)
	env := newTestEnv(t)
	r := env.do(t, req{method: "POST", path: "/api/v2/compute/hosts/2/agent/stop", user: "manager"})
	if r.status != 200 {
		t.Fatalf("status = %d: %s", r.status, r.raw)
	}
	for _, d := range sameShape("$", example, r.body) {
		t.Error(d)
	}
	// Values the issue pins down: names, class names, the chain, timeouts.
	wantData := example["data"].(map[string]any)
	gotData := r.body["data"].(map[string]any)
	for _, k := range []string{"name", "type", "operation", "status", "hostId", "taskDefinitionId", "context"} {
		wj, _ := json.Marshal(wantData[k])
		gj, _ := json.Marshal(gotData[k])
		if string(wj) != string(gj) {
			t.Errorf("data.%s = %s, want %s", k, gj, wj)
		}
	}
	byID := func(subs []any) map[float64]string {
		m := map[float64]string{}
		for _, s := range subs {
			s := s.(map[string]any)
			delete(s, "endTime") // extras, absent here anyway
			b, _ := json.Marshal(s)
			m[s["id"].(float64)] = string(b)
		}
		return m
	}
	w, g := byID(wantData["subtasks"].([]any)), byID(gotData["subtasks"].([]any))
	for id, ws := range w {
		if g[id] != ws {
			t.Errorf("subtask %v = %s, want %s", id, g[id], ws)
		}
	}
}

// TestTaskShapeVariants renders tasks in other states (nil maps and slices,
// a running subtask with extras, a final task) and checks they keep the
// example's shape: [] and {} rather than null.
func TestTaskShapeVariants(t *testing.T) {
	example := loadExample(t)
	now := time.Now()
	tests := map[string]func(*task.Task){
		"nil maps and slices": func(tk *task.Task) {
			tk.Context.ListMap, tk.Context.StringMap = nil, nil
			for i := range tk.Subtasks {
				tk.Subtasks[i].Upstreams, tk.Subtasks[i].Downstreams = nil, nil
			}
		},
		"running subtask": func(tk *task.Task) {
			s := &tk.Subtasks[0]
			s.Status, s.Executor, s.StartTime = task.SubtaskRunning, "10.0.0.1", now
		},
		"final task": func(tk *task.Task) {
			tk.Status, tk.EndTime = task.StatusFailed, now
			s := &tk.Subtasks[0]
			s.Status, s.StartTime, s.EndTime, s.Message = task.SubtaskFailed, now, now, "host 2: agentd not connected"
			tk.Context.ListMap = map[string][]string{"host_ids": nil}
		},
	}
	for name, mutate := range tests {
		t.Run(name, func(t *testing.T) {
			tk := specTask()
			mutate(tk)
			b, err := json.Marshal(envelope{Data: toTaskJSON(tk), Successful: true, Timestamp: formatTime(now), TraceID: "0123456789abcdef"})
			if err != nil {
				t.Fatal(err)
			}
			var got map[string]any
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			for _, d := range sameShape("$", example, got) {
				t.Error(d)
			}
			data := got["data"].(map[string]any)
			if jsonType(data["context"].(map[string]any)["listMap"]) != "object" {
				t.Errorf("listMap is not an object: %s", b)
			}
			if lm, ok := data["context"].(map[string]any)["listMap"].(map[string]any)["host_ids"]; ok && jsonType(lm) != "array" {
				t.Errorf("listMap value is %s, want array", jsonType(lm))
			}
			for _, s := range data["subtasks"].([]any) {
				s := s.(map[string]any)
				if jsonType(s["upstreams"]) != "array" || jsonType(s["downstreams"]) != "array" {
					t.Errorf("subtask %v up/downstreams not arrays", s["id"])
				}
				for _, k := range []string{"startTime", "endTime"} {
					if v, ok := s[k]; ok && !timeRE.MatchString(v.(string)) {
						t.Errorf("subtask %s = %v", k, v)
					}
				}
			}
		})
	}
}

func TestFormatTime(t *testing.T) {
	tm := time.Date(2021, 9, 3, 6, 27, 59, 694_500_000, time.UTC)
	got := formatTime(tm)
	if !timeRE.MatchString(got) {
		t.Fatalf("formatTime = %q", got)
	}
	back, err := time.Parse(TimeLayout, got)
	if err != nil || !back.Equal(tm.Truncate(time.Millisecond)) {
		t.Errorf("round trip %q = %v, %v", got, back, err)
	}
}

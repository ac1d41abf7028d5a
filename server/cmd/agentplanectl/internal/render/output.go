// Package render draws agentplanectl's output: tables (times in the local
// zone), protobuf JSON and YAML (ISO-8601 times in UTC), and a task being
// followed, live on a terminal (live.go) or as plain lines (plain.go).
package render

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"sigs.k8s.io/yaml"
)

// Formats of -o.
const (
	Table = "table"
	JSON  = "json"
	YAML  = "yaml"
)

// CheckFormat returns an error for an unknown -o value.
func CheckFormat(f string) error {
	switch f {
	case Table, JSON, YAML:
		return nil
	}
	return fmt.Errorf("unknown output format %q: use table, json or yaml", f)
}

var jsonOpts = protojson.MarshalOptions{EmitUnpopulated: true}

// Message writes m as protobuf JSON (protojson: lowerCamelCase names, enums
// by name, int64 as strings, times as RFC 3339 in UTC) or as the YAML of
// that JSON.
func Message(w io.Writer, format string, m proto.Message) error {
	b, err := jsonOpts.Marshal(m)
	if err != nil {
		return err
	}
	if format == YAML {
		if b, err = yaml.JSONToYAML(b); err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	// protojson's own indentation varies on purpose; encoding/json's is stable.
	var out bytes.Buffer
	if err := json.Indent(&out, b, "", "  "); err != nil {
		return err
	}
	out.WriteByte('\n')
	_, err = out.WriteTo(w)
	return err
}

// Tab is a table writer: columns separated by two spaces.
type Tab struct{ tw *tabwriter.Writer }

// NewTab starts a table with the given header.
func NewTab(w io.Writer, header ...string) *Tab {
	t := &Tab{tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)}
	t.Row(toAny(header)...)
	return t
}

func toAny(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

// Row adds a row; each cell is printed with %v, tabs and newlines replaced.
func (t *Tab) Row(cells ...any) {
	s := make([]string, len(cells))
	for i, c := range cells {
		s[i] = strings.NewReplacer("\t", " ", "\n", " ").Replace(fmt.Sprint(c))
	}
	fmt.Fprintln(t.tw, strings.Join(s, "\t"))
}

// Flush writes the table.
func (t *Tab) Flush() error { return t.tw.Flush() }

// TimeFormat is how tables show a time: the local zone, to the second.
const TimeFormat = "2006-01-02 15:04:05 MST"

// Time formats a protobuf time for a table: "-" when unset.
func Time(ts *timestamppb.Timestamp) string {
	if ts == nil || (ts.GetSeconds() == 0 && ts.GetNanos() == 0) {
		return "-"
	}
	return ts.AsTime().Local().Format(TimeFormat)
}

// Duration formats d to a tenth of a second under a minute, else to the
// second.
func Duration(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	if d < time.Minute {
		return fmt.Sprintf("%.1fs", d.Seconds())
	}
	return d.Round(time.Second).String()
}

// Enum strips an enum value's type prefix: TASK_STATUS_RUNNING → RUNNING.
func Enum(name, prefix string) string {
	s := strings.TrimPrefix(name, prefix)
	if s == "UNSPECIFIED" {
		return "-"
	}
	return s
}

// Or returns s, or "-" when it is empty.
func Or(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// ID formats an id, "-" for 0.
func ID(id int64) string {
	if id == 0 {
		return "-"
	}
	return fmt.Sprint(id)
}

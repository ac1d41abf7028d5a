package cmd

import (
	"io"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "agentplane/gen/agentplane/audit/v1"
	"agentplane/server/cmd/agentplanectl/internal/render"
)

func (a *app) auditCmd() *cobra.Command {
	audit := &cobra.Command{Use: "audit", Short: "Read the audit record (ADMIN)"}
	var req auditv1.ListAuditEventsRequest
	var host string
	var since time.Duration
	list := &cobra.Command{
		Use:   "list",
		Short: "List audit events, newest first",
		Args:  argsN(0, 0, "list [--by USER] [--operation OP] [--host HOST] [--task ID] [--outcome O] [--since 1h]"),
		RunE: func(c *cobra.Command, _ []string) error {
			if host != "" {
				id, err := a.hostID(c.Context(), host)
				if err != nil {
					return err
				}
				req.HostId = id
			}
			if since > 0 {
				req.StartTime = timestamppb.New(time.Now().Add(-since))
			}
			cl, err := a.conn()
			if err != nil {
				return err
			}
			r, err := cl.Audit.ListAuditEvents(c.Context(), &req)
			if err != nil {
				return err
			}
			return a.print(r, func(w io.Writer) error { return render.AuditEvents(w, r.GetEvents()) })
		},
	}
	f := list.Flags()
	f.StringVar(&req.Username, "by", "", "events of this user")
	f.StringVar(&req.Operation, "operation", "", "events of this operation")
	f.StringVar(&host, "host", "", "events about this host (id or name)")
	f.Int64Var(&req.TaskId, "task", 0, "events about this task")
	f.StringVar(&req.Outcome, "outcome", "", "OK or an error kind")
	f.DurationVar(&since, "since", 0, "only the events of this last period (e.g. 1h)")
	f.Int32Var(&req.Page, "page", 1, "page, from 1")
	f.Int32Var(&req.Size, "size", 20, "page size (at most 2000)")
	audit.AddCommand(list)
	return audit
}

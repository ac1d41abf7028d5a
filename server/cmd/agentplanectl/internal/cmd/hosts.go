package cmd

import (
	"io"

	"github.com/spf13/cobra"

	hostv1 "agentplane/gen/agentplane/host/v1"
	"agentplane/server/cmd/agentplanectl/internal/render"
)

func (a *app) hostsCmd() *cobra.Command {
	hosts := &cobra.Command{Use: "hosts", Aliases: []string{"host"}, Short: "List and show hosts"}
	var page, size int32
	list := &cobra.Command{
		Use:   "list",
		Short: "List the hosts (every page unless --page is given)",
		Args:  argsN(0, 0, "list [--page N --size N]"),
		RunE: func(c *cobra.Command, _ []string) error {
			var resp *hostv1.ListHostsResponse
			if page > 0 {
				cl, err := a.conn()
				if err != nil {
					return err
				}
				if resp, err = cl.Hosts.ListHosts(c.Context(), &hostv1.ListHostsRequest{Page: page, Size: size}); err != nil {
					return err
				}
			} else {
				all, err := a.allHosts(c.Context())
				if err != nil {
					return err
				}
				resp = &hostv1.ListHostsResponse{Hosts: all, TotalElements: int64(len(all))}
			}
			return a.print(resp, func(w io.Writer) error { return render.Hosts(w, resp.GetHosts()) })
		},
	}
	list.Flags().Int32Var(&page, "page", 0, "one page, from 1 (default: every host)")
	list.Flags().Int32Var(&size, "size", 20, "page size with --page (at most 2000)")
	get := &cobra.Command{
		Use:   "get HOST",
		Short: "Show a host (by id or name)",
		Args:  argsN(1, 1, "get HOST"),
		RunE: func(c *cobra.Command, args []string) error {
			id, cl, err := a.hostConn(c.Context(), args[0])
			if err != nil {
				return err
			}
			r, err := cl.Hosts.GetHost(c.Context(), &hostv1.GetHostRequest{Id: id})
			if err != nil {
				return err
			}
			return a.print(r.GetHost(), func(w io.Writer) error { return render.Hosts(w, []*hostv1.Host{r.GetHost()}) })
		},
	}
	hosts.AddCommand(list, get)
	return hosts
}

package cmd

import (
	"context"
	"strconv"

	hostv1 "agentplane/gen/agentplane/host/v1"
	"agentplane/server/cmd/agentplanectl/internal/client"
	"agentplane/server/cmd/agentplanectl/internal/render"
)

// pageSize is the largest page the server serves (paging.MaxSize).
const pageSize = 2000

// allHosts lists every host, page by page, once per run.
func (a *app) allHosts(ctx context.Context) ([]*hostv1.Host, error) {
	if a.hosts != nil {
		return a.hosts, nil
	}
	c, err := a.conn()
	if err != nil {
		return nil, err
	}
	var all []*hostv1.Host
	for page := int32(1); ; page++ {
		r, err := c.Hosts.ListHosts(ctx, &hostv1.ListHostsRequest{Page: page, Size: pageSize})
		if err != nil {
			return nil, err
		}
		all = append(all, r.GetHosts()...)
		if len(r.GetHosts()) < pageSize || int64(len(all)) >= r.GetTotalElements() {
			break
		}
	}
	a.hosts = all
	return all, nil
}

// hostID resolves a host argument: a positive decimal id as is, else the
// name of a host.
func (a *app) hostID(ctx context.Context, arg string) (int64, error) {
	if id, err := strconv.ParseInt(arg, 10, 64); err == nil && id > 0 {
		return id, nil
	}
	hosts, err := a.allHosts(ctx)
	if err != nil {
		return 0, err
	}
	for _, h := range hosts {
		if h.GetName() == arg {
			return h.GetId(), nil
		}
	}
	return 0, client.Exitf(client.ExitRefused, "no host named %q ('agentplanectl hosts list' shows them)", arg)
}

// hostConn resolves a host argument and returns the connection too.
func (a *app) hostConn(ctx context.Context, arg string) (int64, *client.Client, error) {
	id, err := a.hostID(ctx, arg)
	if err != nil {
		return 0, nil, err
	}
	c, err := a.conn()
	return id, c, err
}

// hostIDs resolves several host arguments; a host named twice is an error.
func (a *app) hostIDs(ctx context.Context, args []string) ([]int64, error) {
	ids := make([]int64, 0, len(args))
	seen := map[int64]string{}
	for _, arg := range args {
		id, err := a.hostID(ctx, arg)
		if err != nil {
			return nil, err
		}
		if prev, ok := seen[id]; ok {
			return nil, usage("host %q and %q are the same host (id %d)", prev, arg, id)
		}
		seen[id] = arg
		ids = append(ids, id)
	}
	return ids, nil
}

// namer names hosts from the host list, listed on first use; a failure to
// list leaves them unnamed ("host N").
func (a *app) namer(ctx context.Context) render.HostNamer {
	var names map[int64]string
	return func(id int64) string {
		if names == nil {
			names = map[int64]string{}
			hosts, _ := a.allHosts(ctx)
			for _, h := range hosts {
				names[h.GetId()] = h.GetName()
			}
		}
		return names[id]
	}
}

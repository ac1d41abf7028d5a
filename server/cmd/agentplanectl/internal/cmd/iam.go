package cmd

import (
	"bufio"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	hostv1 "agentplane/gen/agentplane/host/v1"
	iamv1 "agentplane/gen/agentplane/iam/v1"
	"agentplane/server/cmd/agentplanectl/internal/render"
)

func (a *app) accessKeyCmd() *cobra.Command {
	ak := &cobra.Command{Use: "accesskey", Aliases: []string{"accesskeys"}, Short: "Create, list and delete access keys"}
	var forUser string
	create := &cobra.Command{
		Use:   "create",
		Short: "Create an access key (yours, or --for-user's as ADMIN); its secret is shown only now",
		Args:  argsN(0, 0, "create [--for-user NAME]"),
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := a.conn()
			if err != nil {
				return err
			}
			r, err := cl.IAM.CreateAccessKey(c.Context(), &iamv1.CreateAccessKeyRequest{Username: forUser})
			if err != nil {
				return err
			}
			return a.print(r, func(w io.Writer) error {
				k := r.GetAccessKey()
				fmt.Fprintf(w, "access key %s for user %s created.\n", k.GetAccessKeyId(), k.GetUsername())
				fmt.Fprintf(w, "AGENTPLANE_ACCESS_KEY=%s\nAGENTPLANE_SECRET_KEY=%s\n", k.GetAccessKeyId(), r.GetSecret())
				_, err := fmt.Fprintln(w, "The secret is shown only now: keep it (e.g. in a 0600 config file context).")
				return err
			})
		},
	}
	create.Flags().StringVar(&forUser, "for-user", "", "create the key for this user (ADMIN)")
	var listUser string
	list := &cobra.Command{
		Use:   "list",
		Short: "List access keys, without secrets (yours; every user's for an ADMIN)",
		Args:  argsN(0, 0, "list [--for-user NAME]"),
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := a.conn()
			if err != nil {
				return err
			}
			r, err := cl.IAM.ListAccessKeys(c.Context(), &iamv1.ListAccessKeysRequest{Username: listUser})
			if err != nil {
				return err
			}
			return a.print(r, func(w io.Writer) error { return render.AccessKeys(w, r.GetAccessKeys()) })
		},
	}
	list.Flags().StringVar(&listUser, "for-user", "", "only this user's keys")
	del := &cobra.Command{
		Use:   "delete ACCESS_KEY",
		Short: "Delete an access key: requests it signs are refused from then on",
		Args:  argsN(1, 1, "delete ACCESS_KEY"),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := a.conn()
			if err != nil {
				return err
			}
			r, err := cl.IAM.DeleteAccessKey(c.Context(), &iamv1.DeleteAccessKeyRequest{AccessKeyId: args[0]})
			if err != nil {
				return err
			}
			return a.print(r, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "access key %s deleted\n", args[0])
				return err
			})
		},
	}
	ak.AddCommand(create, list, del)
	return ak
}

func (a *app) userCmd() *cobra.Command {
	user := &cobra.Command{Use: "user", Aliases: []string{"users"}, Short: "Create users"}
	var roles []string
	var fromStdin bool
	create := &cobra.Command{
		Use:   "create NAME --role ROLE...",
		Short: "Create a user (ADMIN); the password is prompted for, or read from stdin with --password-stdin",
		Args:  argsN(1, 1, "create NAME --role ROLE... [--password-stdin]"),
		RunE: func(c *cobra.Command, args []string) error {
			pw, err := a.newPassword(args[0], fromStdin)
			if err != nil {
				return err
			}
			cl, err := a.conn()
			if err != nil {
				return err
			}
			var rs []string
			for _, r := range roles {
				rs = append(rs, strings.ToUpper(strings.TrimSpace(r)))
			}
			r, err := cl.IAM.CreateUser(c.Context(), &iamv1.CreateUserRequest{Username: args[0], Password: pw, Roles: rs})
			if err != nil {
				return err
			}
			return a.print(r.GetUser(), func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "user %s created with roles %s\n", r.GetUser().GetUsername(), strings.Join(r.GetUser().GetRoles(), ", "))
				return err
			})
		},
	}
	create.Flags().StringSliceVar(&roles, "role", nil, "ADMIN, HOST_MANAGER, HOST_VIEWER, TASK_MANAGER or TASK_VIEWER (repeat or comma-separate)")
	create.Flags().BoolVar(&fromStdin, "password-stdin", false, "read the new user's password from the first line of stdin")
	user.AddCommand(create)
	return user
}

// newPassword reads a new user's password: the first line of stdin, or
// twice from the terminal.
func (a *app) newPassword(name string, fromStdin bool) (string, error) {
	if fromStdin {
		line, err := bufio.NewReader(a.io.Stdin).ReadString('\n')
		if err != nil && (err != io.EOF || line == "") {
			return "", usage("--password-stdin: no password on stdin")
		}
		return strings.TrimRight(line, "\r\n"), nil
	}
	pw, err := a.promptPassword("Password for the new user " + name + ": ")
	if err != nil {
		return "", usage("no terminal to prompt for the new user's password: use --password-stdin")
	}
	again, err := a.promptPassword("Again: ")
	if err != nil {
		return "", err
	}
	if pw != again {
		return "", usage("the passwords differ")
	}
	return pw, nil
}

func (a *app) joinTokenCmd() *cobra.Command {
	jt := &cobra.Command{Use: "jointoken", Short: "Create join tokens that enroll agentd (ADMIN)"}
	var hostName string
	var ttl time.Duration
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a single-use join token, optionally bound to a host name",
		Args:  argsN(0, 0, "create [--host-name NAME] [--ttl 1h]"),
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := a.conn()
			if err != nil {
				return err
			}
			req := &hostv1.CreateJoinTokenRequest{HostName: hostName}
			if ttl > 0 {
				req.Ttl = durationpb.New(ttl)
			}
			r, err := cl.Hosts.CreateJoinToken(c.Context(), req)
			if err != nil {
				return err
			}
			return a.print(r, func(w io.Writer) error {
				fmt.Fprintf(w, "join token for %s, valid until %s (single use):\n", render.Or(r.GetHostName()), render.Time(r.GetExpireTime()))
				_, err := fmt.Fprintf(w, "AGENTPLANE_JOIN_TOKEN=%s\n", r.GetToken())
				return err
			})
		},
	}
	create.Flags().StringVar(&hostName, "host-name", "", "bind the token to this host name")
	create.Flags().DurationVar(&ttl, "ttl", 0, "validity (default 1h, at most 24h)")
	jt.AddCommand(create)
	return jt
}

// Package cmd is agentplanectl's command tree (spf13/cobra): one file per
// resource (hosts, agent, task, iam, audit), following a task live
// (watch.go), and host names resolved to ids (resolve.go).
package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"google.golang.org/protobuf/proto"

	hostv1 "agentplane/gen/agentplane/host/v1"
	"agentplane/server/cmd/agentplanectl/internal/client"
	"agentplane/server/cmd/agentplanectl/internal/config"
	"agentplane/server/cmd/agentplanectl/internal/render"
)

// IO is where a run reads and writes, and its environment.
type IO struct {
	Stdin          *os.File
	Stdout, Stderr io.Writer
	Getenv         func(string) string
	// StdoutTTY says stdout is a terminal: tasks are then drawn live.
	StdoutTTY bool
}

// app is one run: its flags, its connection (made on first use) and the
// hosts it has listed.
type app struct {
	io      IO
	version string
	flags   config.Flags
	output  string
	timeout time.Duration
	ran     bool // a command's RunE was reached: its errors are not usage errors

	client *client.Client
	hosts  []*hostv1.Host // every host, once listed (resolve.go)
}

// Run runs agentplanectl with args and returns its exit status; errors are
// printed to Stderr as one line.
func Run(ctx context.Context, version string, args []string, stdio IO) int {
	a := &app{io: stdio, version: version}
	root := a.root()
	root.SetArgs(args)
	root.SetOut(stdio.Stdout)
	root.SetErr(stdio.Stderr)
	err := root.ExecuteContext(ctx)
	if a.client != nil {
		defer a.client.Close()
	}
	if err == nil {
		return client.ExitOK
	}
	if !a.ran {
		fmt.Fprintf(stdio.Stderr, "error: %v\nRun 'agentplanectl --help' for usage.\n", err)
		return client.ExitUsage
	}
	msg, code := a.describe(err)
	fmt.Fprintf(stdio.Stderr, "error: %s\n", msg)
	return code
}

func (a *app) describe(err error) (string, int) {
	if a.client != nil {
		return a.client.Describe(err)
	}
	return (&client.Client{}).Describe(err)
}

func (a *app) root() *cobra.Command {
	root := &cobra.Command{
		Use:   "agentplanectl",
		Short: "Operate agentplane: hosts, OCP Agent stop/start/restart, tasks, access keys, audit",
		Long: `agentplanectl talks to agentplane-server's gRPC API.

Connection: --server, --ca-file, --user flags; else AGENTPLANE_SERVER, AGENTPLANE_CA_FILE,
AGENTPLANE_USER and AGENTPLANE_PASSWORD, or AGENTPLANE_ACCESS_KEY and AGENTPLANE_SECRET_KEY;
else the context of the config file ($XDG_CONFIG_HOME/agentplane/config.yaml, --config,
AGENTPLANE_CONFIG; --context or its current-context). Passwords and secrets are never flags.

Exit status: 0 done (a followed task SUCCESSFUL), 1 the task FAILED (or another failure),
2 bad usage or configuration, 3 server unreachable, too slow or credentials refused,
4 the server refused the request or found nothing, 130 interrupted while following.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(*cobra.Command, []string) error {
			if err := render.CheckFormat(a.output); err != nil {
				return err
			}
			a.ran = true
			return nil
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&a.flags.Config, "config", "", "config file (default $XDG_CONFIG_HOME/agentplane/config.yaml; env AGENTPLANE_CONFIG)")
	pf.StringVar(&a.flags.Context, "context", "", "context of the config file to use (default its current-context; env AGENTPLANE_CONTEXT)")
	pf.StringVar(&a.flags.Server, "server", "", "the server's gRPC address host:port (env AGENTPLANE_SERVER)")
	pf.StringVar(&a.flags.CAFile, "ca-file", "", "CA certificate that signed the server's (env AGENTPLANE_CA_FILE; default the system's)")
	pf.StringVar(&a.flags.User, "user", "", "user name; the password comes from AGENTPLANE_PASSWORD, the context or a prompt (env AGENTPLANE_USER)")
	pf.StringVarP(&a.output, "output", "o", render.Table, "output format: table, json or yaml")
	pf.DurationVar(&a.timeout, "timeout", 30*time.Second, "timeout of each call (following a task has none: Ctrl-C stops it)")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return err })
	// --version as the daemons have it, besides the version command.
	root.Version = a.version
	root.SetVersionTemplate("agentplanectl {{.Version}}\n")
	root.AddCommand(a.hostsCmd(), a.agentCmd(), a.taskCmd(), a.accessKeyCmd(), a.userCmd(), a.joinTokenCmd(), a.auditCmd(), a.versionCmd())
	return root
}

// conn returns the connection, resolving the configuration and prompting
// for a password on first use.
func (a *app) conn() (*client.Client, error) {
	if a.client != nil {
		return a.client, nil
	}
	cfg, err := config.Resolve(a.flags, a.io.Getenv)
	if err != nil {
		return nil, err
	}
	if cfg.Method == config.Basic && cfg.Password == "" {
		if cfg.Password, err = a.promptPassword(fmt.Sprintf("Password for %s at %s: ", cfg.User, cfg.Server)); err != nil {
			return nil, err
		}
	}
	c, err := client.New(cfg, a.timeout)
	if err != nil {
		return nil, err
	}
	a.client = c
	return c, nil
}

// promptPassword reads a password from the terminal without echo; without
// a terminal it is a configuration error.
func (a *app) promptPassword(prompt string) (string, error) {
	if a.io.Stdin == nil || !term.IsTerminal(int(a.io.Stdin.Fd())) {
		return "", config.Errorf("no password: set %s or put a password in the context (no terminal to prompt on)", config.EnvPassword)
	}
	fmt.Fprint(a.io.Stderr, prompt)
	b, err := term.ReadPassword(int(a.io.Stdin.Fd()))
	fmt.Fprintln(a.io.Stderr)
	if err != nil {
		return "", config.Errorf("reading the password: %v", err)
	}
	return string(b), nil
}

// print writes m as JSON or YAML, or calls table for -o table.
func (a *app) print(m proto.Message, table func(io.Writer) error) error {
	if a.output == render.Table {
		return table(a.io.Stdout)
	}
	return render.Message(a.io.Stdout, a.output, m)
}

// usage is an error of the command line (exit status 2).
func usage(format string, args ...any) error {
	return client.Exitf(client.ExitUsage, format, args...)
}

// argsN checks the number of arguments, as a usage error.
func argsN(lo, hi int, what string) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if len(args) < lo || (hi >= 0 && len(args) > hi) {
			path := c.CommandPath()
			if c.HasParent() {
				path = c.Parent().CommandPath() // what starts with the command's name
			}
			return errors.New("usage: " + path + " " + what)
		}
		return nil
	}
}

func (a *app) versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print agentplanectl's version",
		Args:  argsN(0, 0, "version"),
		RunE: func(*cobra.Command, []string) error {
			fmt.Fprintf(a.io.Stdout, "agentplanectl %s\n", a.version)
			return nil
		},
	}
}

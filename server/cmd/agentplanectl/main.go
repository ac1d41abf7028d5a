// Command agentplanectl is the operator's CLI of agentplane: hosts, the OCP
// Agent's stop/start/restart followed live, tasks, access keys, users, join
// tokens and the audit record, over the server's gRPC API. The commands are
// in internal/cmd; `agentplanectl --help` lists them, and the exit statuses.
package main

import (
	"context"
	"os"

	"golang.org/x/term"

	"agentplane/server/cmd/agentplanectl/internal/cmd"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(cmd.Run(context.Background(), version, os.Args[1:], cmd.IO{
		Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv,
		StdoutTTY: term.IsTerminal(int(os.Stdout.Fd())) && os.Getenv("TERM") != "dumb",
	}))
}

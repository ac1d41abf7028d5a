package cmd

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// run runs agentplanectl in-process with an environment of env only.
func run(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := Run(context.Background(), "v-test", args, IO{Stdout: &out, Stderr: &errOut, Getenv: func(k string) string { return env[k] }})
	return code, out.String(), errOut.String()
}

func TestUsageAndConfigErrors(t *testing.T) {
	home := map[string]string{"HOME": t.TempDir()}
	withServer := map[string]string{"HOME": t.TempDir(), "AGENTPLANE_SERVER": "127.0.0.1:1", "AGENTPLANE_USER": "u"}
	for _, tc := range []struct {
		env  map[string]string
		args []string
		code int
		want string
	}{
		{home, []string{"version"}, 0, "agentplanectl v-test"},
		{home, []string{"--version"}, 0, "agentplanectl v-test\n"},
		{home, []string{"bogus"}, 2, `unknown command "bogus"`},
		{home, []string{"hosts", "list", "--nope"}, 2, "unknown flag: --nope"},
		{home, []string{"agent", "stop"}, 2, "usage: agentplanectl agent stop HOST..."},
		{home, []string{"task", "get", "1", "2"}, 2, "usage: agentplanectl task get TASK"},
		{home, []string{"hosts", "list", "-o", "xml"}, 2, `unknown output format "xml"`},
		{home, []string{"hosts", "list"}, 2, "no server"},
		{home, []string{"task", "get", "-3"}, 2, "unknown shorthand flag"},
		{home, []string{"task", "get", "abc"}, 2, `task id "abc": want a positive number`},
		{home, []string{"task", "list", "--status", "DONE"}, 2, `--status "DONE": unknown value`},
		// No password and no terminal to prompt on.
		{withServer, []string{"hosts", "list"}, 2, "no password: set AGENTPLANE_PASSWORD"},
		{home, []string{"--config", "/nonexistent/config.yaml", "hosts", "list"}, 2, "config file"},
	} {
		code, out, errOut := run(t, tc.env, tc.args...)
		if code != tc.code || !strings.Contains(out+errOut, tc.want) {
			t.Errorf("%v: exit %d, want %d with %q\nstdout: %s\nstderr: %s", tc.args, code, tc.code, tc.want, out, errOut)
		}
	}
}

func TestHelpListsCommands(t *testing.T) {
	code, out, _ := run(t, nil, "--help")
	for _, c := range []string{"hosts", "agent", "task", "accesskey", "user", "jointoken", "audit", "version", "completion", "Exit status"} {
		if !strings.Contains(out, c) {
			t.Errorf("--help lacks %q:\n%s", c, out)
		}
	}
	if code != 0 {
		t.Errorf("--help exit %d", code)
	}
	code, out, _ = run(t, nil, "completion", "bash")
	if code != 0 || !strings.Contains(out, "agentplanectl") {
		t.Errorf("completion bash: exit %d, %d bytes", code, len(out))
	}
}

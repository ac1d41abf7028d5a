// Command fakeocpagent stands in for the OCP Agent's base processes in tests.
// One binary is installed as <home>/bin/{ocp_agentd,ocp_mgragent,ocp_monagent};
// its role is the base name of argv[0].
//
// As ocp_agentd it starts ocp_mgragent and ocp_monagent from its bin
// directory (FAKE_OCP_BIN overrides it) and restarts either when it exits. On
// SIGTERM it does not stop its children, like the real one.
//
// Behaviour on SIGTERM, from --mode, else FAKE_OCP_MODE_<name>, else
// FAKE_OCP_MODE, else graceful:
//
//	graceful     exit 0 at once
//	ignore-term  ignore it; only SIGKILL ends the process
//	slow         exit 0 after FAKE_OCP_SLOW (a Go duration, default 2s)
//	respawn      start a copy of itself, then exit 0, the copy having
//	             FAKE_OCP_RESPAWN (default unlimited) decremented; at 0 it is graceful
//
// It writes <home>/run/<name>.pid and appends to <home>/log/<name>.log, where
// <home> is the parent of its bin directory. It listens on nothing.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

const restartDelay = 50 * time.Millisecond

var logFile *os.File

func main() {
	name := filepath.Base(os.Args[0])
	modeFlag := flag.String("mode", "", "graceful, ignore-term, slow or respawn")
	flag.Parse()
	mode := *modeFlag
	if mode == "" {
		mode = os.Getenv("FAKE_OCP_MODE_" + name)
	}
	if mode == "" {
		mode = os.Getenv("FAKE_OCP_MODE")
	}
	if mode == "" {
		mode = "graceful"
	}

	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "fakeocpagent:", err)
		os.Exit(2)
	}
	bin := filepath.Dir(exe)
	home := filepath.Dir(bin)
	// Never cancelled: the fake ends by exit, as its mode says on SIGTERM,
	// and its children (supervised or respawned) are not ended with it.
	ctx := context.Background()

	// Handle SIGTERM before writing the pid file: a process whose pid file
	// is written is ready to be stopped.
	terms := make(chan os.Signal, 1)
	signal.Notify(terms, syscall.SIGTERM)
	openFiles(home, name)
	logf("%s pid %d started, mode %s", name, os.Getpid(), mode)

	if name == "ocp_agentd" {
		if b := os.Getenv("FAKE_OCP_BIN"); b != "" {
			bin = b
		}
		for _, child := range []string{"ocp_mgragent", "ocp_monagent"} {
			go supervise(ctx, filepath.Join(bin, child))
		}
	}

	exiting := false
	for range terms {
		switch mode {
		case "ignore-term":
			logf("SIGTERM ignored")
		case "slow":
			if exiting {
				continue
			}
			exiting = true
			d, err := time.ParseDuration(os.Getenv("FAKE_OCP_SLOW"))
			if err != nil {
				d = 2 * time.Second
			}
			logf("SIGTERM, exiting in %s", d)
			time.AfterFunc(d, func() { exit(0) })
		case "respawn":
			respawn(ctx, exe, filepath.Join(home, "run", name+".pid"))
			exit(0)
		default:
			logf("SIGTERM, exiting")
			exit(0)
		}
	}
}

// supervise runs path and starts it again whenever it exits.
func supervise(ctx context.Context, path string) {
	for {
		cmd := exec.CommandContext(ctx, path)
		if err := cmd.Start(); err != nil {
			logf("starting %s: %v", path, err)
		} else {
			logf("started %s pid %d", path, cmd.Process.Pid)
			err := cmd.Wait()
			logf("%s pid %d exited: %v", path, cmd.Process.Pid, err)
		}
		time.Sleep(restartDelay)
	}
}

// respawn starts a copy of this process unless FAKE_OCP_RESPAWN says no
// copies are left. Start returns once the copy has exec'd, so the copy is
// visible before this process exits; it then waits (up to 5s) for the copy to
// write its pid file, so the copy handles SIGTERM before this one exits.
func respawn(ctx context.Context, exe, pidFile string) {
	left := -1
	if v, err := strconv.Atoi(os.Getenv("FAKE_OCP_RESPAWN")); err == nil {
		left = v
	}
	if left == 0 {
		logf("SIGTERM, no respawns left, exiting")
		return
	}
	cmd := exec.CommandContext(ctx, exe, os.Args[1:]...)
	cmd.Env = append(os.Environ(), "FAKE_OCP_RESPAWN="+strconv.Itoa(left-1))
	if err := cmd.Start(); err != nil {
		logf("respawning: %v", err)
		return
	}
	want := strconv.Itoa(cmd.Process.Pid) + "\n"
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if b, _ := os.ReadFile(pidFile); string(b) == want {
			break
		}
	}
	logf("SIGTERM, respawned as pid %d, exiting", cmd.Process.Pid)
	_ = cmd.Process.Release() // only frees this process's handle; the copy lives on
}

func openFiles(home, name string) {
	for _, d := range []string{"run", "log"} {
		_ = os.MkdirAll(filepath.Join(home, d), 0o755)
	}
	_ = os.WriteFile(filepath.Join(home, "run", name+".pid"), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644)
	logFile, _ = os.OpenFile(filepath.Join(home, "log", name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
}

func logf(format string, args ...any) {
	if logFile != nil {
		fmt.Fprintf(logFile, time.Now().Format(time.RFC3339Nano)+" "+format+"\n", args...)
	}
}

func exit(code int) {
	if logFile != nil {
		logFile.Close()
	}
	os.Exit(code)
}

package proc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"time"
)

// StartSpec is how a base process was running when agentd last saw it:
// enough to start it again the same way. PID and CreateTime identify the
// process it was read from, so a caller re-reads a spec only when a base
// name is served by another process.
type StartSpec struct {
	Name       string    `json:"name"`        // base name, one of BaseNames
	PID        int32     `json:"pid"`         // the process it was read from
	CreateTime time.Time `json:"create_time"` // that process's start time (millisecond precision)
	Exe        string    `json:"exe"`         // executable path, without a " (deleted)" suffix
	Args       []string  `json:"args"`        // argv, Args[0] included
	Env        []string  `json:"env"`         // environment, KEY=value; nil when unreadable
	Dir        string    `json:"dir"`         // working directory; empty when unreadable
	UID        uint32    `json:"uid"`         // real user id
	GID        uint32    `json:"gid"`         // real group id
	Groups     []uint32  `json:"groups"`      // supplementary group ids
	User       string    `json:"user"`        // user name, or the uid in decimal when it has none
}

// ReadStartSpec reads t's command line, environment, working directory and
// credentials from /proc/<pid>. t comes from Scan; its identity (create
// time, executable) is checked after the reads, so a spec never mixes two
// processes. It returns an error when the process is gone, its PID was
// reused, or its command line or credentials cannot be read; an unreadable
// environment or working directory leaves Env or Dir empty.
func (s *Stopper) ReadStartSpec(ctx context.Context, t Target) (StartSpec, error) {
	dir := procRoot + "/" + strconv.Itoa(int(t.PID))
	args, err := readCmdline(ctx, t.PID)
	if err != nil {
		return StartSpec{}, fmt.Errorf("reading %s pid %d command line: %w", t.Name, t.PID, err)
	}
	status, err := os.ReadFile(dir + "/status")
	if err != nil {
		return StartSpec{}, fmt.Errorf("reading %s pid %d status: %w", t.Name, t.PID, goneOr(err))
	}
	ids, err := parseStatusIDs(status)
	if err != nil {
		return StartSpec{}, fmt.Errorf("reading %s pid %d status: %w", t.Name, t.PID, err)
	}
	spec := StartSpec{
		Name: t.Name, PID: t.PID, CreateTime: t.CreateTime, Exe: t.Exe,
		Args: args, Dir: t.Cwd, UID: ids.uid, GID: ids.gid, Groups: ids.groups, User: t.User,
	}
	if env, err := os.ReadFile(dir + "/environ"); err == nil {
		spec.Env = splitNUL(env)
		if spec.Env == nil {
			spec.Env = []string{}
		}
	}
	if spec.Dir == "" {
		spec.Dir, _ = os.Readlink(dir + "/cwd")
	}
	if spec.User == "" {
		spec.User = strconv.FormatUint(uint64(spec.UID), 10)
		if u, err := user.LookupId(spec.User); err == nil {
			spec.User = u.Username
		}
	}
	if err := checkIdentity(ctx, t); err != nil {
		return StartSpec{}, fmt.Errorf("reading %s pid %d: %w", t.Name, t.PID, err)
	}
	return spec, nil
}

// cmdlineWait bounds how long readCmdline waits for a command line to appear.
const cmdlineWait = 100 * time.Millisecond

// readCmdline reads /proc/<pid>/cmdline. A process in the middle of execve has
// its new name but, for a moment, an empty command line and environment
// (the kernel sets them up last); readCmdline waits that moment out. An
// empty command line after that is an error.
func readCmdline(ctx context.Context, pid int32) ([]string, error) {
	dir := procRoot + "/" + strconv.Itoa(int(pid))
	deadline := time.Now().Add(cmdlineWait)
	for interval := 100 * time.Microsecond; ; interval = min(2*interval, 10*time.Millisecond) {
		b, err := os.ReadFile(dir + "/cmdline")
		if err != nil {
			return nil, goneOr(err)
		}
		if args := splitNUL(b); len(args) > 0 {
			return args, nil
		}
		if st, err := readStat(pid); err != nil || st.zombie() {
			return nil, errGone // a zombie's command line is empty too
		}
		if time.Now().After(deadline) {
			return nil, errors.New("empty command line")
		}
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// splitNUL splits a NUL-terminated list such as /proc/<pid>/cmdline.
func splitNUL(b []byte) []string {
	b = bytes.TrimRight(b, "\x00")
	if len(b) == 0 {
		return nil
	}
	parts := bytes.Split(b, []byte{0})
	out := make([]string, len(parts))
	for i, p := range parts {
		out[i] = string(p)
	}
	return out
}

// statusIDs is what we use of /proc/<pid>/status.
type statusIDs struct {
	uid, gid uint32
	groups   []uint32
}

// parseStatusIDs reads the real uid and gid (the first of the Uid: and Gid:
// fields) and the supplementary groups from /proc/<pid>/status.
func parseStatusIDs(b []byte) (statusIDs, error) {
	var ids statusIDs
	var haveUID, haveGID bool
	for line := range bytes.Lines(b) {
		key, rest, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		fields := bytes.Fields(rest)
		switch string(key) {
		case "Uid", "Gid":
			if len(fields) == 0 {
				return statusIDs{}, fmt.Errorf("malformed %s line %q", key, line)
			}
			id, err := strconv.ParseUint(string(fields[0]), 10, 32)
			if err != nil {
				return statusIDs{}, fmt.Errorf("malformed %s line %q", key, line)
			}
			if key[0] == 'U' {
				ids.uid, haveUID = uint32(id), true
			} else {
				ids.gid, haveGID = uint32(id), true
			}
		case "Groups":
			for _, f := range fields {
				g, err := strconv.ParseUint(string(f), 10, 32)
				if err != nil {
					return statusIDs{}, fmt.Errorf("malformed Groups line %q", line)
				}
				ids.groups = append(ids.groups, uint32(g))
			}
		}
	}
	if !haveUID || !haveGID {
		return statusIDs{}, fmt.Errorf("no Uid or Gid line")
	}
	return ids, nil
}

package bench

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"

	hostv1 "agentplane/gen/agentplane/host/v1"
)

// waitConnected waits until the simulators report n hosts connected and the
// server lists the n hosts ONLINE, and returns their ids by host index.
func (f *fleetRun) waitConnected(ctx context.Context, sims *fleetSims, n int, timeout time.Duration) ([]int64, error) {
	if err := Poll(ctx, timeout, 100*time.Millisecond, fmt.Sprintf("the simulators to connect %d hosts", n), func() (bool, error) {
		connected := sims.total().Connected
		return sims.ready() && connected == int64(n), sims.err()
	}); err != nil {
		return nil, fmt.Errorf("%w (now %+v)", err, sims.total())
	}
	var ids []int64
	err := Poll(ctx, 60*time.Second, 250*time.Millisecond, fmt.Sprintf("the server to list %d hosts ONLINE", n), func() (bool, error) {
		var err error
		ids, err = f.onlineIDs(ctx, n)
		return err == nil && ids != nil, nil
	})
	return ids, err
}

// onlineIDs returns the ids of hosts bench-00000..n-1 when all of them are
// ONLINE, nil when some are not.
func (f *fleetRun) onlineIDs(ctx context.Context, n int) ([]int64, error) {
	byName := map[string]*hostv1.Host{}
	const size = 2000
	for page := int32(1); ; page++ {
		resp, err := f.hosts.ListHosts(ctx, &hostv1.ListHostsRequest{Page: page, Size: size}, grpc.MaxCallRecvMsgSize(fleetMaxRecvMsg))
		if err != nil {
			return nil, err
		}
		for _, h := range resp.GetHosts() {
			byName[h.GetName()] = h
		}
		if len(resp.GetHosts()) < size {
			break
		}
	}
	ids := make([]int64, n)
	for i := range n {
		h := byName[fmt.Sprintf("%s-%05d", fleetPrefix, i)]
		if h == nil || h.GetStatus() != hostv1.HostStatus_HOST_STATUS_ONLINE {
			return nil, nil
		}
		ids[i] = h.GetId()
	}
	return ids, nil
}

// startSims starts simulator processes for hosts 0..n-1, split evenly over
// as few processes as the open-file limit allows.
func (f *fleetRun) startSims(ctx context.Context, n int, stopDelay time.Duration) (*fleetSims, error) {
	k := (n + f.perSim - 1) / f.perSim
	sims := &fleetSims{}
	first := 0
	f.starts++
	servers := cmp.Or(f.servers, f.srv.GRPCAddr)
	for j := range k {
		hosts := n / k
		if j < n%k {
			hosts++
		}
		argv := []string{f.env.Binary("agentplane-sim"), "--server", servers, "--ca-file", f.srv.CAFile,
			"--hosts", strconv.Itoa(hosts), "--first", strconv.Itoa(first), "--state-dir", f.stateDir,
			"--name-prefix", fleetPrefix, "--enroll-user", AdminUser, "--enroll-password-env", "AGENTPLANE_ADMIN_PASSWORD",
			"--stop-delay", stopDelay.String(), "--stats-interval", fleetStatsEvery.String(), "--log-level", "warn"}
		p, err := f.env.Start(ctx, fmt.Sprintf("sim-n%d-%d-%d", n, f.starts, j), []string{"AGENTPLANE_ADMIN_PASSWORD=" + AdminPassword}, argv...)
		if err != nil {
			_ = sims.stop() // the start error is the one to report
			return nil, err
		}
		sims.procs = append(sims.procs, &fleetSim{p: p})
		first += hosts
	}
	return sims, ctx.Err()
}

// fleetStats is one stats line of agentplane-sim.
type fleetStats struct {
	Event       string    `json:"event"`
	T           time.Time `json:"t"`
	Enrolled    int64     `json:"enrolled"`
	Connected   int64     `json:"connected"`
	Welcomes    int64     `json:"welcomes"`
	Disconnects int64     `json:"disconnects"`
	Commands    int64     `json:"commands"`
	Results     int64     `json:"results"`
	Failed      int64     `json:"failed"`
}

// fleetSim reads one simulator's stats lines from its log as they come.
type fleetSim struct {
	p       *Process
	off     int64
	partial []byte
	lines   []fleetStats
	ready   bool
}

// read parses the lines appended to the log since the last read.
func (s *fleetSim) read() error {
	fh, err := os.Open(s.p.LogPath)
	if err != nil {
		return err
	}
	defer fh.Close()
	if _, err := fh.Seek(s.off, io.SeekStart); err != nil {
		return err
	}
	b, err := io.ReadAll(fh)
	if err != nil {
		return err
	}
	s.off += int64(len(b))
	b = append(s.partial, b...)
	i := bytes.LastIndexByte(b, '\n')
	if i < 0 {
		s.partial = b
		return nil
	}
	s.partial = slices.Clone(b[i+1:])
	for line := range bytes.SplitSeq(b[:i], []byte("\n")) {
		if !bytes.HasPrefix(line, []byte(`{"t":`)) && !bytes.HasPrefix(line, []byte(`{"event":`)) {
			continue // a log line
		}
		var st fleetStats
		if err := json.Unmarshal(line, &st); err != nil {
			return fmt.Errorf("%s: malformed stats line %q: %w", s.p.Name, line, err)
		}
		if st.Event == "ready" {
			s.ready = true
		}
		s.lines = append(s.lines, st)
	}
	return nil
}

func (s *fleetSim) last() fleetStats {
	if len(s.lines) == 0 {
		return fleetStats{}
	}
	return s.lines[len(s.lines)-1]
}

// fleetSims are the simulator processes of one fleet.
type fleetSims struct {
	mu      sync.Mutex
	procs   []*fleetSim
	stopped bool
}

// err reads new lines and reports a simulator that exited or printed a
// malformed line.
func (fs *fleetSims) err() error {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for _, s := range fs.procs {
		if err := s.read(); err != nil {
			return err
		}
		if s.p.Exited() {
			return fmt.Errorf("%s exited: %w\n%s", s.p.Name, s.p.err, s.p.Tail(20))
		}
	}
	return nil
}

func (fs *fleetSims) ready() bool {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for _, s := range fs.procs {
		if !s.ready {
			return false
		}
	}
	return true
}

// total sums the simulators' latest lines (after reading new ones).
func (fs *fleetSims) total() fleetStats {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	var t fleetStats
	for _, s := range fs.procs {
		_ = s.read()
		l := s.last()
		t.Enrolled += l.Enrolled
		t.Connected += l.Connected
		t.Welcomes += l.Welcomes
		t.Disconnects += l.Disconnects
		t.Commands += l.Commands
		t.Results += l.Results
		t.Failed += l.Failed
	}
	return t
}

// allConnectedSince returns the time of the first stats line after t0 at
// which the simulators' connected hosts added up to n.
func (fs *fleetSims) allConnectedSince(t0 time.Time, n int) (time.Time, bool) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	type ev struct {
		t         time.Time
		sim       int
		connected int64
	}
	var evs []ev
	for j, s := range fs.procs {
		_ = s.read()
		for _, l := range s.lines {
			evs = append(evs, ev{l.T, j, l.Connected})
		}
	}
	slices.SortStableFunc(evs, func(a, b ev) int { return a.t.Compare(b.t) })
	cur := make([]int64, len(fs.procs))
	for _, e := range evs {
		cur[e.sim] = e.connected
		var sum int64
		for _, c := range cur {
			sum += c
		}
		if !e.t.Before(t0) && sum == int64(n) {
			return e.t, true
		}
	}
	return time.Time{}, false
}

// welcomeRate returns the most welcomes in any 1 s window between t0 and
// end, and the welcomes in each second from t0 (at most fleetHistMax).
func (fs *fleetSims) welcomeRate(t0, end time.Time) (peak float64, hist []float64) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	type delta struct {
		t time.Time
		n int64
	}
	var ds []delta
	for _, s := range fs.procs {
		for i := 1; i < len(s.lines); i++ {
			l := s.lines[i]
			if d := l.Welcomes - s.lines[i-1].Welcomes; d > 0 && !l.T.Before(t0) && !l.T.After(end.Add(time.Second)) {
				ds = append(ds, delta{l.T, d})
			}
		}
	}
	slices.SortFunc(ds, func(a, b delta) int { return a.t.Compare(b.t) })
	var win int64
	j := 0
	for _, d := range ds {
		win += d.n
		for d.t.Sub(ds[j].t) >= time.Second {
			win -= ds[j].n
			j++
		}
		peak = max(peak, float64(win))
	}
	secs := min(int(end.Sub(t0)/time.Second)+1, fleetHistMax)
	hist = make([]float64, secs)
	for _, d := range ds {
		if s := int(d.t.Sub(t0) / time.Second); s < secs {
			hist[s] += float64(d.n)
		}
	}
	return peak, hist
}

// rss is the simulators' total RSS.
func (fs *fleetSims) rss() int64 {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	var sum int64
	for _, s := range fs.procs {
		if r, err := RSS(s.p.PID()); err == nil {
			sum += r
		}
	}
	return sum
}

// stop SIGTERMs every simulator and waits for each to exit (it must within
// 15 s, and with status 0). Stopping again does nothing.
func (fs *fleetSims) stop() error {
	fs.mu.Lock()
	procs := fs.procs
	if fs.stopped {
		procs = nil
	}
	fs.stopped = true
	fs.mu.Unlock()
	for _, s := range procs {
		if !s.p.Exited() {
			_ = s.p.Cmd.Process.Signal(syscall.SIGTERM) // one that exited meanwhile is reaped below
		}
	}
	var errs []error
	for _, s := range procs {
		select {
		case <-s.p.Done():
		case <-time.After(15 * time.Second):
			s.p.Kill()
			errs = append(errs, fmt.Errorf("%s did not exit within 15 s of SIGTERM; killed", s.p.Name))
			continue
		}
		if s.p.err != nil && !errors.Is(s.p.err, os.ErrProcessDone) {
			var ee interface{ ExitCode() int }
			if errors.As(s.p.err, &ee) && ee.ExitCode() != 0 {
				errs = append(errs, fmt.Errorf("%s: %w\n%s", s.p.Name, s.p.err, s.p.Tail(10)))
			}
		}
	}
	return errors.Join(errs...)
}

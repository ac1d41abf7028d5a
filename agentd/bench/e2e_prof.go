package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// e2eProf captures CPU profiles of the processes the scenarios started with
// --pprof-addr, when AGENTPLANE_BENCH_PPROF names a directory: each profile
// is written there as <scenario>-<process>.pprof (and .block.pprof,
// .mutex.pprof, empty unless the binary enables those profiles; with
// AGENTPLANE_BENCH_TRACE set also an execution trace, .trace, for go tool
// trace, which slows the traced process). Unset, it does nothing
// (every method is safe on nil).
type e2eProf struct {
	dir   string
	addrs map[string]string // process name → pprof address
	errs  chan error
	n     int
}

func newE2EProf() *e2eProf {
	dir := os.Getenv("AGENTPLANE_BENCH_PPROF")
	if dir == "" {
		return nil
	}
	return &e2eProf{dir: dir, addrs: map[string]string{}, errs: make(chan error, 64)}
}

// args are the flags that make the named process serve pprof.
func (p *e2eProf) args(ctx context.Context, name string) []string {
	if p == nil {
		return nil
	}
	addr, err := freeAddr(ctx)
	if err != nil {
		return nil
	}
	p.addrs[name] = addr
	return []string{"--pprof-addr", addr}
}

// start begins a CPU profile of d (at least 1s) of every process, named
// scenario-process.
func (p *e2eProf) start(ctx context.Context, scenario string, d time.Duration) {
	if p == nil {
		return
	}
	secs := max(1, int((d+time.Second-1)/time.Second))
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		p.errs <- err
		p.n++
		return
	}
	for name, addr := range p.addrs {
		// The CPU profile, and the block and mutex profiles over the same
		// time (empty unless the binary sets their rates).
		kinds := []string{"profile", "block", "mutex"}
		if os.Getenv("AGENTPLANE_BENCH_TRACE") != "" {
			kinds = append(kinds, "trace") // costly: it slows what it traces
		}
		for _, kind := range kinds {
			p.n++
			go func() {
				suffix := ".pprof"
				switch kind {
				case "trace":
					suffix = ".trace"
				case "block", "mutex":
					suffix = "." + kind + ".pprof"
				}
				p.errs <- fetchTo(ctx, fmt.Sprintf("http://%s/debug/pprof/%s?seconds=%d", addr, kind, secs),
					filepath.Join(p.dir, scenario+"-"+name+suffix))
			}()
		}
	}
}

// wait waits for the profiles started so far.
func (p *e2eProf) wait() error {
	if p == nil {
		return nil
	}
	var errs []error
	for ; p.n > 0; p.n-- {
		errs = append(errs, <-p.errs)
	}
	return errors.Join(errs...)
}

// fetchTo GETs url into the file at path.
func fetchTo(ctx context.Context, url, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// fleetProf fetches the server's profiles through --pprof-addr when
// AGENTPLANE_BENCH_PPROF names a directory: <dir>/<name>.pprof. Unset, it
// does nothing (every method is safe on nil).
type fleetProf struct {
	dir  string
	addr string
	wg   sync.WaitGroup
	mu   sync.Mutex
	errs []error
}

func newFleetProf(ctx context.Context) *fleetProf {
	dir := os.Getenv("AGENTPLANE_BENCH_PPROF")
	if dir == "" {
		return nil
	}
	addr, err := freeAddr(ctx)
	if err != nil || os.MkdirAll(dir, 0o755) != nil {
		return nil
	}
	return &fleetProf{dir: dir, addr: addr}
}

// args are the server flags that serve pprof.
func (p *fleetProf) args() []string {
	if p == nil {
		return nil
	}
	return []string{"--pprof-addr", p.addr}
}

// fetch gets /debug/pprof/<what> in the background into <dir>/<name>.pprof.
func (p *fleetProf) fetch(ctx context.Context, name, what string) {
	if p == nil {
		return
	}
	p.wg.Go(func() {
		err := fetchTo(ctx, "http://"+p.addr+"/debug/pprof/"+what, filepath.Join(p.dir, name+".pprof"))
		if err != nil {
			p.mu.Lock()
			p.errs = append(p.errs, fmt.Errorf("%s: %w", name, err))
			p.mu.Unlock()
		}
	})
}

// wait waits for the fetches started so far.
func (p *fleetProf) wait() error {
	if p == nil {
		return nil
	}
	p.wg.Wait()
	return errors.Join(p.errs...)
}

// sleepCtx waits d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

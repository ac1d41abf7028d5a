// Package pprofserver serves net/http/pprof for both daemons (--pprof-addr)
// on a listener and mux of its own, never on an API listener.
//
// Profiles have no authentication and reveal a lot (goroutine stacks, heap
// contents by allocation site, symbol names), so Start refuses any address
// that is not loopback: reach a remote daemon's profiles through an SSH
// tunnel (ssh -L 6060:127.0.0.1:6060 host). /debug/pprof/cmdline is not
// served, since a command line may hold a secret (agentd's --join-token).
package pprofserver

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/rs/zerolog"

	"agentplane/internal/sidehttp"
)

// Server is a running pprof listener.
type Server struct{ *sidehttp.Server }

// Handler is the pprof mux: the index, every named profile under it, CPU
// profile, execution trace and symbol lookup; no cmdline.
func Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index) // and /debug/pprof/{heap,goroutine,allocs,...}
	mux.HandleFunc("/debug/pprof/cmdline", http.NotFound)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// CheckAddr returns an error unless addr is host:port with a loopback host
// (an IP literal such as 127.0.0.1 or ::1, or localhost).
func CheckAddr(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: want host:port: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("%q is not a loopback address: profiles have no authentication, so pprof listens on 127.0.0.1 or ::1 only (use an SSH tunnel to reach it from elsewhere)", addr)
}

// Start listens on addr, which must be loopback (see CheckAddr), and serves
// Handler there until Close; ctx bounds the listen only. It logs the address
// at WARN, as a reminder that profiles are exposed.
func Start(ctx context.Context, addr string, log zerolog.Logger) (*Server, error) {
	if err := CheckAddr(addr); err != nil {
		return nil, err
	}
	// No WriteTimeout: /debug/pprof/profile and /trace write after
	// sampling for ?seconds=N.
	hs := &http.Server{Handler: Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute}
	side, err := sidehttp.Start(ctx, addr, hs, log, "pprof listener failed")
	if err != nil {
		return nil, err
	}
	s := &Server{side}
	log.Warn().Str("pprof_addr", s.Addr()).
		Msg("pprof enabled: CPU, heap and goroutine profiles are served without authentication on this address (loopback only)")
	return s, nil
}

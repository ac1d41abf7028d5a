// Package sidehttp runs the daemons' side HTTP listeners (pprof, metrics):
// each on a listener and mux of its own, never on an API listener, served
// in a goroutine until Close.
package sidehttp

import (
	"context"
	"errors"
	"net"
	"net/http"

	"github.com/rs/zerolog"
)

// Server is a running side listener.
type Server struct {
	hs   *http.Server
	lis  net.Listener
	done chan struct{}
}

// Start listens on addr (port 0 picks one) and serves hs there until
// Close; ctx bounds the listen only. A failure of the listener after the
// start is logged with what (e.g. "metrics listener failed").
func Start(ctx context.Context, addr string, hs *http.Server, log zerolog.Logger, what string) (*Server, error) {
	lis, err := new(net.ListenConfig).Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &Server{hs: hs, lis: lis, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		if err := hs.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error().Err(err).Msg(what)
		}
	}()
	return s, nil
}

// Addr is the address it listens on (with the port chosen for :0).
func (s *Server) Addr() string { return s.lis.Addr().String() }

// Close stops the listener and every connection, requests in progress
// included, and waits until it has stopped serving.
func (s *Server) Close() error {
	err := s.hs.Close()
	<-s.done
	return err
}

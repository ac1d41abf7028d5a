package sidehttp

import (
	"context"
	"io"
	"net/http"
	"testing"

	"github.com/rs/zerolog"
)

func TestStartClose(t *testing.T) {
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })}
	s, err := Start(context.Background(), "127.0.0.1:0", hs, zerolog.Nop(), "test listener failed")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + s.Addr() + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "ok" {
		t.Errorf("served %q, want ok", b)
	}
	if err := s.Close(); err != nil {
		t.Error(err)
	}
	if _, err := http.Get("http://" + s.Addr() + "/"); err == nil {
		t.Error("still served after Close")
	}
	if _, err := Start(context.Background(), "127.0.0.1:99999", &http.Server{}, zerolog.Nop(), "x"); err == nil {
		t.Error("Start on a bad address succeeded")
	}
}

package main

import (
	"crypto/tls"
	"net"
	"net/http"

	"github.com/rs/zerolog"

	"agentplane/server/internal/console"
	"agentplane/server/internal/rest"
)

// httpPlaintextUsage is --http-plaintext's help.
const httpPlaintextUsage = "serve the REST API over plain HTTP on --http-addr, for use behind a TLS-terminating proxy or on loopback " +
	"(OCP's clients speak only http://); the web console is not served there (its sessions need HTTPS), and the gRPC listener " +
	"and the agents stay on TLS/mTLS. --insecure makes everything plaintext"

// plainHTTPHint ends the answer to plain HTTP sent to the HTTPS listener.
const plainHTTPHint = "To serve the REST API over plain HTTP (behind a TLS-terminating proxy, or on loopback), " +
	"start agentplane-server with --http-plaintext."

// restPlaintext reports whether --http-addr serves plain HTTP.
func (c config) restPlaintext() bool { return c.insecure || c.httpPlaintext }

// httpHandler is what --http-addr serves: the console and the REST API;
// with --http-plaintext (and not --insecure) the REST API only, the
// console's paths answered with a 404 that names the flag.
func httpHandler(c config, ui *console.Console, api http.Handler) http.Handler {
	if !c.httpPlaintext || c.insecure {
		return ui.Wrap(api)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if console.Owns(r.URL.Path) {
			http.Error(w, "agentplane: the web console is not served over plain HTTP (--http-plaintext): "+
				"its sessions need HTTPS. Start the server without --http-plaintext to use it.", http.StatusNotFound)
			return
		}
		api.ServeHTTP(w, r)
	})
}

// httpServe returns how hs serves lis: in plaintext (--insecure,
// --http-plaintext), noting how clients spell their x-ocp-* header names
// (rest.RecordHeaderSpellings); else over TLS with tlsConf, answering plain
// HTTP with a REST error that names --http-plaintext.
func httpServe(c config, hs *http.Server, lis net.Listener, tlsConf *tls.Config, log zerolog.Logger) func() error {
	if c.restPlaintext() {
		if !c.insecure {
			log.Warn().Str("http_addr", lis.Addr().String()).Msg("--http-plaintext: the REST API serves PLAINTEXT HTTP on --http-addr: " +
				"passwords, signatures and answers cross that hop in the clear, so keep it on loopback or behind a TLS-terminating proxy; " +
				"the web console is not served there; gRPC and the agents stay on TLS/mTLS")
		}
		hs.ConnContext = rest.ConnContext
		lis = rest.RecordHeaderSpellings(lis)
		return func() error { return hs.Serve(lis) }
	}
	hs.TLSConfig = tlsConf
	lis = rest.AnswerPlainHTTP(lis, plainHTTPHint)
	return func() error { return hs.ServeTLS(lis, "", "") }
}

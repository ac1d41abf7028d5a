// Package api declares, once, what the REST and gRPC adapters call in the
// domain: one small interface per role, each implemented by a domain service
// (named on each interface). The adapters' Config fields take these, and
// server/cmd/agentplane-server wires the services in. Every method checks the
// caller's role itself (auth.Require); the adapters only translate.
//
// Authentication's own interfaces (auth.PasswordChecker,
// auth.SignatureVerifier) live in auth, next to auth.Authenticator, which
// calls them.
package api

// Package integration holds end-to-end tests only: they build the real
// agentplane-server and agentplane-agentd with -race, run them on loopback
// against real fake OCP Agent processes (testdata/fakeocpagent), and drive
// the stop through REST, gRPC and grpcurl. It has no non-test code.
package integration

// Package simplan is the simulated fleet's plan, shared by the simulator
// (agentd's agentplane-sim) and whoever checks its outcome (the integration
// tests, the benchmarks): the hosts' names and which of their stops fail.
// Both are pure functions of their arguments, so every run is the same.
package simplan

import "fmt"

// HostName is the name of host i.
func HostName(prefix string, i int) string { return fmt.Sprintf("%s-%05d", prefix, i) }

// Fails reports whether the n-th stop (from 1) of host fails at the given
// rate: a hash of (host, n) mapped to [0, 1) compared with rate, so the
// same host and stop fail in every run, and about rate of all stops fail.
func Fails(host int, n uint64, rate float64) bool {
	if rate <= 0 {
		return false
	}
	x := Mix(uint64(host)<<24 ^ n)
	return float64(x>>11)/(1<<53) < rate
}

// Mix is splitmix64's finalizer: a well-spread 64-bit hash of x.
func Mix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

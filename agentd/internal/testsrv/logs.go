package testsrv

import (
	"bytes"
	"encoding/json"
	"strings"
	"sync"
)

// Logs is a sink for agentd's JSON logs, safe for concurrent use.
type Logs struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *Logs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns everything written.
func (l *Logs) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Count returns how many lines have message msg and, when server is not
// empty, that server field.
func (l *Logs) Count(msg, server string) int {
	n := 0
	for _, line := range strings.Split(l.String(), "\n") {
		var m struct{ Message, Server string }
		if json.Unmarshal([]byte(line), &m) == nil && m.Message == msg && (server == "" || m.Server == server) {
			n++
		}
	}
	return n
}

// Package servers owns agentd's list of servers (--server a:7070,b:7070):
// parsing and checking it, resolving each entry to its addresses at every
// attempt, the order in which agentd tries them, and the one gRPC
// connection it holds to the server of the current attempt (Pool). The
// stream (agentd/internal/conn), enrollment and certificate renewal
// (agentd/internal/identity) all use it.
package servers

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// Entry is one host:port of a --server list. Host is a DNS name or an IP
// literal (without brackets); a name may resolve to several servers.
type Entry struct {
	Host string
	Port string
}

// String returns host:port, with brackets around an IPv6 literal.
func (e Entry) String() string { return net.JoinHostPort(e.Host, e.Port) }

// Parse parses a --server list: host:port entries separated by commas,
// spaces around an entry ignored. An empty entry, a missing host or port, a
// port that is not a number from 1 to 65535 and an entry listed twice (host
// names compared without case, IP literals by value) are errors.
func Parse(list string) ([]Entry, error) {
	if strings.TrimSpace(list) == "" {
		return nil, errors.New("no server: want host:port, or several separated by commas")
	}
	parts := strings.Split(list, ",")
	entries := make([]Entry, 0, len(parts))
	seen := make(map[string]int, len(parts))
	for i, raw := range parts {
		s := strings.TrimSpace(raw)
		if s == "" {
			return nil, fmt.Errorf("entry %d of %d is empty", i+1, len(parts))
		}
		host, port, err := net.SplitHostPort(s)
		if err != nil || host == "" || port == "" {
			return nil, fmt.Errorf("%q: want host:port", s)
		}
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return nil, fmt.Errorf("%q: port %q is not a number from 1 to 65535", s, port)
		}
		e := Entry{Host: host, Port: port}
		key := strings.ToLower(host)
		if ip := net.ParseIP(host); ip != nil {
			key = ip.String()
		}
		key = net.JoinHostPort(key, port)
		if j, dup := seen[key]; dup {
			return nil, fmt.Errorf("%q is listed twice (entries %d and %d)", s, j+1, i+1)
		}
		seen[key] = i
		entries = append(entries, e)
	}
	return entries, nil
}

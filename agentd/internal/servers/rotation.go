package servers

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// DefaultResolveTimeout bounds the lookup of one entry's addresses.
const DefaultResolveTimeout = 5 * time.Second

// Resolver looks up the addresses of a host name; *net.Resolver satisfies
// it (net.DefaultResolver by default, which reads /etc/hosts and DNS).
type Resolver interface {
	LookupHost(ctx context.Context, host string) ([]string, error)
}

var _ Resolver = (*net.Resolver)(nil)

// Endpoint is one server: an address of an entry. The TLS name checked is
// the entry's host (the name dialled), unless the credentials fix one.
type Endpoint struct {
	Entry Entry
	Addr  string // ip:port dialled
}

// String names the endpoint for the logs: the entry, followed by the address
// when the entry is a name.
func (e Endpoint) String() string {
	if s := e.Entry.String(); s != e.Addr {
		return s + " (" + e.Addr + ")"
	}
	return e.Addr
}

// rotation is the order in which one agentd tries its servers. Every
// endpoint has a rank, a hash of a seed drawn at start and of the endpoint:
// each agentd walks all its endpoints in the cyclic order of their ranks,
// from a random point. The order is its own, so the agents that lose the
// same server move to the others evenly rather than all to the next in the
// list; and it depends only on the endpoints, so a DNS answer that adds or
// drops an address leaves the rest of the order as it was.
type rotation struct {
	entries  []Entry
	resolver Resolver
	timeout  time.Duration
	log      zerolog.Logger
	seed     uint64

	last ranked // the endpoint of the previous attempt
}

// newRotation returns the rotation of cfg, defaults filled in.
func newRotation(cfg Config) *rotation {
	r := &rotation{entries: cfg.Entries, resolver: cfg.Resolver, timeout: cfg.ResolveTimeout, log: cfg.Log,
		seed: cfg.Rand.Uint64()}
	r.last.rank = cfg.Rand.Uint64() // start at a random point of the order
	return r
}

type ranked struct {
	rank uint64
	key  string
	ep   Endpoint
}

func compareRanked(a, b ranked) int {
	return cmp.Or(cmp.Compare(a.rank, b.rank), cmp.Compare(a.key, b.key))
}

// next resolves every entry (each within the timeout, all at once) and
// returns the endpoint after the previous attempt's in the order, and how
// many endpoints there are. Entries that do not resolve are logged and
// left out; when none resolves it returns an error.
func (r *rotation) next(ctx context.Context) (Endpoint, int, error) {
	eps, err := r.resolve(ctx)
	if len(eps) == 0 {
		return Endpoint{}, 0, err
	}
	slices.SortFunc(eps, compareRanked)
	i, _ := slices.BinarySearchFunc(eps, r.last, compareRanked)
	if i < len(eps) && compareRanked(eps[i], r.last) == 0 {
		i++
	}
	r.last = eps[i%len(eps)]
	return r.last.ep, len(eps), nil
}

// resolve returns the endpoints of every entry that resolves, ranked.
func (r *rotation) resolve(ctx context.Context) ([]ranked, error) {
	addrs := make([][]string, len(r.entries))
	errs := make([]error, len(r.entries))
	var wg sync.WaitGroup
	for i, e := range r.entries {
		if net.ParseIP(e.Host) != nil {
			addrs[i] = []string{e.Host}
			continue
		}
		wg.Go(func() {
			lctx, cancel := context.WithTimeout(ctx, r.timeout)
			defer cancel()
			addrs[i], errs[i] = r.resolver.LookupHost(lctx, e.Host)
			if errs[i] == nil && len(addrs[i]) == 0 {
				errs[i] = errors.New("no address")
			}
		})
	}
	wg.Wait()
	var eps []ranked
	for i, e := range r.entries {
		if errs[i] != nil {
			errs[i] = fmt.Errorf("resolving %s: %w", e, errs[i])
			if ctx.Err() == nil {
				r.log.Warn().Err(errs[i]).Str("server", e.String()).Msg("cannot resolve server")
			}
			continue
		}
		for _, a := range addrs[i] {
			ep := Endpoint{Entry: e, Addr: net.JoinHostPort(a, e.Port)}
			key := e.String() + "|" + ep.Addr
			if !slices.ContainsFunc(eps, func(x ranked) bool { return x.key == key }) {
				eps = append(eps, ranked{rank: r.rank(key), key: key, ep: ep})
			}
		}
	}
	return eps, errors.Join(errs...)
}

// rank is the endpoint's place in this agentd's order.
func (r *rotation) rank(key string) uint64 {
	h := fnv.New64a()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], r.seed)
	h.Write(b[:])
	h.Write([]byte(key))
	return h.Sum64()
}

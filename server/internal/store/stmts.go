package store

import (
	"context"
	"database/sql"
	"errors"
	"sync"
	"time"

	"agentplane/server/internal/errs"
)

// Parsing a statement costs SQLite about as much as running it (a fifth of
// the server's CPU when accepting stops at concurrency 64), so the store
// keeps each statement it runs prepared, per connection, by query text.
//
// The writer's one connection is busy inside each transaction, so a write
// statement not prepared yet runs unprepared and is marked wanted; the
// writer prepares the wanted ones between transactions. Reads prepare on
// first use. Queries whose text varies (IN lists, multi-row inserts) are
// kept only while short (maxStmtText), and the cache holds at most maxStmts;
// others run unprepared.
type stmtCache struct {
	mu     sync.Mutex
	stmts  map[string]*sql.Stmt
	wanted map[string]bool
	// seen, when set (by tests, before the store is used), is called with
	// each statement run through the cache.
	seen func(query string)
}

const maxStmts = 256

// maxStmtText leaves long statements unprepared: those are the multi-row
// inserts and IN lists of big batches, whose text varies with their size
// and which would fill the cache with statements run once.
const maxStmtText = 2048

func newStmtCache() *stmtCache {
	return &stmtCache{stmts: map[string]*sql.Stmt{}, wanted: map[string]bool{}}
}

// lookup returns the prepared statement of query, or nil after marking it
// wanted (if there is room).
func (c *stmtCache) lookup(query string) *sql.Stmt {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.seen != nil {
		c.seen(query)
	}
	st := c.stmts[query]
	if st == nil && len(query) <= maxStmtText && len(c.stmts)+len(c.wanted) < maxStmts {
		c.wanted[query] = true
	}
	return st
}

// prepareWanted prepares the wanted statements on db. It stops at the
// first that fails for the store (classify): the rest are wanted again
// when next run.
func (c *stmtCache) prepareWanted(ctx context.Context, db *sql.DB) {
	c.mu.Lock()
	if len(c.wanted) == 0 {
		c.mu.Unlock()
		return
	}
	wanted := c.wanted
	c.wanted = map[string]bool{}
	c.mu.Unlock()
	for q := range wanted {
		st, err := db.PrepareContext(ctx, q) //nolint:sqlclosecheck // cached; closed by stmtCache.close when the store closes
		if err != nil {
			if ctx.Err() != nil || errors.Is(classify(err), errs.ErrStoreUnavailable) {
				return
			}
			continue // it runs unprepared, and says why then
		}
		c.mu.Lock()
		c.stmts[q] = st
		c.mu.Unlock()
	}
}

// prepared returns query's statement on db, preparing it now.
func (c *stmtCache) prepared(ctx context.Context, db *sql.DB, query string) *sql.Stmt {
	if st := c.lookup(query); st != nil {
		return st
	}
	c.prepareWanted(ctx, db)
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stmts[query]
}

func (c *stmtCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for q, st := range c.stmts {
		_ = st.Close()
		delete(c.stmts, q)
	}
}

// prepareTimeout bounds the writer's preparing between two transactions
// (a database that stopped answering would hold every write behind it).
const prepareTimeout = 2 * time.Second

// prepareWanted prepares the writer's wanted statements.
func (s *Store) prepareWanted() {
	ctx, cancel := context.WithTimeout(context.Background(), prepareTimeout)
	defer cancel()
	s.wstmts.prepareWanted(ctx, s.w)
}

// wtx is a write transaction that runs statements prepared by the writer.
type wtx struct {
	*sql.Tx
	c *stmtCache
}

func (t *wtx) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if st := t.c.lookup(query); st != nil {
		return t.Tx.StmtContext(ctx, st).ExecContext(ctx, args...) //nolint:sqlclosecheck // a transaction's statement: closed when it ends
	}
	return t.Tx.ExecContext(ctx, query, args...)
}

func (t *wtx) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if st := t.c.lookup(query); st != nil {
		return t.Tx.StmtContext(ctx, st).QueryContext(ctx, args...) //nolint:sqlclosecheck // a transaction's statement: closed when it ends
	}
	return t.Tx.QueryContext(ctx, query, args...)
}

func (t *wtx) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	if st := t.c.lookup(query); st != nil {
		return t.Tx.StmtContext(ctx, st).QueryRowContext(ctx, args...) //nolint:sqlclosecheck // a transaction's statement: closed when it ends
	}
	return t.Tx.QueryRowContext(ctx, query, args...)
}

// PrepareContext returns the transaction's copy of query's statement.
func (t *wtx) PrepareContext(ctx context.Context, query string) (*sql.Stmt, error) {
	if st := t.c.lookup(query); st != nil {
		return t.Tx.StmtContext(ctx, st), nil
	}
	return t.Tx.PrepareContext(ctx, query)
}

// rdb is the read pool, running prepared statements.
type rdb struct {
	*sql.DB
	c *stmtCache
}

// QueryContext runs a read; an error the store itself causes (its file
// gone or unreadable, the database unreachable) is classified as for
// writes (health.go), the query's and those of its rows alike.
func (d *rdb) QueryContext(ctx context.Context, query string, args ...any) (*rows, error) {
	var rs *sql.Rows
	var err error
	if st := d.c.prepared(ctx, d.DB, query); st != nil { //nolint:sqlclosecheck // cached; closed by stmtCache.close when the store closes
		rs, err = st.QueryContext(ctx, args...) //nolint:rowserrcheck // the caller checks, through rows.Err
	} else {
		rs, err = d.DB.QueryContext(ctx, query, args...) //nolint:rowserrcheck // the caller checks, through rows.Err
	}
	if err != nil {
		return nil, classify(err)
	}
	return &rows{rs}, nil
}

// QueryRowContext runs a one-row read, its errors classified as
// QueryContext's.
func (d *rdb) QueryRowContext(ctx context.Context, query string, args ...any) row {
	if st := d.c.prepared(ctx, d.DB, query); st != nil { //nolint:sqlclosecheck // cached; closed by stmtCache.close when the store closes
		return row{st.QueryRowContext(ctx, args...)}
	}
	return row{d.DB.QueryRowContext(ctx, query, args...)}
}

// rows are a read's rows, their errors classified.
type rows struct{ *sql.Rows }

func (r *rows) Scan(dest ...any) error { return classify(r.Rows.Scan(dest...)) }

func (r *rows) Err() error { return classify(r.Rows.Err()) }

// row is a one-row read, its error classified.
type row struct{ *sql.Row }

func (r row) Scan(dest ...any) error { return classify(r.Row.Scan(dest...)) }

package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"agentplane/server/enroll"
	"agentplane/server/errs"
	"agentplane/server/host"
)

// The store serves the agent identity service.
var _ enroll.Store = (*Store)(nil)

// InsertJoinToken stores a join token by its hash (never the secret) and
// returns its id.
func (s *Store) InsertJoinToken(ctx context.Context, t enroll.JoinToken) (int64, error) {
	if t.TokenHash == "" {
		return 0, fmt.Errorf("join token without a hash: %w", errs.ErrInvalidArgument)
	}
	res, err := s.exec(ctx, `INSERT INTO join_tokens (token_hash, host_name, creator, create_time, expire_time)
		VALUES (?,?,?,?,?)`, t.TokenHash, t.HostName, t.Creator, ms(t.CreateTime), ms(t.ExpireTime))
	if isUniqueViolation(err) {
		return 0, fmt.Errorf("join token exists: %w", errs.ErrConflict)
	}
	if err != nil {
		return 0, fmt.Errorf("inserting a join token: %w", err)
	}
	return res.LastInsertId()
}

// GetJoinToken returns the join token of hash tokenHash (without its
// secret). ErrNotFound when there is none.
func (s *Store) GetJoinToken(ctx context.Context, tokenHash string) (enroll.JoinToken, error) {
	t, err := scanJoinToken(s.r.QueryRowContext(ctx, `SELECT `+joinTokenCols+` FROM join_tokens WHERE token_hash = ?`, tokenHash))
	if errors.Is(err, sql.ErrNoRows) {
		return t, fmt.Errorf("join token: %w", errs.ErrNotFound)
	}
	return t, err
}

const joinTokenCols = `id, token_hash, host_name, creator, create_time, expire_time, used_time, used_host_id`

func scanJoinToken(sc interface{ Scan(...any) error }) (enroll.JoinToken, error) {
	var t enroll.JoinToken
	var created, expires, used int64
	err := sc.Scan(&t.ID, &t.TokenHash, &t.HostName, &t.Creator, &created, &expires, &used, &t.UsedHostID)
	t.CreateTime, t.ExpireTime, t.UsedTime = fromMS(created), fromMS(expires), fromMS(used)
	return t, err
}

// EnrollHost uses a join token and finds or registers its host, in one
// transaction (see enroll.Store): the token's used time is a
// compare-and-swap from 0, so of concurrent calls with one token exactly one
// succeeds. A new host starts NEW (agentd never connected); an existing one
// keeps its record, with the inner IP and machine id updated. Errors:
// enroll.ErrInvalidToken (unknown, expired or used), ErrPermissionDenied
// (bound to another name; the host is revoked). On error nothing is written.
func (s *Store) EnrollHost(ctx context.Context, tokenHash string, r host.Host, at time.Time) (host.Host, error) {
	if r.Name == "" {
		return host.Host{}, fmt.Errorf("enrolling a host with no name: %w", errs.ErrInvalidArgument)
	}
	var h host.Host
	err := s.tx(ctx, func(ctx context.Context, tx *wtx) error {
		res, err := tx.ExecContext(ctx, `UPDATE join_tokens SET used_time = ?
			WHERE token_hash = ? AND used_time = 0 AND expire_time > ? AND (host_name = '' OR host_name = ?)`,
			ms(at), tokenHash, ms(at), r.Name)
		if err != nil {
			return fmt.Errorf("using a join token: %w", err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n != 1 {
			return joinTokenRefusal(ctx, tx, tokenHash, r.Name, at)
		}
		var id, revoked int64
		err = tx.QueryRowContext(ctx, `SELECT id, revoke_time FROM hosts WHERE name = ?`, r.Name).Scan(&id, &revoked)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			res, err := tx.ExecContext(ctx, `INSERT INTO hosts (name, inner_ip, machine_id, status, processes,
				create_time, update_time) VALUES (?,?,?,?,?,?,?)`,
				r.Name, r.InnerIP, r.MachineID, host.StatusNew, "[]", ms(at), ms(at))
			if err != nil {
				return fmt.Errorf("inserting host %q: %w", r.Name, err)
			}
			if id, err = res.LastInsertId(); err != nil {
				return err
			}
		case err != nil:
			return fmt.Errorf("finding host %q: %w", r.Name, err)
		case revoked != 0:
			return fmt.Errorf("host %d (%q) is revoked: %w", id, r.Name, errs.ErrPermissionDenied)
		default:
			_, err := tx.ExecContext(ctx, `UPDATE hosts SET inner_ip = ?, machine_id = ?, update_time = ? WHERE id = ?`,
				r.InnerIP, r.MachineID, ms(at), id)
			if err != nil {
				return fmt.Errorf("updating host %d: %w", id, err)
			}
		}
		if _, err := tx.ExecContext(ctx, `UPDATE join_tokens SET used_host_id = ? WHERE token_hash = ?`, id, tokenHash); err != nil {
			return fmt.Errorf("recording the join token's host: %w", err)
		}
		h, err = scanHost(tx.QueryRowContext(ctx, `SELECT `+hostCols+` FROM hosts WHERE id = ?`, id))
		return err
	})
	if err != nil {
		return host.Host{}, err
	}
	return h, nil
}

// joinTokenRefusal says why a join token could not be used for name: the
// one generic error unless the token is valid but bound to another name.
func joinTokenRefusal(ctx context.Context, tx *wtx, tokenHash, name string, at time.Time) error {
	t, err := scanJoinToken(tx.QueryRowContext(ctx, `SELECT `+joinTokenCols+` FROM join_tokens WHERE token_hash = ?`, tokenHash))
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return enroll.ErrInvalidToken
	case err != nil:
		return fmt.Errorf("reading a join token: %w", err)
	case !t.UsedTime.IsZero() || !t.ExpireTime.After(at):
		return enroll.ErrInvalidToken
	case t.HostName != "" && t.HostName != name:
		return fmt.Errorf("join token %d is bound to another host name than %q: %w", t.ID, name, errs.ErrPermissionDenied)
	}
	return enroll.ErrInvalidToken
}

// RevokeHost sets the host's revoke time to at, unless it is already
// revoked (the first time stays), and returns the host. ErrNotFound when
// there is no such host.
func (s *Store) RevokeHost(ctx context.Context, id int64, at time.Time) (*host.Host, error) {
	_, err := s.exec(ctx, `UPDATE hosts SET revoke_time = ?, update_time = ? WHERE id = ? AND revoke_time = 0`,
		ms(at), ms(at), id)
	if err != nil {
		return nil, fmt.Errorf("revoking host %d: %w", id, err)
	}
	return s.GetHost(ctx, id)
}

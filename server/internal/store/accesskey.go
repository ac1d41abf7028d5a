package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"agentplane/server/internal/auth"
	"agentplane/server/internal/errs"
)

var _ auth.AccessKeyStore = (*Store)(nil)

// CreateAccessKey stores k unless its user already holds max keys
// (ErrFailedPrecondition); the count and the insert are one transaction.
// ErrConflict when the id is taken.
func (s *Store) CreateAccessKey(ctx context.Context, k auth.AccessKey, max int) (auth.AccessKey, error) {
	if k.CreateTime.IsZero() {
		k.CreateTime = time.Now()
	}
	err := s.tx(ctx, func(ctx context.Context, tx *wtx) error {
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM access_keys WHERE username = ?`, k.Username).Scan(&n); err != nil {
			return fmt.Errorf("counting access keys of %q: %w", k.Username, err)
		}
		if n >= max {
			return fmt.Errorf("user %q already has %d access keys, the most allowed; delete one first: %w", k.Username, n, errs.ErrFailedPrecondition)
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO access_keys (access_key_id, username, sealed_secret, create_time, last_used_time) VALUES (?,?,?,?,?)`,
			k.ID, k.Username, k.SealedSecret, ms(k.CreateTime), ms(k.LastUsedTime))
		if isUniqueViolation(err) {
			return fmt.Errorf("access key %q already exists: %w", k.ID, errs.ErrConflict)
		}
		if err != nil {
			return fmt.Errorf("inserting access key: %w", err)
		}
		return nil
	})
	if err != nil {
		return auth.AccessKey{}, err
	}
	return k, nil
}

// AccessKeyByID returns a key with its sealed secret; ErrNotFound when
// there is none.
func (s *Store) AccessKeyByID(ctx context.Context, id string) (auth.AccessKey, error) {
	var k auth.AccessKey
	var created, used int64
	err := s.r.QueryRowContext(ctx, `SELECT access_key_id, username, sealed_secret, create_time, last_used_time FROM access_keys WHERE access_key_id = ?`,
		id).Scan(&k.ID, &k.Username, &k.SealedSecret, &created, &used)
	if errors.Is(err, sql.ErrNoRows) {
		return k, fmt.Errorf("access key %q: %w", id, errs.ErrNotFound)
	}
	if err != nil {
		return k, fmt.Errorf("reading access key %q: %w", id, err)
	}
	k.CreateTime, k.LastUsedTime = fromMS(created), fromMS(used)
	return k, nil
}

// ListAccessKeys returns username's keys, or all when username is "",
// oldest first, without their sealed secrets.
func (s *Store) ListAccessKeys(ctx context.Context, username string) ([]auth.AccessKey, error) {
	q := `SELECT access_key_id, username, create_time, last_used_time FROM access_keys`
	var args []any
	if username != "" {
		q += ` WHERE username = ?`
		args = append(args, username)
	}
	rows, err := s.r.QueryContext(ctx, q+` ORDER BY id`, args...)
	if err != nil {
		return nil, fmt.Errorf("listing access keys: %w", err)
	}
	defer rows.Close()
	keys := []auth.AccessKey{}
	for rows.Next() {
		var k auth.AccessKey
		var created, used int64
		if err := rows.Scan(&k.ID, &k.Username, &created, &used); err != nil {
			return nil, fmt.Errorf("listing access keys: %w", err)
		}
		k.CreateTime, k.LastUsedTime = fromMS(created), fromMS(used)
		keys = append(keys, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing access keys: %w", err)
	}
	return keys, nil
}

// DeleteAccessKey deletes a key; ErrNotFound when there is none.
func (s *Store) DeleteAccessKey(ctx context.Context, id string) error {
	res, err := s.exec(ctx, `DELETE FROM access_keys WHERE access_key_id = ?`, id)
	if err != nil {
		return fmt.Errorf("deleting access key %q: %w", id, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("deleting access key %q: %w", id, err)
	}
	if n == 0 {
		return fmt.Errorf("access key %q: %w", id, errs.ErrNotFound)
	}
	return nil
}

// TouchAccessKey records the key's last accepted use; a deleted key is not
// an error.
func (s *Store) TouchAccessKey(ctx context.Context, id string, at time.Time) error {
	if _, err := s.exec(ctx, `UPDATE access_keys SET last_used_time = ? WHERE access_key_id = ?`, ms(at), id); err != nil {
		return fmt.Errorf("recording use of access key %q: %w", id, err)
	}
	return nil
}

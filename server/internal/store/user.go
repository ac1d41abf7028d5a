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

// CreateUser stores a user; ErrConflict when the name is taken.
func (s *Store) CreateUser(ctx context.Context, u auth.User) (auth.User, error) {
	if u.CreateTime.IsZero() {
		u.CreateTime = time.Now()
	}
	res, err := s.exec(ctx, `INSERT INTO users (username, password_hash, roles, create_time) VALUES (?,?,?,?)`,
		u.Username, u.PasswordHash, toJSON(u.Roles), ms(u.CreateTime))
	if isUniqueViolation(err) {
		return auth.User{}, fmt.Errorf("user %q already exists: %w", u.Username, errs.ErrConflict)
	}
	if err != nil {
		return auth.User{}, fmt.Errorf("inserting user %q: %w", u.Username, err)
	}
	if u.ID, err = res.LastInsertId(); err != nil {
		return auth.User{}, err
	}
	return u, nil
}

// UserByName returns a user; ErrNotFound when there is none.
func (s *Store) UserByName(ctx context.Context, username string) (auth.User, error) {
	var u auth.User
	var roles string
	var created int64
	err := s.r.QueryRowContext(ctx, `SELECT id, username, password_hash, roles, create_time FROM users WHERE username = ?`,
		username).Scan(&u.ID, &u.Username, &u.PasswordHash, &roles, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return u, fmt.Errorf("user %q: %w", username, errs.ErrNotFound)
	}
	if err != nil {
		return u, fmt.Errorf("reading user %q: %w", username, err)
	}
	u.CreateTime = fromMS(created)
	return u, fromJSON(roles, &u.Roles)
}

// CountUsers returns the number of users.
func (s *Store) CountUsers(ctx context.Context) (int64, error) {
	var n int64
	if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*) FROM users`).Scan(&n); err != nil {
		return 0, fmt.Errorf("counting users: %w", err)
	}
	return n, nil
}

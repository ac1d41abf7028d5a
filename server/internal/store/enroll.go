package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"agentplane/server/internal/enroll"
	"agentplane/server/internal/errs"
	"agentplane/server/internal/fleet"
	"agentplane/server/internal/host"
)

// The store serves the agent identity service, and admits the fleet's
// client certificates.
var (
	_ enroll.Store = (*Store)(nil)
	_ fleet.Certs  = (*Store)(nil)
)

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

// EnrollHost uses a join token, finds or registers its host and records
// its new certificate, in one transaction (see enroll.Store): the token's
// used time is a compare-and-swap from 0, so of concurrent calls with one
// token exactly one succeeds. A new host starts NEW (agentd never
// connected); an existing one keeps its record, with the inner IP and
// machine id updated. An existing host that may hold a live certificate
// needs a token bound to its name, and then its earlier certificates are
// revoked. Errors: enroll.ErrInvalidToken (unknown, expired or used),
// ErrPermissionDenied (bound to another name; unbound for an enrolled
// host; the host is revoked), issue's. On error nothing is written.
func (s *Store) EnrollHost(ctx context.Context, tokenHash string, r host.Host, at time.Time, issue func(host.Host) (enroll.Cert, error)) (host.Host, bool, error) {
	if r.Name == "" {
		return host.Host{}, false, fmt.Errorf("enrolling a host with no name: %w", errs.ErrInvalidArgument)
	}
	var h host.Host
	var revoked bool
	err := s.tx(ctx, func(ctx context.Context, tx *wtx) error {
		revoked = false
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
		var id, revokedAt int64
		err = tx.QueryRowContext(ctx, `SELECT id, revoke_time FROM hosts WHERE name = ?`, r.Name).Scan(&id, &revokedAt)
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
		case revokedAt != 0:
			return fmt.Errorf("host %d (%q) is revoked: %w", id, r.Name, errs.ErrPermissionDenied)
		default:
			if revoked, err = reenroll(ctx, tx, tokenHash, id, r.Name, at); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx, `UPDATE hosts SET inner_ip = ?, machine_id = ?, update_time = ? WHERE id = ?`,
				r.InnerIP, r.MachineID, ms(at), id)
			if err != nil {
				return fmt.Errorf("updating host %d: %w", id, err)
			}
		}
		if _, err := tx.ExecContext(ctx, `UPDATE join_tokens SET used_host_id = ? WHERE token_hash = ?`, id, tokenHash); err != nil {
			return fmt.Errorf("recording the join token's host: %w", err)
		}
		if h, err = scanHost(tx.QueryRowContext(ctx, `SELECT `+hostCols+` FROM hosts WHERE id = ?`, id)); err != nil {
			return err
		}
		c, err := issue(h)
		if err != nil {
			return err
		}
		return insertCert(ctx, tx, c)
	})
	if err != nil {
		return host.Host{}, false, err
	}
	return h, revoked, nil
}

// reenroll checks that an existing host may be enrolled again with the
// token being used, and revokes its certificates: a host that may hold a
// live certificate (one tracked, unrevoked and unexpired, or none tracked:
// one issued before tracking, or a host registered without one) needs a
// token bound to its name.
func reenroll(ctx context.Context, tx *wtx, tokenHash string, id int64, name string, at time.Time) (bool, error) {
	var bound string
	if err := tx.QueryRowContext(ctx, `SELECT host_name FROM join_tokens WHERE token_hash = ?`, tokenHash).Scan(&bound); err != nil {
		return false, fmt.Errorf("reading a join token: %w", err)
	}
	var tracked, live int
	err := tx.QueryRowContext(ctx, `SELECT COUNT(*), COALESCE(SUM(CASE WHEN revoke_time = 0 AND not_after > ? THEN 1 ELSE 0 END), 0)
		FROM agent_certs WHERE host_id = ?`, ms(at), id).Scan(&tracked, &live)
	if err != nil {
		return false, fmt.Errorf("reading the certificates of host %d: %w", id, err)
	}
	if bound == "" && (live > 0 || tracked == 0) {
		return false, fmt.Errorf("host %d (%q) is enrolled and may hold a live certificate: enrolling it again needs a join token bound to its name, which revokes the old certificate: %w",
			id, name, errs.ErrPermissionDenied)
	}
	res, err := tx.ExecContext(ctx, `UPDATE agent_certs SET revoke_time = ? WHERE host_id = ? AND revoke_time = 0`, ms(at), id)
	if err != nil {
		return false, fmt.Errorf("revoking the certificates of host %d: %w", id, err)
	}
	n, err := res.RowsAffected()
	return n > 0 || tracked == 0, err
}

func insertCert(ctx context.Context, tx *wtx, c enroll.Cert) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO agent_certs (serial, host_id, not_before, not_after, source, source_addr,
		create_time, first_used_time, revoke_time) VALUES (?,?,?,?,?,?,?,?,0)`,
		c.Serial, c.HostID, ms(c.NotBefore), ms(c.NotAfter), c.Source, c.SourceAddr, ms(c.CreateTime), ms(c.FirstUsedTime))
	if isUniqueViolation(err) {
		return fmt.Errorf("certificate serial %s exists: %w", c.Serial, errs.ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("recording certificate %s of host %d: %w", c.Serial, c.HostID, err)
	}
	return nil
}

// UseCertificate admits the client certificate of serial for host hostID
// (with its validity, from a verified handshake) for an agent stream or a renewal:
// it must be tracked for its host and not revoked. At its first use the
// host's certificates issued before it are revoked (a renewal completed:
// the new one works). A certificate not tracked is accepted only for a
// host with none tracked (issued before tracking), and recorded as
// legacy. enroll.ErrCertRevoked otherwise.
func (s *Store) UseCertificate(ctx context.Context, hostID int64, serial string, notBefore, notAfter, at time.Time) error {
	// The common case, a certificate in use already, is one read: no write
	// per connection when a whole fleet reconnects.
	var owner, used, revoked int64
	err := s.r.QueryRowContext(ctx, `SELECT host_id, first_used_time, revoke_time FROM agent_certs WHERE serial = ?`, serial).
		Scan(&owner, &used, &revoked)
	if err == nil && owner == hostID && used != 0 && revoked == 0 {
		return nil
	}
	c := enroll.Cert{Serial: serial, HostID: hostID, NotBefore: notBefore, NotAfter: notAfter}
	return s.tx(ctx, func(ctx context.Context, tx *wtx) error { return useCert(ctx, tx, c, at) })
}

func useCert(ctx context.Context, tx *wtx, c enroll.Cert, at time.Time) error {
	var hostID, created, used, revoked int64
	err := tx.QueryRowContext(ctx, `SELECT host_id, create_time, first_used_time, revoke_time FROM agent_certs WHERE serial = ?`,
		c.Serial).Scan(&hostID, &created, &used, &revoked)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM agent_certs WHERE host_id = ?`, c.HostID).Scan(&n); err != nil {
			return fmt.Errorf("reading the certificates of host %d: %w", c.HostID, err)
		}
		if n > 0 {
			return fmt.Errorf("client certificate %s of host %d is not one the server issued to it: %w", c.Serial, c.HostID, enroll.ErrCertRevoked)
		}
		c.Source, c.CreateTime, c.FirstUsedTime = enroll.SourceLegacy, at, at
		return insertCert(ctx, tx, c)
	case err != nil:
		return fmt.Errorf("reading certificate %s: %w", c.Serial, err)
	case hostID != c.HostID:
		return fmt.Errorf("client certificate %s names host %d, issued to host %d: %w", c.Serial, c.HostID, hostID, enroll.ErrCertRevoked)
	case revoked != 0:
		return fmt.Errorf("client certificate %s of host %d was revoked at %s: %w", c.Serial, c.HostID,
			fromMS(revoked).UTC().Format(time.RFC3339), enroll.ErrCertRevoked)
	case used != 0:
		return nil
	}
	if _, err := tx.ExecContext(ctx, `UPDATE agent_certs SET first_used_time = ? WHERE serial = ?`, ms(at), c.Serial); err != nil {
		return fmt.Errorf("recording the first use of certificate %s: %w", c.Serial, err)
	}
	_, err = tx.ExecContext(ctx, `UPDATE agent_certs SET revoke_time = ? WHERE host_id = ? AND revoke_time = 0 AND create_time < ?`,
		ms(at), c.HostID, created)
	if err != nil {
		return fmt.Errorf("retiring the certificates of host %d older than %s: %w", c.HostID, c.Serial, err)
	}
	return nil
}

// RenewCert checks the presented certificate as UseCertificate does and
// records c, in one transaction.
func (s *Store) RenewCert(ctx context.Context, presented, c enroll.Cert, at time.Time) error {
	return s.tx(ctx, func(ctx context.Context, tx *wtx) error {
		if err := useCert(ctx, tx, presented, at); err != nil {
			return err
		}
		return insertCert(ctx, tx, c)
	})
}

const certCols = `serial, host_id, not_before, not_after, source, source_addr, create_time, first_used_time, revoke_time`

func scanCert(sc interface{ Scan(...any) error }) (enroll.Cert, error) {
	var c enroll.Cert
	var nb, na, created, used, revoked int64
	err := sc.Scan(&c.Serial, &c.HostID, &nb, &na, &c.Source, &c.SourceAddr, &created, &used, &revoked)
	c.NotBefore, c.NotAfter, c.CreateTime, c.FirstUsedTime, c.RevokeTime = fromMS(nb), fromMS(na), fromMS(created), fromMS(used), fromMS(revoked)
	return c, err
}

// ListCerts returns the certificates tracked for a host, oldest first.
func (s *Store) ListCerts(ctx context.Context, hostID int64) ([]enroll.Cert, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+certCols+` FROM agent_certs WHERE host_id = ? ORDER BY create_time, serial`, hostID)
	if err != nil {
		return nil, fmt.Errorf("listing the certificates of host %d: %w", hostID, err)
	}
	defer rows.Close()
	var out []enroll.Cert
	for rows.Next() {
		c, err := scanCert(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// RevokeCert sets the revoke time of the certificate of serial to at,
// unless it is already revoked (the first time stays), and returns it.
// ErrNotFound when there is none.
func (s *Store) RevokeCert(ctx context.Context, serial string, at time.Time) (enroll.Cert, error) {
	var c enroll.Cert
	err := s.tx(ctx, func(ctx context.Context, tx *wtx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE agent_certs SET revoke_time = ? WHERE serial = ? AND revoke_time = 0`, ms(at), serial); err != nil {
			return fmt.Errorf("revoking certificate %s: %w", serial, err)
		}
		var err error
		c, err = scanCert(tx.QueryRowContext(ctx, `SELECT `+certCols+` FROM agent_certs WHERE serial = ?`, serial))
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("certificate %s: %w", serial, errs.ErrNotFound)
		}
		return err
	})
	return c, err
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

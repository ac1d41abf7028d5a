package fleet

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/time/rate"

	"agentplane/server/internal/auth"
	"agentplane/server/internal/errs"
	"agentplane/server/internal/host"
)

// Connect authenticates and registers an agent, and opens its session. A
// previous session of the same host is closed. The cancels pending for the
// host, then the commands waiting for it, are queued on the new session
// (for a resumed command not sent yet, its query: see query.go). The
// registration raises the host's epoch (see Registry.RegisterHost): the
// session's Epoch, in the Welcome and in all the session sends.
//
// With an Identity (a verified client certificate), the host is the
// certificate's: a Hello naming another host id (when non-zero) or another
// host name is refused with ErrPermissionDenied, as is a certificate of a
// host that is revoked or gone. Without one, the Hello must carry the
// bootstrap token, and the fleet must have one; else ErrUnauthenticated.
// A revoked host is refused with ErrPermissionDenied (ErrRevoked when a
// certificate names it); a Hello without a host name or over the bounds
// on reports (MaxFieldBytes and the like) with ErrInvalidArgument. After
// Close, Connect fails with ErrClosing.
//
// A host holds at most MaxStreamsPerHost sessions between Connect and
// Disconnect, and replaces a live session at most MaxReplacementsPerMin
// times a minute; beyond either, Connect fails with an error wrapping
// ErrTooManyStreams or ErrTooManyReplacements and the host's current
// session stays. A certificate's host is checked before anything is
// written; a bootstrap Hello's once it is registered.
func (f *Fleet) Connect(ctx context.Context, h Hello) (*Session, Welcome, error) {
	began := time.Now()
	if h.Identity == nil {
		if f.cfg.Token == "" {
			return nil, Welcome{}, fmt.Errorf("agent stream without a client certificate: enroll agentd with a join token: %w", errs.ErrUnauthenticated)
		}
		if !auth.CheckAgentToken(f.cfg.Token, h.Token) {
			return nil, Welcome{}, fmt.Errorf("agent bootstrap token: %w", errs.ErrUnauthenticated)
		}
	}
	if h.HostName == "" {
		return nil, Welcome{}, fmt.Errorf("hello without a host name: %w", errs.ErrInvalidArgument)
	}
	if err := checkHello(h); err != nil {
		return nil, Welcome{}, err
	}
	// Held from the identity check to the session's install, and by Revoke:
	// a revocation either comes first and is seen here, or ends the session
	// installed here.
	// A bootstrap Hello's host is known only once registered: it holds
	// every host's lock (--insecure is for labs, not fleets).
	var unlock func()
	if h.Identity != nil {
		unlock = f.online.host(h.Identity.HostID)
	} else {
		unlock = f.online.all()
	}
	defer unlock()
	if h.Identity != nil {
		if err := f.checkIdentity(ctx, h); err != nil {
			f.cfg.Log.Warn().Err(err).Int64("host_id", h.Identity.HostID).Int64("hello_host_id", h.HostID).
				Str("hello_host_name", h.HostName).Msg("agent stream refused")
			return nil, Welcome{}, err
		}
		if f.cfg.Certs != nil {
			id := h.Identity
			if err := f.cfg.Certs.UseCertificate(ctx, id.HostID, id.Serial, id.NotBefore, id.NotAfter, f.cfg.Now()); err != nil {
				f.cfg.Log.Warn().Err(err).Int64("host_id", h.Identity.HostID).Str("serial", h.Identity.Serial).Msg("agent stream refused")
				return nil, Welcome{}, err
			}
		}
		if err := f.admit(h.Identity.HostID); err != nil {
			return nil, Welcome{}, err
		}
	}
	r := host.Host{
		ID: h.HostID, Name: h.HostName, InnerIP: h.InnerIP, MachineID: h.MachineID,
		AgentdVersion: h.AgentdVersion, InstallHome: h.InstallHome, Processes: h.Processes, Replica: f.cfg.ReplicaID,
	}
	if h.InstallHomeMissing {
		r.AgentStatus = host.AgentNotInstalled
	}
	reg, err := f.register(ctx, r)
	if time.Since(began) >= slowConnect {
		f.Busy() // agents queue behind this one for the host locks and the store
	}
	if err != nil {
		return nil, Welcome{}, fmt.Errorf("registering host %q: %w", h.HostName, err)
	}
	if h.Identity != nil && reg.ID != h.Identity.HostID {
		// Names are unique and never change, so this cannot happen; if it
		// did, the stream must not act for another host.
		return nil, Welcome{}, fmt.Errorf("host %q registered as %d, certificate names host %d: %w", h.HostName, reg.ID, h.Identity.HostID, errs.ErrPermissionDenied)
	}
	if h.Identity == nil {
		if err := f.admit(reg.ID); err != nil {
			f.restoreOffline(reg.ID, reg.Epoch)
			return nil, Welcome{}, err
		}
	}
	s := &Session{HostID: reg.ID, Epoch: reg.Epoch, done: make(chan struct{}), reported: h.Processes}
	if h.Identity != nil {
		s.serial = h.Identity.Serial
	}
	f.mu.Lock()
	if f.closing {
		f.mu.Unlock()
		return nil, Welcome{}, ErrClosing
	}
	s.lost = time.AfterFunc(f.cfg.LostAfter, func() { f.watch(s) })
	st := f.state(reg.ID)
	if reg.Epoch != 0 && reg.Epoch <= st.epoch {
		// The registry's count went back (a store restored from a backup?):
		// agentd refuses what this session sends until it passes again.
		f.cfg.Log.Warn().Int64("host_id", reg.ID).Int64("epoch", reg.Epoch).Int64("previous_epoch", st.epoch).
			Msg("agent stream's epoch is not newer than the host's previous one")
	}
	st.epoch = max(st.epoch, reg.Epoch)
	old := st.session
	st.session = s
	st.streams++
	st.heard = time.Now()
	if st.expected {
		st.expected = false
		f.back = st.heard
	}
	if st.joined != nil {
		close(st.joined)
		st.joined = nil
	}
	// Queued under mu, so nothing dispatched meanwhile overtakes them: a
	// pending cancel goes out before any command of the same (subtask,
	// attempt).
	cancels := st.pending
	st.pending = nil
	for _, c := range cancels {
		s.send(Outbound{Cancel: &c})
	}
	resent := 0
	for _, c := range st.calls {
		if !c.canceled {
			f.deliver(s, c)
			resent++
		}
	}
	f.mu.Unlock()
	if old != nil {
		old.close(ErrReplaced)
	}
	f.cfg.Log.Info().Int64("host_id", reg.ID).Str("host_name", reg.Name).Int64("epoch", reg.Epoch).Int("resent", resent).
		Int("cancels", len(cancels)).Msg("agent connected")
	return s, Welcome{HostID: reg.ID, HeartbeatInterval: f.cfg.HeartbeatInterval, Epoch: reg.Epoch}, nil
}

// slowConnect: a Connect whose checks and registration took this long
// found the server busy (see Busy), taking more agents than it can at once.
const slowConnect = 2 * time.Second

// admit checks the host's stream bounds for a new session, taking a
// replacement token when the host has a live session. Callers hold the
// host's online lock, so that nothing connects or disconnects until the
// session is installed.
func (f *Fleet) admit(hostID int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := f.hosts[hostID]
	if st == nil {
		return nil // no stream, no session
	}
	if n := st.streams; n >= f.cfg.MaxStreamsPerHost {
		f.cfg.Log.Warn().Int64("host_id", hostID).Int("streams", n).Msg("agent stream refused: too many streams")
		return fmt.Errorf("host %d holds %d streams, at most %d allowed; retry later: %w", hostID, n, f.cfg.MaxStreamsPerHost, ErrTooManyStreams)
	}
	if st.live() == nil {
		return nil
	}
	l := st.replacements
	if l == nil {
		n := f.cfg.MaxReplacementsPerMin
		l = rate.NewLimiter(rate.Limit(float64(n)/60), n)
		st.replacements = l
	}
	if !l.Allow() {
		f.cfg.Log.Warn().Int64("host_id", hostID).Msg("agent stream refused: replaced too often")
		return fmt.Errorf("host %d: at most %d stream replacements a minute allowed; retry later: %w", hostID, f.cfg.MaxReplacementsPerMin, ErrTooManyReplacements)
	}
	return nil
}

// checkIdentity checks a Hello against its client certificate's host and
// the registry. Callers hold the host's online lock.
func (f *Fleet) checkIdentity(ctx context.Context, h Hello) error {
	id := h.Identity
	if h.HostID != 0 && h.HostID != id.HostID {
		return fmt.Errorf("hello for host %d on a certificate of host %d: %w", h.HostID, id.HostID, errs.ErrPermissionDenied)
	}
	stored, err := f.cfg.Registry.GetHost(ctx, id.HostID)
	if errors.Is(err, errs.ErrNotFound) {
		return fmt.Errorf("certificate of host %d, which does not exist: %w", id.HostID, errs.ErrPermissionDenied)
	}
	if err != nil {
		return fmt.Errorf("reading host %d: %w", id.HostID, err)
	}
	if h.HostName != stored.Name || id.HostName != stored.Name {
		return fmt.Errorf("hello for host name %q on a certificate of host %d (%q): %w", h.HostName, id.HostID, stored.Name, errs.ErrPermissionDenied)
	}
	if !stored.RevokeTime.IsZero() {
		return fmt.Errorf("host %d: %w", id.HostID, ErrRevoked)
	}
	return nil
}

// Revoke ends the host's session, if any, with ErrRevoked. The caller has
// recorded the revocation first (Connect then refuses the host); Revoke
// waits for a Connect in progress, so a session installed before that
// record was read is ended too.
func (f *Fleet) Revoke(hostID int64) {
	if s := f.settled(hostID); s != nil {
		s.close(ErrRevoked)
		f.cfg.Log.Warn().Int64("host_id", hostID).Msg("host revoked; ending its stream")
	}
}

// settled returns the host's session once no Connect of it is in
// progress (it holds the host's lock from its checks to the install), or
// nil.
func (f *Fleet) settled(hostID int64) *Session {
	unlock := f.online.host(hostID)
	defer unlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	if st := f.hosts[hostID]; st != nil {
		return st.session
	}
	return nil
}

// RevokeCertificates ends the host's session, if any, with
// ErrCertRevoked, unless it was opened with the certificate of serial
// keep. The caller has recorded the revocation first; like Revoke, it waits
// for a Connect in progress.
func (f *Fleet) RevokeCertificates(hostID int64, keep string) {
	if s := f.settled(hostID); s != nil && s.serial != keep {
		s.close(ErrCertRevoked)
		f.cfg.Log.Warn().Int64("host_id", hostID).Str("serial", s.serial).Msg("host enrolled again; ending the stream of its revoked certificate")
	}
}

// EndCertificate ends the host's session, if any, with ErrCertRevoked
// when it was opened with the certificate of serial. The caller has
// recorded the revocation first; like Revoke, it waits for a Connect in
// progress.
func (f *Fleet) EndCertificate(hostID int64, serial string) {
	if s := f.settled(hostID); s != nil && s.serial == serial {
		s.close(ErrCertRevoked)
		f.cfg.Log.Warn().Int64("host_id", hostID).Str("serial", serial).Msg("certificate revoked; ending its stream")
	}
}

// Disconnect ends a session. If it is the host's current one, the host goes
// OFFLINE: Disconnect returns once that is written (or failed, and left to
// retry). A write fenced by the stream's epoch (StreamRegistry) is made
// without the host's lock, so the host's next stream registers here
// without waiting for it (the write may wait behind a group of others):
// that registration raises the epoch, and the write leaves its ONLINE.
func (f *Fleet) Disconnect(s *Session) {
	s.close(ErrDisconnected)
	unlock := f.online.host(s.HostID)
	f.mu.Lock()
	closing := f.closing
	st := f.state(s.HostID)
	current := st.session == s
	if current {
		st.session = nil
	}
	if !s.disconnected {
		s.disconnected = true
		if st.streams--; st.streams <= 0 {
			st.streams = 0
			// A full bucket is a new one: forget it, so memory follows the
			// hosts connected, not every host ever seen.
			if l := st.replacements; l != nil && l.Tokens() >= float64(l.Burst()) {
				st.replacements = nil
			}
		}
	}
	f.release(st)
	f.mu.Unlock()
	if !current || closing {
		unlock()
		if current {
			// The server is shutting down: the next one marks every host
			// OFFLINE before any agentd connects (one write, not one per host).
			f.cfg.Log.Debug().Int64("host_id", s.HostID).Msg("agent disconnected at shutdown")
		}
		return
	}
	if f.fenced(s.Epoch) {
		unlock()
	} else {
		defer unlock() // an unfenced write must not overtake the next registration
	}
	// The stream's context is gone; this write must still happen.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	wrote, err := f.setOffline(ctx, s.HostID, s.Epoch)
	if err != nil {
		f.cfg.Log.Error().Err(err).Int64("host_id", s.HostID).Msg("marking host offline failed; retrying")
		f.offlineLater(s.HostID)
	}
	f.cfg.Log.Info().Int64("host_id", s.HostID).Int64("epoch", s.Epoch).AnErr("reason", s.Err()).Bool("moved", err == nil && !wrote).
		Msg("agent disconnected")
}

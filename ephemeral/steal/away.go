package steal

import (
	"fmt"
	"net"
)

// restorer is a redirect that can take new connections again after StopNew
// (netfilter.Owned.Restore).
type restorer interface{ Restore() error }

// setAway says whether the session of a whole-port steal is gone (its tunnel lost, within the
// session's reconnect grace) and nothing can reach the developer's process. A filtered dispatcher's
// registrations are marked away on their own (Registration.Away), its redirect kept for the other
// sessions and the app; a whole-port steal, which has one session, lifts its redirect (StopNew: new connections reach the app
// directly, in the kernel), and the connections it had stolen, whose streams went with the tunnel,
// are reset; what it relays to the app goes on. setAway(false) restores the redirect, once the
// plugin is back and can take connections again. A steal that is ending stays as it is.
func (s *Steal) setAway(away bool) error {
	s.awayMu.Lock()
	defer s.awayMu.Unlock()
	if s.away.Swap(away) == away || s.draining() {
		return nil
	}
	if !s.whole || s.cfg.Tee != nil {
		// The agent routes every request of a filtered steal (and a mirror's redirect steals
		// nothing): the redirect stays, and the routing sees the registration away.
		return nil
	}
	if !away {
		r, ok := s.redirect.(restorer)
		if !ok {
			return nil
		}
		if err := r.Restore(); err != nil {
			return fmt.Errorf("restore the redirect: %w", err)
		}
		return nil
	}
	var err error
	if st, ok := s.redirect.(stopper); ok {
		if err = st.StopNew(); err != nil {
			err = fmt.Errorf("lift the redirect: %w", err)
		}
	}
	s.mu.Lock()
	var stolen []net.Conn
	for c := range s.stolen {
		stolen = append(stolen, c)
	}
	s.mu.Unlock()
	for _, c := range stolen {
		reset(c)
	}
	return err
}

// Away reports whether a whole-port steal's redirect is lifted for its session's absence.
func (s *Steal) Away() bool { return s.away.Load() }

// SetAway marks the session of a steal made by Start away (or back): its registrations are skipped
// by the routing, and a whole-port steal's redirect is lifted (setAway). Steals through a Hub go
// away per session, with Lease.Away.
func (s *Steal) SetAway(away bool) error {
	regs := s.registered()
	if !away {
		err := s.setAway(false)
		for _, r := range regs {
			r.Back()
		}
		return err
	}
	for _, r := range regs {
		r.Away()
	}
	return s.setAway(true)
}

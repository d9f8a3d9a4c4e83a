package steal

import (
	"fmt"
	"net"
)

// restorer is a redirect that can take new connections again after StopNew
// (netfilter.Owned.Restore).
type restorer interface{ Restore() error }

// SetAway says whether the session's plugin is gone (its tunnel lost, within the session's reconnect
// grace) and nothing can reach the developer's process. While it is, a filtered steal sends every
// request to the app; a whole-port steal lifts its redirect (StopNew: new connections reach the app
// directly, in the kernel), and the connections it had stolen, whose streams went with the tunnel,
// are reset; what it relays to the app goes on. SetAway(false) restores the redirect, once the
// plugin is back and can take connections again. A steal that is ending stays as it is.
func (s *Steal) SetAway(away bool) error {
	s.awayMu.Lock()
	defer s.awayMu.Unlock()
	if s.away.Swap(away) == away || s.draining() {
		return nil
	}
	if s.matcher != nil || s.cfg.Tee != nil {
		// The agent routes every request of a filtered steal (and a mirror's redirect steals
		// nothing): the redirect stays, and the routing sees away.
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

// Away reports whether SetAway(true) is in force.
func (s *Steal) Away() bool { return s.away.Load() }

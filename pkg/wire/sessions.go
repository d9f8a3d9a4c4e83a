package wire

import (
	"encoding/json"
	"fmt"
	"regexp"
	"time"
	"unicode"
)

// AgentSessions is an agent's answer to `trafficlab-agent sessions`: its main process and the sessions
// it serves, printed as one JSON object on the exec's stdout for `kubectl trafficlab sessions`.
type AgentSessions struct {
	Version string    `json:"version"`
	Started time.Time `json:"started"`
	// IdleTimeout is how long the agent stays with no session (0: until the pod ends).
	IdleTimeout Duration `json:"idleTimeoutMs"`
	// ExitsAt is when the idle timeout will end the agent; set only while no session is attached.
	ExitsAt  *time.Time    `json:"exitsAt,omitempty"`
	Sessions []SessionInfo `json:"sessions"`
}

// SessionInfo is one live session of an agent, as its main process sees it.
type SessionInfo struct {
	ID string `json:"id"`
	// User and Host are what the session's plugin reported in its Hello (SessionOptions).
	User string `json:"user,omitempty"`
	Host string `json:"host,omitempty"`
	// Verbs are the stream kinds the plugin asked for: KindSteal, KindMirror and KindDump while they
	// run, KindDial once any connection was dialed (port-forward, exec).
	Verbs []string `json:"verbs,omitempty"`
	// Ports and Filters are those of the running steal, mirror or dump.
	Ports   []int     `json:"ports,omitempty"`
	Filters []string  `json:"filters,omitempty"`
	Since   time.Time `json:"since"`
	// Bytes have crossed the session's data connections, both ways; Connections are the connections it
	// carried (dialed, stolen or mirrored; in a filtered steal, those to the developer's process);
	// Requests are the requests (whole-port: connections) it stole or mirrored, one per line its
	// plugin prints.
	Bytes       int64 `json:"bytes"`
	Connections int64 `json:"connections"`
	Requests    int64 `json:"requests"`
}

// maxAgentSessions bounds the answer the plugin reads from one agent.
const maxAgentSessions = 1 << 20

// sessionIDPattern is the form of the ids an agent gives its sessions (twelve hex digits, see
// ephemeral/attach), which `sessions end` accepts and nothing else.
var sessionIDPattern = regexp.MustCompile(`^[0-9a-f]{12}$`)

// ValidSessionID reports whether id has the form of a session id.
func ValidSessionID(id string) bool { return sessionIDPattern.MatchString(id) }

// ParseAgentSessions reads an agent's answer, refusing anything that is not one well-formed object:
// the plugin prints what it holds, so a field a terminal would act on never gets through.
func ParseAgentSessions(b []byte) (AgentSessions, error) {
	var a AgentSessions
	if len(b) > maxAgentSessions {
		return a, fmt.Errorf("agent's sessions answer is %d bytes, more than %d: %w", len(b), maxAgentSessions, ErrMalformed)
	}
	if err := json.Unmarshal(b, &a); err != nil {
		return AgentSessions{}, fmt.Errorf("agent's sessions answer: %w: %w", err, ErrMalformed)
	}
	if a.IdleTimeout < 0 {
		return AgentSessions{}, fmt.Errorf("agent's idle timeout %d ms: %w", a.IdleTimeout, ErrMalformed)
	}
	if err := CheckLabel("agent version", a.Version); err != nil {
		return AgentSessions{}, err
	}
	for _, s := range a.Sessions {
		if !ValidSessionID(s.ID) {
			return AgentSessions{}, fmt.Errorf("session id %q: %w", s.ID, ErrMalformed)
		}
		if s.Bytes < 0 || s.Connections < 0 || s.Requests < 0 {
			return AgentSessions{}, fmt.Errorf("session %s: negative count: %w", s.ID, ErrMalformed)
		}
		for _, p := range s.Ports {
			if p < 1 || p > 65535 {
				return AgentSessions{}, fmt.Errorf("session %s: port %d: %w", s.ID, p, ErrMalformed)
			}
		}
		labels := append([]string{s.User, s.Host}, s.Verbs...)
		for _, l := range append(labels, s.Filters...) {
			if err := CheckLabel("session "+s.ID, l); err != nil {
				return AgentSessions{}, err
			}
		}
	}
	return a, nil
}

// MaxLabel bounds a user, host or filter as a session shows them.
const MaxLabel = 1024

// CheckLabel refuses a user, host or other label that is too long or holds a character that is not
// printable (a terminal control sequence in a user name would act on the terminal of whoever lists the
// sessions).
func CheckLabel(what, s string) error {
	if len(s) > MaxLabel {
		return fmt.Errorf("%s: %d bytes, more than %d: %w", what, len(s), MaxLabel, ErrMalformed)
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("%s %q: a character that is not printable: %w", what, s, ErrMalformed)
		}
	}
	return nil
}

// EndedReason is the reason an agent gives the plugin whose session another user ended with `kubectl
// trafficlab sessions end`, in the Bye it sends before it closes the session.
func EndedReason(user, host string) string {
	if user == "" {
		user = "an unknown user"
	}
	if host == "" {
		host = "an unknown machine"
	}
	return fmt.Sprintf("ended by %s from %s with `kubectl trafficlab sessions end`", user, host)
}

// FilterLabels are an HTTP filter as `kubectl trafficlab sessions` shows it, one label per pattern in
// the flags' own terms.
func (f *HTTPFilter) FilterLabels() []string {
	if f.Empty() {
		return nil
	}
	var out []string
	for _, h := range f.Headers {
		out = append(out, "header="+h)
	}
	for _, p := range f.Paths {
		out = append(out, "path="+p)
	}
	for _, m := range f.Methods {
		out = append(out, "method="+m)
	}
	if f.Match == MatchAny && len(out) > 1 {
		out = append(out, "match=any")
	}
	return out
}

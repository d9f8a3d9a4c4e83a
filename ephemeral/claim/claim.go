// Package claim records which session holds which pod port, where every agent in the pod's network
// namespace can read it, and decides whether a new steal or redirect mirror may share a port with
// the sessions already there (Conflict). A claim is an abstract unix socket whose name carries the
// port and the session, @trafficlab-claim.<port>.<session>; connecting to it returns the claim as
// JSON. Abstract sockets belong to the network namespace, which every container of a pod shares,
// and the kernel releases them the moment their process dies, however it dies: a claim never
// outlives the agent that holds it, and agents of other versions in the same pod see it.
package claim

import (
	"bufio"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// The verbs that claim a port: both redirect the port's connections to an agent.
const (
	VerbSteal  = "steal"
	VerbMirror = "mirror" // a redirect mirror; a sniffing one claims nothing
)

// Claim is one session's hold on one pod port.
type Claim struct {
	// Agent is the agent container's name; Instance tells one agent process from another (the
	// same container name can come back in a later pod), so that an agent knows its own claims.
	Agent    string `json:"agent"`
	Instance string `json:"instance"`
	Session  string `json:"session"`
	User     string `json:"user,omitempty"`
	Host     string `json:"host,omitempty"`
	Verb     string `json:"verb"`
	Port     int    `json:"port"`
	// Filter is the steal's filter (wire.HTTPFilter.Describe); empty for a whole-port steal.
	Filter string    `json:"filter,omitempty"`
	Since  time.Time `json:"since"`
}

// Whole reports a steal of every connection to the port.
func (c Claim) Whole() bool { return c.Verb == VerbSteal && c.Filter == "" }

// Who names the claim's session in one line: id, user and machine when known, filter, since.
func (c Claim) Who() string {
	var b strings.Builder
	b.WriteString("session " + c.Session + " (")
	switch {
	case c.User != "" && c.Host != "":
		b.WriteString(c.User + " on " + c.Host + ", ")
	case c.User != "":
		b.WriteString(c.User + ", ")
	case c.Host != "":
		b.WriteString("on " + c.Host + ", ")
	}
	switch {
	case c.Verb == VerbMirror:
		b.WriteString("redirect mirror, ")
	case c.Filter == "":
		b.WriteString("every connection, ")
	default:
		b.WriteString("filter " + c.Filter + ", ")
	}
	b.WriteString("since " + c.Since.UTC().Format("15:04:05") + " UTC)")
	return b.String()
}

// PortSession is the claim as a steal's EventShared names it.
func (c Claim) PortSession() wire.PortSession {
	return wire.PortSession{ID: c.Session, User: c.User, Host: c.Host, Filter: c.Filter, Since: c.Since}
}

// Error is a refusal: one line naming the session in the way. It is wire.ErrUnsupported to the
// plugin, whose message it is.
type Error struct{ msg string }

func (e *Error) Error() string { return e.msg }
func (e *Error) Unwrap() error { return wire.ErrUnsupported }

func refuse(format string, args ...any) error { return &Error{msg: fmt.Sprintf(format, args...)} }

// Conflict decides whether want may join the port's claims held (every agent's, in any order; want's
// own session's are ignored). Filtered steals and redirect mirrors share a port: the agent's one
// dispatcher of the port copies every connection to each mirror before it routes its requests among
// the steals (steal.Hub). shared are the filtered steals already there, in the order they
// registered, which take a request before want when their filters match it too. A whole-port steal
// shares with nothing, steal or mirror. Claims of another agent process refuse any sharing: only one
// agent's dispatcher can take the port's connections (two NAT redirects of one port: the first
// silently takes every connection).
func Conflict(want Claim, held []Claim) (shared []Claim, err error) {
	held = slices.Clone(held)
	slices.SortStableFunc(held, func(a, b Claim) int { return a.Since.Compare(b.Since) })
	port := want.Port
	for _, h := range held {
		if h.Port != port || (h.Session == want.Session && h.Instance == want.Instance) {
			continue
		}
		switch {
		case h.Instance != want.Instance:
			return nil, refuse("port %d is held by %s in agent container %q, another agent in this pod: sessions of different agents cannot share a port", port, h.Who(), h.Agent)
		case want.Whole() && h.Verb == VerbMirror:
			return nil, refuse("port %d is mirrored with a redirect by %s: a whole-port steal would take its connections from the mirror; steal with a filter (--header-filter, --path-filter, --method) or wait until it ends", port, h.Who())
		case want.Whole():
			return nil, refuse("port %d is already stolen by %s: a whole-port steal would take its requests; steal with a filter (--header-filter, --path-filter, --method) or wait until it ends", port, h.Who())
		case h.Whole() && want.Verb == VerbMirror:
			return nil, refuse("port %d is stolen whole by %s: a redirect mirror cannot share it until that steal ends; use --mode sniff", port, h.Who())
		case h.Whole():
			return nil, refuse("port %d is stolen whole by %s: no other steal can share it until that one ends", port, h.Who())
		}
		if h.Verb == VerbSteal {
			shared = append(shared, h)
		}
	}
	return shared, nil
}

// prefix starts every claim's socket name; Go's leading @ is the abstract namespace's NUL.
const prefix = "@trafficlab-claim."

func address(port int, session string) string {
	return prefix + strconv.Itoa(port) + "." + session
}

// Held is a claim this process holds; Close releases it.
type Held struct {
	ln *net.UnixListener
}

// Hold publishes c in the calling thread's network namespace until Close (or this process's end).
// A claim of the same port and session already held by a live process is an error.
func Hold(c Claim) (*Held, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: address(c.Port, c.Session), Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("claim port %d: %w", c.Port, err)
	}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			_ = conn.SetWriteDeadline(time.Now().Add(readTimeout))
			_, _ = conn.Write(b)
			conn.Close()
		}
	}()
	return &Held{ln: ln}, nil
}

// Close releases the claim.
func (h *Held) Close() error { return h.ln.Close() }

// readTimeout bounds reading one claim; a holder answers at once.
const readTimeout = 2 * time.Second

// maxClaim bounds one claim's JSON.
const maxClaim = 16 << 10

// procNetUnix lists the unix sockets of the calling thread's network namespace (/proc/net is the
// main thread's, which a kernel test's namespace switch does not move).
const procNetUnix = "/proc/thread-self/net/unix"

// List returns the claims on port held in the calling thread's network namespace, by any agent.
// A claim whose holder went away between the listing and the read is skipped; one that answers
// with something else is an error, since it cannot be told apart from a session in the way.
func List(port int) ([]Claim, error) {
	f, err := os.Open(procNetUnix)
	if err != nil {
		return nil, fmt.Errorf("list port claims: %w", err)
	}
	defer f.Close()
	names, err := claimNames(f, port)
	if err != nil {
		return nil, err
	}
	var out []Claim
	var errs []error
	for _, n := range names {
		c, err := read(n)
		switch {
		case errors.Is(err, errGone):
		case err != nil:
			errs = append(errs, err)
		default:
			out = append(out, c)
		}
	}
	slices.SortStableFunc(out, func(a, b Claim) int { return cmp.Or(a.Since.Compare(b.Since), strings.Compare(a.Session, b.Session)) })
	return out, errors.Join(errs...)
}

// claimNames reads /proc/net/unix's listing for the listening sockets named as port's claims. Its
// last column is the path, abstract ones starting with @; listening sockets are state 01
// (SS_UNCONNECTED) with the __SO_ACCEPTCON flag (00010000).
func claimNames(r io.Reader, port int) ([]string, error) {
	want := prefix + strconv.Itoa(port) + "."
	sc := bufio.NewScanner(r)
	var out []string
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 8 {
			continue
		}
		name := fields[len(fields)-1]
		if fields[3] != "00010000" || !strings.HasPrefix(name, want) {
			continue
		}
		if !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("list port claims: %w", err)
	}
	return out, nil
}

var errGone = errors.New("claim holder gone")

func read(name string) (Claim, error) {
	conn, err := net.DialTimeout("unix", name, readTimeout)
	if err != nil {
		return Claim{}, fmt.Errorf("%w: %w", errGone, err)
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(readTimeout))
	b, err := io.ReadAll(io.LimitReader(conn, maxClaim))
	if err != nil {
		return Claim{}, fmt.Errorf("read port claim %s: %w", name, err)
	}
	var c Claim
	if err := json.Unmarshal(b, &c); err != nil {
		return Claim{}, fmt.Errorf("read port claim %s: %w", name, err)
	}
	return c, nil
}

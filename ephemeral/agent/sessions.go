package main

import (
	"bufio"
	"cmp"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"slices"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/attach"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// query is what `trafficlab-agent sessions` asks the main process: the sessions, or with End the end of
// one, on behalf of User on Host (as the asking plugin reported them).
type query struct {
	End  string `json:"end,omitempty"`
	User string `json:"user,omitempty"`
	Host string `json:"host,omitempty"`
}

// queryAnswer is the main process's one line in reply.
type queryAnswer struct {
	Agent *wire.AgentSessions `json:"agent,omitempty"`
	Error string              `json:"error,omitempty"`
}

// register records a handshaken session until the returned function is called.
func (s *server) register(l *attach.Live) (unregister func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sessions[l] = struct{}{}
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.sessions, l)
	}
}

// list is the answer to `trafficlab-agent sessions`, sessions oldest first.
func (s *server) list() wire.AgentSessions {
	s.mu.Lock()
	a := s.about
	lives := make([]*attach.Live, 0, len(s.sessions))
	for l := range s.sessions {
		lives = append(lives, l)
	}
	if s.live == 0 && a.IdleTimeout > 0 {
		at := s.idleSince.Add(a.IdleTimeout.Std())
		a.ExitsAt = &at
	}
	s.mu.Unlock()
	a.Sessions = make([]wire.SessionInfo, 0, len(lives))
	for _, l := range lives {
		a.Sessions = append(a.Sessions, l.Info())
	}
	slices.SortFunc(a.Sessions, func(x, y wire.SessionInfo) int {
		return cmp.Or(x.Since.Compare(y.Since), cmp.Compare(x.ID, y.ID))
	})
	return a
}

// end ends session id on behalf of q's user and host; its plugin is told who did.
func (s *server) end(q query) error {
	s.mu.Lock()
	var found *attach.Live
	for l := range s.sessions {
		if l.ID() == q.End {
			found = l
		}
	}
	s.mu.Unlock()
	if found == nil {
		return fmt.Errorf("no session %q in this agent", q.End)
	}
	s.log.Info("session ended on request", "session", q.End, "by", q.User, "from", q.Host)
	found.End(wire.EndedReason(q.User, q.Host))
	return nil
}

// answer replies to a query on c with one JSON line.
func (s *server) answer(c *net.UnixConn, q query) {
	var a queryAnswer
	switch {
	case q.End == "":
		l := s.list()
		a.Agent = &l
	case !wire.ValidSessionID(q.End):
		a.Error = fmt.Sprintf("%q is not a session id", q.End)
	default:
		if err := errors.Join(wire.CheckLabel("user", q.User), wire.CheckLabel("host", q.Host)); err != nil {
			a.Error = err.Error()
		} else if err := s.end(q); err != nil {
			a.Error = err.Error()
		}
	}
	line, err := json.Marshal(a)
	if err != nil {
		s.log.Error("sessions answer", "err", err)
		return
	}
	_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(append(line, '\n')); err != nil {
		s.log.Warn("sessions answer", "err", err)
	}
}

// sessionsConfig is the command line of `trafficlab-agent sessions`.
type sessionsConfig struct {
	name string
	q    query
}

func sessionsFlags(args []string, stderr io.Writer) (sessionsConfig, error) {
	var cfg sessionsConfig
	fs := flag.NewFlagSet("trafficlab-agent sessions", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.name, "name", defaultName, "the agent container's name, which names the main process's session socket")
	fs.StringVar(&cfg.q.End, "end", "", "end this session instead of listing the sessions")
	fs.StringVar(&cfg.q.User, "by-user", "", "with --end: who ends it, as the plugin knows its user")
	fs.StringVar(&cfg.q.Host, "by-host", "", "with --end: the machine it is ended from")
	if err := parseFlags(fs, args, stderr); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// runSessions is `trafficlab-agent sessions`, exec'd by `kubectl trafficlab sessions`: it asks the main
// process, over the same socket and peer check as an attachment, for its sessions and prints them as
// one JSON object (wire.AgentSessions) on stdout; with --end it ends one and prints nothing.
func runSessions(args []string, stdout, stderr io.Writer) error {
	cfg, err := sessionsFlags(args, stderr)
	if err != nil {
		return err
	}
	a, _, done, err := askMain(cfg.name, header{Query: &cfg.q}, 30*time.Second)
	if err != nil {
		return err
	}
	defer done()
	if cfg.q.End != "" {
		return nil
	}
	if a.Agent == nil {
		return errors.New("the main process answered without its sessions")
	}
	out, err := json.Marshal(a.Agent)
	if err != nil {
		return err
	}
	_, err = stdout.Write(append(out, '\n'))
	return err
}

// maxAnswer bounds the main process's one-line answer.
const maxAnswer = 4 << 20

// askMain sends one request line to the main process of the agent container name and reads its
// one-line answer within wait, for the subcommands that ask it something (sessions, profile). The
// reader holds what follows the answer (a profile's bytes); done closes the connection.
func askMain(name string, h header, wait time.Duration) (queryAnswer, *bufio.Reader, func(), error) {
	var a queryAnswer
	c, err := dialMain(name)
	if err != nil {
		return a, nil, nil, err
	}
	done := func() { _ = c.Close() }
	fail := func(err error) (queryAnswer, *bufio.Reader, func(), error) {
		done()
		return a, nil, nil, err
	}
	line, err := json.Marshal(h)
	if err != nil {
		return fail(err)
	}
	if _, err := c.Write(append(line, '\n')); err != nil {
		return fail(fmt.Errorf("ask the agent's main process: %w", err))
	}
	_ = c.SetReadDeadline(time.Now().Add(wait))
	br := bufio.NewReader(c)
	// The answer line is bounded (4 MiB, thousands of sessions) so that a confused peer cannot make
	// this process buffer without end; what follows it is the caller's to read.
	var reply []byte
	for {
		chunk, err := br.ReadSlice('\n')
		reply = append(reply, chunk...)
		if err == nil {
			break
		}
		if !errors.Is(err, bufio.ErrBufferFull) || len(reply) > maxAnswer {
			return fail(fmt.Errorf("read the main process's answer: %w", err))
		}
	}
	if err := json.Unmarshal(reply, &a); err != nil {
		return fail(fmt.Errorf("the main process's answer: %w", err))
	}
	if a.Error != "" {
		return fail(errors.New(a.Error))
	}
	return a, br, done, nil
}

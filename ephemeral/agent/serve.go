package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/attach"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/budget"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/steal"
	"github.com/trafficlab/kubectl-trafficlab/internal/scmrights"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// socketPrefix starts the abstract unix socket on which an agent's main process serves sessions. Abstract
// sockets live in the network namespace, which every container of the pod shares, so the name carries
// the agent container's name: several agents in one pod never meet.
const socketPrefix = "@trafficlab-agent."

// socketName is the session socket of agent container name ("@" makes Go use the abstract namespace).
func socketName(name string) string { return socketPrefix + name }

// maxHeader bounds the first line an attachment sends; it carries a few flags.
const maxHeader = 4 << 10

// header is the attachment's first line: its own command-line flags, which the main process parses
// with the same flag set (attachFlags), so that `attach --debug` means what it always meant.
type header struct {
	Args []string `json:"args"`
	// Query, when set, makes the connection a question about the sessions (`trafficlab-agent
	// sessions`), not an attachment.
	Query *query `json:"query,omitempty"`
	// Profile, when set, asks for a profile of the main process (`trafficlab-agent profile`).
	Profile *profileQuery `json:"profile,omitempty"`
}

// checkPeer accepts a unix peer only if it is a process of this agent container: its pid is visible in
// our PID namespace (the kernel reports 0 for a process of another PID namespace: the app's
// containers and the host), it runs as our user, and it is in our cgroup. The cgroup matters in a pod
// with shareProcessNamespace, where the app's processes are visible too and may run as the same user;
// exec'd processes join the container's cgroup, and the app cannot move itself into ours.
func checkPeer(cred *unix.Ucred, uid int, cgroupOf func(pid int) (string, error)) error {
	if cred.Pid == 0 {
		return errors.New("peer is outside the agent's PID namespace")
	}
	if int(cred.Uid) != uid {
		return fmt.Errorf("peer pid %d runs as uid %d, not the agent's %d", cred.Pid, cred.Uid, uid)
	}
	theirs, err := cgroupOf(int(cred.Pid))
	if err != nil {
		return fmt.Errorf("peer pid %d: %w", cred.Pid, err)
	}
	ours, err := cgroupOf(0)
	if err != nil {
		return err
	}
	if theirs != ours {
		return fmt.Errorf("peer pid %d is in another container's cgroup", cred.Pid)
	}
	return nil
}

// dialMain connects an exec'd subcommand to the main process of the agent container named name. The
// abstract name is the pod's to take: anything in its network namespace could have bound it first, so
// only a process of this container is answered (a session's secret, a list of sessions, an end).
func dialMain(name string) (*net.UnixConn, error) {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: socketName(name), Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("reach the agent's main process on %q: %w", socketName(name), err)
	}
	cred, err := peerCred(c)
	if err == nil {
		err = checkPeer(cred, os.Geteuid(), procCgroup)
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("socket %q: %w", socketName(name), err)
	}
	return c, nil
}

// procCgroup reads /proc/PID/cgroup (0: this process); it is world-readable, even for a
// non-dumpable process.
func procCgroup(pid int) (string, error) {
	p := "self"
	if pid != 0 {
		p = strconv.Itoa(pid)
	}
	b, err := os.ReadFile("/proc/" + p + "/cgroup")
	if err != nil {
		return "", fmt.Errorf("read its cgroup: %w", err)
	}
	return string(b), nil
}

// peerCred is the credentials the kernel recorded for the peer when it connected.
func peerCred(c *net.UnixConn) (*unix.Ucred, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	if cerr != nil {
		return nil, fmt.Errorf("SO_PEERCRED: %w", cerr)
	}
	return cred, nil
}

// sessionIO is one authenticated attachment as its session sees it.
type sessionIO struct {
	// Args are the relay's own flags.
	Args []string
	// In and Out are the control channel, relayed to the exec stream.
	In  io.Reader
	Out io.Writer
	// Log is the relay's stderr, which the plugin reads.
	Log io.Writer
	// Listening records the session's data port for DataPorts.
	Listening func(port int)
	// DataPorts lists every live session's data port, this one's included once it listens: what a
	// capture or redirect of this session must leave alone.
	DataPorts func() []int
	// WatchDataPorts follows DataPorts as sessions come and go (server.WatchDataPorts).
	WatchDataPorts func(fn func([]int)) (stop func())
	// Budget is the agent's one memory budget, shared by every session.
	Budget *budget.Budget
	// Steals is the agent's one dispatcher per pod port, shared by every session's steals.
	Steals *steal.Hub
	// Register records the session for `trafficlab-agent sessions` (server.register).
	Register func(*attach.Live) (unregister func())
	// Sessions is the main process's one registry of resumable sessions.
	Sessions *attach.Registry
	// Hangup closes the attachment's connection, which ends its relay and the plugin's exec, while
	// the session goes on waiting for a resume.
	Hangup func()
}

// sessionFunc serves one authenticated attachment.
type sessionFunc func(ctx context.Context, a sessionIO) error

// server is the main process's session server: one attach.Run per accepted unix connection. Sessions
// thus run in PID 1 of the agent container, and what they hold in the kernel (owned nftables tables)
// lives as long as this process, not as long as the exec'd relay that the plugin talks to.
type server struct {
	uid      int
	cgroupOf func(pid int) (string, error)
	serve    sessionFunc
	log      *slog.Logger
	// resumable are the resumable sessions of every attachment.
	resumable *attach.Registry

	mu      sync.Mutex
	live    int
	changed chan struct{} // closed and replaced whenever live changes
	// idleSince is when the last session ended (or the server started), for the idle agent's answer.
	idleSince time.Time
	// sessions are the handshaken sessions, for `trafficlab-agent sessions`; about says the rest of
	// that answer (version, start, idle timeout).
	sessions map[*attach.Live]struct{}
	about    wire.AgentSessions
	// ports are the data ports of the live sessions, by attachment.
	ports map[*net.UnixConn]int
	// lingering are the data ports of ended sessions, still left out of captures for portLinger, by
	// how many ended sessions hold each; afterFunc is time.AfterFunc.
	lingering  map[int]int
	portLinger time.Duration
	afterFunc  func(time.Duration, func()) *time.Timer
	// watchers are told the data ports at each change (WatchDataPorts); notify serializes the changes
	// with their notifications, so the last set a watcher is given is the current one.
	notify      sync.Mutex
	watchers    map[int]func([]int)
	nextWatcher int
	wg          sync.WaitGroup
}

func newServer(serve sessionFunc, log *slog.Logger) *server {
	now := time.Now()
	return &server{uid: os.Geteuid(), cgroupOf: procCgroup, serve: serve, log: log, changed: make(chan struct{}),
		idleSince: now, sessions: map[*attach.Live]struct{}{}, resumable: attach.NewRegistry(),
		about: wire.AgentSessions{Version: agentVersion(), Started: now},
		ports: map[*net.UnixConn]int{}, watchers: map[int]func([]int){},
		lingering: map[int]int{}, portLinger: dataPortLinger, afterFunc: time.AfterFunc}
}

// DataPorts are the loopback ports on which the live sessions take their data connections, and for
// dataPortLinger those of ended sessions, in ascending order. They carry every session's tunnels (and
// its secret's proof), so no session may capture or redirect them, whichever session owns them.
func (s *server) DataPorts() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dataPortsLocked()
}

func (s *server) dataPortsLocked() []int {
	ports := make([]int, 0, len(s.ports)+len(s.lingering))
	for _, p := range s.ports {
		ports = append(ports, p)
	}
	for p := range s.lingering {
		ports = append(ports, p)
	}
	slices.Sort(ports)
	return slices.Compact(ports)
}

// WatchDataPorts calls fn with the data ports now and again after every change, until stop. A
// capture that started before a session still leaves that session's port out: the session's Listening
// call, which reaches fn before it returns, comes before its Welcome announces the port. A port whose
// session ended is captured again dataPortLinger later, since the app may then use it.
func (s *server) WatchDataPorts(fn func([]int)) (stop func()) {
	s.notify.Lock()
	defer s.notify.Unlock()
	s.mu.Lock()
	id := s.nextWatcher
	s.nextWatcher++
	s.watchers[id] = fn
	ports := s.dataPortsLocked()
	s.mu.Unlock()
	fn(ports)
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.watchers, id)
	}
}

// changePorts applies change to the data ports and tells the watchers.
func (s *server) changePorts(change func()) {
	s.notify.Lock()
	defer s.notify.Unlock()
	s.mu.Lock()
	change()
	ports := s.dataPortsLocked()
	watchers := slices.Collect(maps.Values(s.watchers))
	s.mu.Unlock()
	for _, fn := range watchers {
		fn(ports)
	}
}

func (s *server) setPort(c *net.UnixConn, port int) {
	s.changePorts(func() { s.ports[c] = port })
}

// dataPortLinger is how long an ended session's data port stays out of captures: its connections'
// last segments (FIN, ACK, a retransmission) may come after the session ended, for as long as Linux
// keeps a closed connection in TIME_WAIT (60 s). After that the app may use the port, and captures
// see it again.
const dataPortLinger = 60 * time.Second

func (s *server) dropPort(c *net.UnixConn) {
	var port int
	s.changePorts(func() {
		p, ok := s.ports[c]
		if !ok {
			return
		}
		port = p
		delete(s.ports, c)
		s.lingering[port]++
	})
	if port == 0 {
		return
	}
	s.afterFunc(s.portLinger, func() {
		s.changePorts(func() {
			if s.lingering[port]--; s.lingering[port] <= 0 {
				delete(s.lingering, port)
			}
		})
	})
}

// Sessions is the number of live, authenticated attachments: connections, which only the kernel
// creates and ends, unlike the process list that the app could fill with look-alikes.
func (s *server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.live
}

func (s *server) adjust(n int) {
	s.mu.Lock()
	s.live += n
	if s.live == 0 {
		s.idleSince = time.Now()
	}
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

func (s *server) state() (int, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.live, s.changed
}

// Serve accepts attachments until ln is closed; Wait then waits for the sessions it started, which end
// with ctx.
func (s *server) Serve(ctx context.Context, ln *net.UnixListener) {
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.log.Error("accept an attachment", "err", err)
			}
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(ctx, c)
		}()
	}
}

// Wait waits for every session Serve started, for at most limit.
func (s *server) Wait(limit time.Duration) bool {
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-time.After(limit):
		return false
	}
}

func (s *server) handle(ctx context.Context, c *net.UnixConn) {
	defer c.Close()
	cred, err := peerCred(c)
	if err == nil {
		err = checkPeer(cred, s.uid, s.cgroupOf)
	}
	if err != nil {
		s.log.Warn("attachment refused", "err", err)
		return
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	h, rest, logFile, err := readHeader(c)
	_ = c.SetReadDeadline(time.Time{})
	if err != nil {
		s.log.Warn("attachment refused", "pid", cred.Pid, "err", err)
		return
	}
	if h.Query != nil {
		closeFile(logFile)
		s.answer(c, *h.Query)
		return
	}
	if h.Profile != nil {
		closeFile(logFile)
		s.profile(ctx, c, *h.Profile)
		return
	}
	logw := io.Discard
	if logFile != nil {
		defer logFile.Close()
		logw = logFile
	}
	s.adjust(1)
	defer s.adjust(-1)
	defer s.dropPort(c)
	s.log.Info("session attached", "pid", cred.Pid)
	err = s.serve(ctx, sessionIO{
		Args:           h.Args,
		In:             io.MultiReader(bytes.NewReader(rest), c),
		Out:            c,
		Log:            logw,
		Listening:      func(port int) { s.setPort(c, port) },
		DataPorts:      s.DataPorts,
		WatchDataPorts: s.WatchDataPorts,
		Register:       s.register,
		Sessions:       s.resumable,
		Hangup:         func() { c.Close() },
	})
	s.log.Info("session detached", "pid", cred.Pid, "err", err)
	if err != nil {
		// The relay's stderr reaches the plugin, which shows the agent's last words with its error.
		fmt.Fprintf(logw, "trafficlab-agent: %v\n", err)
	}
}

// readHeader reads the attachment's first line and the stderr it passed along with it (SCM_RIGHTS), so
// that the session's log reaches the plugin as the exec'd process's stderr did when it ran the session
// itself. rest is what followed the line in the same read: the start of the control stream.
func readHeader(c *net.UnixConn) (h header, rest []byte, log *os.File, err error) {
	buf := make([]byte, maxHeader)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n := 0
	for {
		// Go's ReadMsgUnix asks for MSG_CMSG_CLOEXEC, so a received descriptor never leaks into a child.
		m, oobn, _, _, err := c.ReadMsgUnix(buf[n:], oob)
		if oobn > 0 && log == nil {
			// A malformed control message leaves the session without the relay's stderr.
			log, _ = scmrights.First(oob[:oobn], "attachment stderr")
		}
		n += m
		if i := bytes.IndexByte(buf[:n], '\n'); i >= 0 {
			if err := json.Unmarshal(buf[:i], &h); err != nil {
				closeFile(log)
				return h, nil, nil, fmt.Errorf("attachment header: %w", err)
			}
			return h, append([]byte(nil), buf[i+1:n]...), log, nil
		}
		if err != nil || n == len(buf) {
			closeFile(log)
			if err == nil {
				err = fmt.Errorf("longer than %d bytes", maxHeader)
			}
			return h, nil, nil, fmt.Errorf("attachment header: %w", err)
		}
	}
}

func closeFile(f *os.File) {
	if f != nil {
		f.Close()
	}
}

// timerFunc arms a timer; the main process uses time.NewTimer, tests a timer they fire themselves.
type timerFunc func(d time.Duration) (c <-chan time.Time, stop func() bool)

func realTimer(d time.Duration) (<-chan time.Time, func() bool) {
	t := time.NewTimer(d)
	return t.C, t.Stop
}

// waitIdle returns when no session has been attached for timeout (never with 0), or when ctx ends,
// and says why. The idle clock runs only while no session is live, and starts over at every change.
func (s *server) waitIdle(ctx context.Context, timeout time.Duration, newTimer timerFunc) string {
	for {
		live, changed := s.state()
		if live > 0 || timeout == 0 {
			select {
			case <-ctx.Done():
				return context.Cause(ctx).Error()
			case <-changed:
				continue
			}
		}
		fire, stop := newTimer(timeout)
		select {
		case <-ctx.Done():
			stop()
			return context.Cause(ctx).Error()
		case <-changed:
			stop()
		case <-fire:
			// A session that attached as the timer fired keeps the agent.
			if s.Sessions() == 0 {
				return "idle timeout"
			}
		}
	}
}

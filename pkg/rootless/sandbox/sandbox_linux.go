package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Sandbox is one command in its own namespaces. New sets the namespaces up, Start runs the command,
// Wait waits for it, and Close tears everything down.
type Sandbox struct {
	cmd  *exec.Cmd
	conn *net.UnixConn
	tun  *os.File
	name string

	mu       sync.Mutex
	nextID   uint64
	pending  map[uint64]chan reply // nil once the helper is gone
	exitCode int
	exited   bool

	helperDone chan struct{}
	waitErr    error
	readerDone chan struct{}
	closeOnce  sync.Once
}

type reply struct {
	m   message
	f   *os.File
	err error
}

// constError lets errors be constants.
type constError string

func (e constError) Error() string { return string(e) }

// errHelperGone answers requests once the helper has exited (the command ended, or Close).
const errHelperGone = constError("sandbox: the helper has exited")

// New creates the namespaces for cfg.Command and its TUN device, but does not start the command, so
// that the caller can start the stack on TUN() and listeners (ListenLoopback) first. ctx bounds the
// setup only; the sandbox lasts until Close.
func New(ctx context.Context, cfg Config) (*Sandbox, error) {
	if len(cfg.Command) == 0 {
		return nil, errors.New("sandbox: no command")
	}
	if err := Check(); err != nil {
		return nil, err
	}
	env := cfg.Env
	if env == nil {
		env = os.Environ()
	}
	path, err := lookPath(cfg.Command[0], env)
	if err != nil {
		return nil, err
	}

	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("sandbox: socket pair: %w", err)
	}
	conn, err := fileConn(pair[0])
	if err != nil {
		unix.Close(pair[1])
		return nil, err
	}
	child := os.NewFile(uintptr(pair[1]), "sandbox-socket")
	cfgR, cfgW, err := os.Pipe()
	if err != nil {
		conn.Close()
		child.Close()
		return nil, fmt.Errorf("sandbox: pipe: %w", err)
	}
	uid, gid := os.Geteuid(), os.Getegid()
	cmd := &exec.Cmd{
		// /proc/self/exe, not os.Executable(): it is this very binary even if the file was replaced
		// or deleted since.
		Path:       "/proc/self/exe",
		Args:       []string{os.Args[0], helperArg},
		Stdin:      cfg.Stdin,
		Stdout:     cfg.Stdout,
		Stderr:     cfg.Stderr,
		ExtraFiles: []*os.File{child, cfgR}, // helperSocketFD, helperConfigFD
		// A background process the command left behind may hold its output open; Wait should not
		// wait for it.
		WaitDelay: 2 * time.Second,
		SysProcAttr: &syscall.SysProcAttr{
			Cloneflags:                 syscall.CLONE_NEWUSER | syscall.CLONE_NEWNET | syscall.CLONE_NEWNS,
			UidMappings:                []syscall.SysProcIDMap{{ContainerID: uid, HostID: uid, Size: 1}},
			GidMappings:                []syscall.SysProcIDMap{{ContainerID: gid, HostID: gid, Size: 1}},
			GidMappingsEnableSetgroups: false,
			AmbientCaps:                []uintptr{unix.CAP_NET_ADMIN, unix.CAP_SYS_ADMIN},
		},
	}
	err = cmd.Start()
	child.Close()
	cfgR.Close()
	if err != nil {
		conn.Close()
		cfgW.Close()
		return nil, userNSError(err)
	}
	s := &Sandbox{
		cmd:        cmd,
		conn:       conn,
		name:       cfg.Command[0],
		pending:    map[uint64]chan reply{},
		helperDone: make(chan struct{}),
		readerDone: make(chan struct{}),
	}
	go func() {
		s.waitErr = cmd.Wait()
		close(s.helperDone)
	}()

	hc := helperConfig{Path: path, Args: cfg.Command, Env: env, Dir: cfg.Dir, ResolvConf: cfg.ResolvConf}
	// A config larger than the pipe's buffer waits for the helper, which reads it first thing.
	err = json.NewEncoder(cfgW).Encode(hc)
	cfgW.Close()
	if err != nil {
		close(s.readerDone)
		s.Close()
		return nil, fmt.Errorf("sandbox: send configuration: %w", err)
	}

	first := make(chan reply, 1)
	go func() {
		m, f, err := recv(conn)
		first <- reply{m: m, f: f, err: err}
	}()
	var r reply
	select {
	case r = <-first:
	case <-ctx.Done():
		// Nothing runs in the namespace yet: no need to let the helper finish.
		_ = cmd.Process.Kill()
		close(s.readerDone)
		s.Close()
		if r := <-first; r.f != nil {
			r.f.Close()
		}
		return nil, ctx.Err()
	}
	if err := s.setupResult(r); err != nil {
		close(s.readerDone)
		s.Close()
		return nil, err
	}
	s.tun = r.f
	go s.read()
	return s, nil
}

func (s *Sandbox) setupResult(r reply) error {
	switch {
	case r.err != nil:
		<-s.helperDone
		return fmt.Errorf("sandbox: the helper ended during setup: %w", s.waitErr)
	case r.m.Op == opError:
		if r.f != nil {
			r.f.Close()
		}
		return setupFailure(r.m)
	case r.m.Op != opReady || r.f == nil:
		if r.f != nil {
			r.f.Close()
		}
		return fmt.Errorf("sandbox: unexpected %q from the helper", r.m.Op)
	}
	return nil
}

// read dispatches the helper's messages until it is gone.
func (s *Sandbox) read() {
	defer close(s.readerDone)
	for {
		m, f, err := recv(s.conn)
		if err != nil {
			s.mu.Lock()
			for _, ch := range s.pending {
				ch <- reply{err: errHelperGone}
			}
			s.pending = nil
			s.mu.Unlock()
			return
		}
		s.mu.Lock()
		switch m.Op {
		case opResult:
			if ch, ok := s.pending[m.ID]; ok {
				delete(s.pending, m.ID)
				ch <- reply{m: m, f: f}
				f = nil
			}
		case opExit:
			s.exitCode, s.exited = m.Code, true
		}
		s.mu.Unlock()
		if f != nil {
			// An answer nobody waits for any more.
			f.Close()
		}
	}
}

func (s *Sandbox) request(ctx context.Context, m message) (message, *os.File, error) {
	ch := make(chan reply, 1)
	s.mu.Lock()
	if s.pending == nil {
		s.mu.Unlock()
		return message{}, nil, errHelperGone
	}
	s.nextID++
	m.ID = s.nextID
	s.pending[m.ID] = ch
	s.mu.Unlock()
	forget := func() {
		s.mu.Lock()
		delete(s.pending, m.ID)
		s.mu.Unlock()
	}
	if err := send(s.conn, m, nil); err != nil {
		forget()
		return message{}, nil, errHelperGone
	}
	select {
	case r := <-ch:
		return r.m, r.f, r.err
	case <-ctx.Done():
		forget()
		return message{}, nil, ctx.Err()
	}
}

// TUN is the TUN device's descriptor (IFF_TUN|IFF_NO_PI, MTU bytes), for netstack.New. The sandbox
// owns it: Close closes it.
func (s *Sandbox) TUN() *os.File { return s.tun }

// Start runs the command. Until then nothing is sent into the TUN device.
func (s *Sandbox) Start() error {
	m, f, err := s.request(context.Background(), message{Op: opStart})
	if f != nil {
		f.Close()
	}
	if err != nil {
		return err
	}
	if m.Err != "" {
		return fmt.Errorf("start %q in the sandbox: %s", s.name, m.Err)
	}
	return nil
}

// Wait waits for the command and returns its exit code, 128+N if signal N killed it.
func (s *Sandbox) Wait() (int, error) {
	<-s.helperDone
	<-s.readerDone
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.exited {
		return s.exitCode, nil
	}
	return -1, fmt.Errorf("sandbox: the helper ended before %q did: %w", s.name, s.waitErr)
}

// Signal sends sig to the command. A terminal's SIGINT reaches the command without it: the command
// is in the terminal's foreground process group, as the plugin is.
func (s *Sandbox) Signal(sig os.Signal) error {
	ss, ok := sig.(syscall.Signal)
	if !ok {
		return fmt.Errorf("sandbox: signal %v is not a syscall.Signal", sig)
	}
	if err := send(s.conn, message{Op: opSignal, Signal: int(ss)}, nil); err != nil {
		return errHelperGone
	}
	return nil
}

// DialLoopback connects to the command's port on the namespace's loopback (127.0.0.1 for "tcp" and
// "tcp4", ::1 for "tcp6"), where the command listens for connections the plugin delivers.
func (s *Sandbox) DialLoopback(ctx context.Context, network string, port int) (net.Conn, error) {
	f, err := s.loopback(ctx, opDial, network, port)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return net.FileConn(f)
}

// ListenLoopback listens on the namespace's loopback port, so that the command reaches whatever
// the caller serves on the listener as localhost:port (the host's own loopback services, say).
// Call it before Start to have the port ready when the command starts. The listener is the caller's
// to close; an open one keeps the namespace alive.
func (s *Sandbox) ListenLoopback(ctx context.Context, network string, port int) (net.Listener, error) {
	f, err := s.loopback(ctx, opListen, network, port)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return net.FileListener(f)
}

func (s *Sandbox) loopback(ctx context.Context, op, network string, port int) (*os.File, error) {
	_, addr, err := loopback(network, port)
	if err != nil {
		return nil, err
	}
	verb := "dial"
	if op == opListen {
		verb = "listen"
	}
	m, f, err := s.request(ctx, message{Op: op, Network: network, Port: port})
	if err != nil {
		return nil, err
	}
	if m.Err != "" || f == nil {
		if f != nil {
			f.Close()
		}
		cause := errors.New(m.Err)
		if m.Errno != 0 {
			cause = syscall.Errno(m.Errno)
		}
		return nil, fmt.Errorf("%s %s %s in the sandbox: %w", verb, network, addr, cause)
	}
	return f, nil
}

// Close ends the command (SIGKILL, if it still runs) and the namespaces with it, and closes the TUN
// descriptor. Wait then reports the command's end. Listeners and connections from ListenLoopback and
// DialLoopback stay the caller's.
func (s *Sandbox) Close() error {
	s.closeOnce.Do(func() {
		// The end of the plugin's sending side tells the helper to kill the command and exit; the
		// receiving side stays open for the command's exit code.
		_ = s.conn.CloseWrite()
		select {
		case <-s.helperDone:
		case <-time.After(5 * time.Second):
			_ = s.cmd.Process.Kill()
			<-s.helperDone
		}
		<-s.readerDone
		s.conn.Close()
		if s.tun != nil {
			s.tun.Close()
		}
	})
	return nil
}

// lookPath finds the command as the helper's exec would, in PATH of the command's environment.
func lookPath(file string, env []string) (string, error) {
	if strings.Contains(file, "/") {
		return file, nil
	}
	path := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		if p, err := exec.LookPath(filepath.Join(dir, file)); err == nil {
			return p, nil
		}
	}
	return "", &exec.Error{Name: file, Err: exec.ErrNotFound}
}

// Check tells whether this machine and user can run the sandbox, without starting anything: user
// namespaces allowed, /dev/net/tun there and openable. AppArmor's restriction on unprivileged user
// namespaces shows only when the helper runs, so New reports it.
func Check() error {
	return check(sysctl, os.Geteuid(), tunPath)
}

func check(sysctl func(string) (string, bool), euid int, tun string) error {
	if euid != 0 {
		if v, ok := sysctl("kernel/unprivileged_userns_clone"); ok && v == "0" {
			return &UnavailableError{Reason: "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone=0) and the sandbox needs one: " +
				`enable them with "sudo sysctl -w kernel.unprivileged_userns_clone=1", or use --proxy`}
		}
	}
	if v, ok := sysctl("user/max_user_namespaces"); ok && v == "0" {
		return &UnavailableError{Reason: "user namespaces are disabled (user.max_user_namespaces=0) and the sandbox needs one: " +
			`enable them with "sudo sysctl -w user.max_user_namespaces=10000", or use --proxy`}
	}
	fd, err := unix.Open(tun, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		var se *setupError
		if errors.As(tunOpenError(err), &se) {
			return tunUnavailable(se.reason, tun, err)
		}
		return fmt.Errorf("open %s: %w", tun, err)
	}
	unix.Close(fd)
	return nil
}

func sysctl(name string) (string, bool) {
	b, err := os.ReadFile(filepath.Join("/proc/sys", name))
	if err != nil {
		return "", false
	}
	return strings.TrimSpace(string(b)), true
}

func tunUnavailable(reason, tun string, err error) error {
	if reason == reasonTUNMissing {
		return &UnavailableError{Reason: fmt.Sprintf("%s is missing (%v) and the sandbox needs a TUN device: "+
			`load the driver with "sudo modprobe tun", or use --proxy`, tun, errnoOf(err))}
	}
	owner := ""
	var st unix.Stat_t
	if unix.Stat(tun, &st) == nil {
		name := strconv.Itoa(int(st.Uid))
		if u, err := user.LookupId(name); err == nil {
			name = u.Username
		}
		owner = fmt.Sprintf(" (mode %04o, owner %s)", st.Mode&0o7777, name)
	}
	return &UnavailableError{Reason: fmt.Sprintf("cannot open %s%s and the sandbox needs a TUN device: "+
		`allow it with "sudo chmod 0666 %s" (the default on most distributions), or use --proxy`, tun, owner, tun)}
}

func errnoOf(err error) error {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return err
}

// setupFailure turns the helper's setup error into the user's advice where there is one.
func setupFailure(m message) error {
	switch m.Reason {
	case reasonTUNMissing, reasonTUNDenied:
		return tunUnavailable(m.Reason, tunPath, errors.New(m.Err))
	case reasonNoCaps:
		if v, ok := sysctl("kernel/apparmor_restrict_unprivileged_userns"); ok && v == "1" {
			return &UnavailableError{Reason: fmt.Sprintf("AppArmor denies the sandbox's user namespace its capabilities (%s; "+
				"kernel.apparmor_restrict_unprivileged_userns=1): allow the plugin with an AppArmor profile that has \"userns,\", or use --proxy", m.Err)}
		}
		return &UnavailableError{Reason: fmt.Sprintf("the sandbox's user namespace was denied its capabilities (%s), "+
			"likely by a security module: use --proxy", m.Err)}
	}
	return fmt.Errorf("sandbox setup: %s", m.Err)
}

// userNSError explains a failure to start the helper in new namespaces.
func userNSError(err error) error {
	for _, errno := range []syscall.Errno{unix.EPERM, unix.EACCES, unix.ENOSPC, unix.EINVAL, unix.EUSERS} {
		if errors.Is(err, errno) {
			hint := ""
			if v, ok := sysctl("kernel/apparmor_restrict_unprivileged_userns"); ok && v == "1" {
				hint = ", kernel.apparmor_restrict_unprivileged_userns=1"
			}
			return &UnavailableError{Reason: fmt.Sprintf("cannot create an unprivileged user namespace (%v%s) and the sandbox needs one: "+
				"check user.max_user_namespaces and your security modules, or use --proxy", errno, hint)}
		}
	}
	return fmt.Errorf("sandbox: start helper: %w", err)
}

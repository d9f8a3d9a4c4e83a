package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// RunHelper is the helper's whole life: set up the namespace it was started in, hand the TUN
// descriptor to the plugin, run the command, and return the command's exit code (128+N when a
// signal N killed it, as shells report it). It writes nothing to stdout or stderr, which belong to
// the command; its errors go to the plugin.
func RunHelper() int {
	conn, err := fileConn(helperSocketFD)
	if err != nil {
		return 125
	}
	defer conn.Close()
	h := &helper{conn: conn}
	if err := h.setup(); err != nil {
		m := message{Op: opError, Err: err.Error()}
		var se *setupError
		if errors.As(err, &se) {
			m.Reason = se.reason
		}
		_ = send(conn, m, nil)
		return 125
	}
	return h.serve()
}

type helper struct {
	conn *net.UnixConn
	cfg  helperConfig

	// sendMu keeps each reply whole: handlers answer from their own goroutines.
	sendMu sync.Mutex

	mu  sync.Mutex
	cmd *exec.Cmd // set once the command runs
}

// setupError carries a reason the plugin turns into advice.
type setupError struct {
	reason string
	err    error
}

func (e *setupError) Error() string { return e.err.Error() }
func (e *setupError) Unwrap() error { return e.err }

func (h *helper) setup() error {
	cf := os.NewFile(helperConfigFD, "sandbox-config")
	err := json.NewDecoder(cf).Decode(&h.cfg)
	cf.Close()
	if err != nil {
		return fmt.Errorf("read configuration: %w", err)
	}
	tun, err := setupNetwork()
	if err != nil {
		return err
	}
	defer tun.Close()
	if h.cfg.ResolvConf != nil {
		if err := setupResolver(h.cfg.ResolvConf); err != nil {
			return err
		}
	}
	// The plugin holds the only descriptor from here on: the device, and the namespace with it, go
	// away when it closes it.
	return send(h.conn, message{Op: opReady}, tun)
}

func (h *helper) reply(m message, f *os.File) {
	h.sendMu.Lock()
	defer h.sendMu.Unlock()
	_ = send(h.conn, m, f)
}

// serve answers the plugin until the command exits or the plugin goes away.
func (h *helper) serve() int {
	exited := make(chan int, 1)
	gone := make(chan struct{})
	h.forwardSignals()
	go func() {
		defer close(gone)
		for {
			m, f, err := recv(h.conn)
			if f != nil {
				f.Close()
			}
			if err != nil {
				return
			}
			switch m.Op {
			case opStart:
				// The answer goes out before the exit code can: a quick command may end at once.
				res, done := h.start(m)
				h.reply(res, nil)
				if done != nil {
					go func() { exited <- <-done }()
				}
			case opDial, opListen:
				go h.loopback(m)
			case opSignal:
				h.signal(syscall.Signal(m.Signal))
			}
		}
	}()
	select {
	case code := <-exited:
		h.reply(message{Op: opExit, Code: code}, nil)
		return code
	case <-gone:
		// The plugin closed the sandbox (or died): the command's network is gone with it.
		h.mu.Lock()
		running := h.cmd != nil
		h.mu.Unlock()
		if !running {
			return 0
		}
		h.signal(syscall.SIGKILL)
		select {
		case code := <-exited:
			h.reply(message{Op: opExit, Code: code}, nil)
			return code
		case <-time.After(5 * time.Second):
			return 137
		}
	}
}

// start runs the command on a thread of its own: the capabilities must be dropped on the thread that
// forks (they are per thread), and the command's parent-death signal fires when the forking thread
// ends, so that thread stays until the command exits and then goes away with its changed state.
func (h *helper) start(m message) (message, <-chan int) {
	res := message{ID: m.ID, Op: opResult}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cmd != nil {
		res.Err = "command already started"
		return res, nil
	}
	cmd := &exec.Cmd{
		Path:   h.cfg.Path,
		Args:   h.cfg.Args,
		Env:    h.cfg.Env,
		Dir:    h.cfg.Dir,
		Stdin:  os.Stdin,
		Stdout: os.Stdout,
		Stderr: os.Stderr,
		// If the helper dies, so does the command: nothing would carry its traffic any more.
		SysProcAttr: &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL},
	}
	started := make(chan error, 1)
	done := make(chan int, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread ends with this goroutine.
		if err := dropInheritableCaps(); err != nil {
			started <- fmt.Errorf("drop capabilities: %w", err)
			return
		}
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		done <- exitCode(cmd.Wait(), cmd.ProcessState)
	}()
	if err := <-started; err != nil {
		res.Err = err.Error()
		return res, nil
	}
	h.cmd = cmd
	return res, done
}

// dropInheritableCaps empties the calling thread's ambient and inheritable capabilities, which the
// helper was started with and which would otherwise pass to the command (ambient ones at once,
// inheritable ones to programs with file capabilities). The permitted and effective ones stay with
// the helper; a program started without ambient capabilities and not as root gets none of them.
func dropInheritableCaps() error {
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return err
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return err
	}
	data[0].Inheritable, data[1].Inheritable = 0, 0
	return unix.Capset(&hdr, &data[0])
}

// exitCode is the code a shell reports for the command.
func exitCode(err error, ps *os.ProcessState) int {
	if ps == nil {
		return 127
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	if code := ps.ExitCode(); code >= 0 {
		return code
	}
	if err != nil {
		return 127
	}
	return 0
}

func (h *helper) signal(sig syscall.Signal) {
	h.mu.Lock()
	cmd := h.cmd
	h.mu.Unlock()
	if cmd != nil {
		_ = cmd.Process.Signal(sig)
	}
}

// forwardSignals passes signals sent to the helper itself on to the command. Terminal signals
// (SIGINT, SIGQUIT) reach the command from the terminal, which signals the whole foreground process
// group; the helper only stays alive through them, so that it can report the command's exit. It
// catches them instead of ignoring them because an ignored signal stays ignored in the command.
// Signals the plugin was started with ignored (nohup) stay ignored for the command.
func (h *helper) forwardSignals() {
	forward := []os.Signal{syscall.SIGTERM, syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGUSR2}
	swallow := []os.Signal{syscall.SIGINT, syscall.SIGQUIT}
	var sigs []os.Signal
	for _, s := range append(forward, swallow...) {
		if !signal.Ignored(s) {
			sigs = append(sigs, s)
		}
	}
	ch := make(chan os.Signal, 8)
	signal.Notify(ch, sigs...)
	go func() {
		for s := range ch {
			if s == syscall.SIGINT || s == syscall.SIGQUIT {
				continue
			}
			h.signal(s.(syscall.Signal))
		}
	}()
}

// loopback dials or listens on the namespace's loopback for the plugin and hands over the socket.
func (h *helper) loopback(m message) {
	res := message{ID: m.ID, Op: opResult}
	f, err := loopbackSocket(m)
	if err != nil {
		res.Err = err.Error()
		var errno syscall.Errno
		if errors.As(err, &errno) {
			res.Errno = int(errno)
		}
		h.reply(res, nil)
		return
	}
	defer f.Close()
	h.reply(res, f)
}

func loopbackSocket(m message) (*os.File, error) {
	network, addr, err := loopback(m.Network, m.Port)
	if err != nil {
		return nil, err
	}
	if m.Op == opListen {
		ln, err := net.Listen(network, addr)
		if err != nil {
			return nil, err
		}
		defer ln.Close()
		return ln.(*net.TCPListener).File()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.(*net.TCPConn).File()
}

package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	"golang.org/x/sys/unix"

	"github.com/trafficlab/kubectl-trafficlab/internal/scmrights"
)

// The plugin and its helper talk over a SOCK_SEQPACKET socket pair: one JSON message per packet,
// with at most one descriptor attached (SCM_RIGHTS). Packets keep message boundaries and keep a
// descriptor with the message it belongs to, so no framing is needed.
//
//	helper → plugin  ready + TUN fd, or error              once, after setup
//	plugin → helper  start, dial, listen (with an id)      answered by result (same id, maybe an fd)
//	plugin → helper  signal                                no answer
//	helper → plugin  exit                                  once, when the command has exited
//
// The plugin closing its end tells the helper to kill the command and exit.
const (
	opReady  = "ready"
	opError  = "error"
	opStart  = "start"
	opDial   = "dial"
	opListen = "listen"
	opSignal = "signal"
	opResult = "result"
	opExit   = "exit"
)

// Reasons for setup errors the plugin turns into UnavailableError.
const (
	reasonTUNMissing = "tun-missing"
	reasonTUNDenied  = "tun-denied"
	reasonNoCaps     = "no-caps"
)

type message struct {
	ID      uint64 `json:"id,omitempty"`
	Op      string `json:"op"`
	Network string `json:"network,omitempty"`
	Port    int    `json:"port,omitempty"`
	Signal  int    `json:"signal,omitempty"`
	Code    int    `json:"code,omitempty"`
	Err     string `json:"err,omitempty"`
	// Errno lets the plugin rebuild an error that errors.Is matches (ECONNREFUSED for a dial).
	Errno  int    `json:"errno,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// helperConfig goes to the helper through a pipe (fd 4), which has no size limit, unlike a packet.
type helperConfig struct {
	Path       string   `json:"path"`
	Args       []string `json:"args"`
	Env        []string `json:"env"`
	Dir        string   `json:"dir"`
	ResolvConf []byte   `json:"resolvConf"`
}

// The helper's descriptors, as ExtraFiles places them.
const (
	helperSocketFD = 3
	helperConfigFD = 4
)

// maxMessage is far above any message; a larger one is a bug and fails as truncated.
const maxMessage = 16 << 10

func send(c *net.UnixConn, m message, f *os.File) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	var oob []byte
	if f != nil {
		oob = unix.UnixRights(int(f.Fd()))
	}
	_, _, err = c.WriteMsgUnix(b, oob, nil)
	return err
}

// recv reads one message and the descriptor that came with it, if any. The end of the peer is
// io.EOF.
func recv(c *net.UnixConn) (message, *os.File, error) {
	buf := make([]byte, maxMessage)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return message{}, nil, err
	}
	var f *os.File
	if oobn > 0 {
		if f, err = scmrights.First(oob[:oobn], "sandbox-fd"); err != nil {
			return message{}, nil, fmt.Errorf("sandbox: %w", err)
		}
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		if f != nil {
			f.Close()
		}
		return message{}, nil, errors.New("sandbox: truncated message")
	}
	if n == 0 {
		if f != nil {
			f.Close()
		}
		return message{}, nil, io.EOF
	}
	var m message
	if err := json.Unmarshal(buf[:n], &m); err != nil {
		if f != nil {
			f.Close()
		}
		return message{}, nil, fmt.Errorf("sandbox: bad message: %w", err)
	}
	return m, f, nil
}

// fileConn turns one end of the socket pair into a *net.UnixConn and closes fd (the conn has its
// own duplicate, close-on-exec).
func fileConn(fd int) (*net.UnixConn, error) {
	f := os.NewFile(uintptr(fd), "sandbox-socket")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("sandbox: socket: %w", err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("sandbox: socket is a %T, not a unix socket", c)
	}
	return uc, nil
}

// loopback maps DialLoopback's and ListenLoopback's network to the address family and loopback
// address inside the namespace.
func loopback(network string, port int) (string, string, error) {
	if port < 0 || port > 65535 {
		return "", "", fmt.Errorf("port %d out of range", port)
	}
	switch network {
	case "tcp", "tcp4":
		return "tcp4", fmt.Sprintf("127.0.0.1:%d", port), nil
	case "tcp6":
		return "tcp6", fmt.Sprintf("[::1]:%d", port), nil
	}
	return "", "", fmt.Errorf("network %q: only tcp, tcp4 and tcp6 reach the sandbox's loopback", network)
}

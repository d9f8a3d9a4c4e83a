// Package sandbox runs a user's command in its own network without root: an unprivileged user,
// network and mount namespace whose default routes go into a TUN device, whose descriptor the plugin
// keeps (pkg/netstack terminates the traffic), and whose /etc/resolv.conf is the caller's.
//
// A multithreaded Go process cannot enter a new user namespace, so New re-executes the plugin binary
// (/proc/self/exe) as a hidden helper, created in the new namespaces with CAP_NET_ADMIN and
// CAP_SYS_ADMIN as ambient capabilities (they count in its own user namespace only; it keeps the
// caller's uid). The helper sets up the namespace, passes the TUN descriptor back over a unix socket,
// starts the command without those capabilities, and serves requests for loopback sockets inside the
// namespace until the command exits. Every binary that uses the package must call IsHelper and
// RunHelper first thing in main (tests: in TestMain).
//
// The order of a run:
//
//	sb, err := sandbox.New(ctx, sandbox.Config{Command: args, ResolvConf: conf, Stdin: os.Stdin, ...})
//	defer sb.Close()
//	ns, err := netstack.New(sb.TUN(), netstack.Config{MTU: sandbox.MTU, Dialer: d})
//	defer ns.Close()
//	ln, err := sb.ListenLoopback(ctx, "tcp4", 5432) // optional: a host service as localhost:5432
//	err = sb.Start()
//	code, err := sb.Wait()
//
// A terminal's Ctrl-C reaches the command directly (it shares the plugin's process group), so a
// caller should let the command end and Wait rather than Close on SIGINT.
package sandbox

import (
	"io"
)

// The namespace's addresses. The sandbox is SandboxIPv4/SandboxIPv6 on the TUN device; its default
// routes go to GatewayIPv4/GatewayIPv6, which no one owns: the stack on the TUN answers for every
// address, and callers use the gateway as the resolver's address in ResolvConf.
const (
	// TUNName is the TUN device inside the namespace.
	TUNName = "tl0"
	// MTU is the TUN device's MTU, as large as an IP packet goes less room for headers (pasta and
	// slirp4netns use the same): the command's kernel then hands over 64 KiB TCP segments, and the
	// per-packet work in the user-space stack, not the bytes, is what costs. No packet ever crosses a
	// real link at this size; the stack terminates TCP and UDP.
	MTU = 65520

	GatewayIPv4   = "198.18.0.1"
	SandboxIPv4   = "198.18.0.2"
	PrefixLenIPv4 = 30
	GatewayIPv6   = "fd00:7472:6c::1"
	SandboxIPv6   = "fd00:7472:6c::2"
	PrefixLenIPv6 = 64
)

// Config is the command to run and its surroundings.
type Config struct {
	// Command is the program and its arguments; the program is looked up in Env's PATH.
	Command []string
	// Env is the command's environment; nil means the plugin's.
	Env []string
	// Dir is the command's working directory; "" means the plugin's.
	Dir string
	// ResolvConf replaces /etc/resolv.conf inside the namespace, and the host's resolver shortcuts
	// that would bypass it (nscd's and systemd-resolved's sockets) are hidden. Nil leaves both.
	ResolvConf []byte
	// Stdin, Stdout and Stderr are the command's, as in exec.Cmd; nil means the null device.
	// An *os.File (a terminal, say) is passed through as it is.
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
}

// helperArg in argv[1] makes the binary the helper instead of the plugin. It is no word a user
// would type, and kubectl never passes it.
const helperArg = "__trafficlab-sandbox-helper"

// IsHelper reports whether this process was started by New as the namespace helper; main must then
// exit with RunHelper's result before doing anything else.
func IsHelper(args []string) bool {
	return len(args) > 1 && args[1] == helperArg
}

// UnavailableError says that this machine or this user cannot run the sandbox, with what to do
// about it in one line.
type UnavailableError struct {
	Reason string
}

func (e *UnavailableError) Error() string { return e.Reason }

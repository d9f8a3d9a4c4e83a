package wire

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"
)

// Code classifies a failure so that the peer can react to it (and a user can read it) without parsing
// messages. Codes are part of the wire format: never renumber, only append.
type Code uint8

// Error codes. CodeOK is the only success value.
const (
	CodeOK               Code = 0
	CodeRefused          Code = 1  // the target actively refused (ECONNREFUSED, ICMP port unreachable)
	CodeUnknownHost      Code = 2  // the name did not resolve inside the pod
	CodeTimeout          Code = 3  // dial or handshake timed out
	CodeForbidden        Code = 4  // policy or permissions (EACCES, EPERM, bad secret)
	CodeInternal         Code = 5  // anything else; the message says more
	CodeUnsupported      Code = 6  // unknown stream kind, network or codec
	CodeBadRequest       Code = 7  // malformed request (bad address, missing field)
	CodeProtocolMismatch Code = 8  // the peers speak different protocol numbers
	CodeUnreachable      Code = 9  // no route to host or network
	CodeSessionGone      Code = 10 // the session to resume is not in the agent (ended, or forgotten past its grace)
	codeMax              Code = 11 // first unassigned code; decoders map anything at or above it to CodeInternal
)

// Sentinel errors, one per code, so callers can write errors.Is(err, wire.ErrRefused) whether the
// failure happened locally or was reported by the peer.
var (
	ErrRefused          = errors.New("connection refused")
	ErrUnknownHost      = errors.New("unknown host")
	ErrTimeout          = errors.New("timed out")
	ErrForbidden        = errors.New("forbidden")
	ErrInternal         = errors.New("internal error")
	ErrUnsupported      = errors.New("unsupported")
	ErrBadRequest       = errors.New("bad request")
	ErrProtocolMismatch = errors.New("protocol mismatch")
	ErrUnreachable      = errors.New("host unreachable")
	ErrSessionGone      = errors.New("session gone")

	// ErrFrameTooLarge is returned for a control or open frame whose length exceeds MaxFrameSize.
	ErrFrameTooLarge = errors.New("frame too large")
	// ErrBadMagic is returned when a control channel or data connection does not start with the
	// expected magic, which usually means the other end is not a trafficlab agent or plugin.
	ErrBadMagic = errors.New("bad magic")
	// ErrBadSecret is returned when a data connection presents the wrong session secret.
	ErrBadSecret = errors.New("bad session secret")
	// ErrKeyPin is returned when the agent's data connection shows a key other than the one its
	// Welcome pinned: something on the pod's loopback is in the middle.
	ErrKeyPin = errors.New("agent key does not match its pin")
	// ErrDataConnLimit refuses a data connection beyond the number the Hello declared.
	ErrDataConnLimit = errors.New("more data connections than the Hello declared")
	// ErrMalformed is returned for bytes that do not follow the wire format.
	ErrMalformed = errors.New("malformed message")

	// ErrPeerLost ends a control session whose peer sent nothing for the heartbeat deadline.
	ErrPeerLost = errors.New("peer lost")
	// ErrPeerClosed ends a control session whose input reached EOF.
	ErrPeerClosed = errors.New("peer closed the control channel")
	// ErrBye ends a control session whose peer said goodbye; it is the normal way out.
	ErrBye = errors.New("peer said bye")

	// ErrStreamAborted is what a stream's Read and Write return after the peer closed it without
	// finishing its write side first: the equivalent of a TCP reset.
	ErrStreamAborted = errors.New("stream aborted by peer")
	// ErrSessionClosed is returned by Open and Accept once the tunnel session has ended.
	ErrSessionClosed = errors.New("tunnel session closed")
	// ErrWriteClosed is returned by Write after CloseWrite or Close.
	ErrWriteClosed = errors.New("write side closed")
	// ErrDatagramTooLarge is returned for a UDP datagram longer than MaxDatagramSize or than the
	// caller's buffer.
	ErrDatagramTooLarge = errors.New("datagram too large")
)

func (c Code) String() string {
	switch c {
	case CodeOK:
		return "ok"
	case CodeRefused:
		return "refused"
	case CodeUnknownHost:
		return "unknown host"
	case CodeTimeout:
		return "timeout"
	case CodeForbidden:
		return "forbidden"
	case CodeInternal:
		return "internal"
	case CodeUnsupported:
		return "unsupported"
	case CodeBadRequest:
		return "bad request"
	case CodeProtocolMismatch:
		return "protocol mismatch"
	case CodeUnreachable:
		return "unreachable"
	case CodeSessionGone:
		return "session gone"
	}
	return fmt.Sprintf("code %d", uint8(c))
}

// sentinel returns the error that errors.Is matches for c.
func (c Code) sentinel() error {
	switch c {
	case CodeRefused:
		return ErrRefused
	case CodeUnknownHost:
		return ErrUnknownHost
	case CodeTimeout:
		return ErrTimeout
	case CodeForbidden:
		return ErrForbidden
	case CodeUnsupported:
		return ErrUnsupported
	case CodeBadRequest:
		return ErrBadRequest
	case CodeProtocolMismatch:
		return ErrProtocolMismatch
	case CodeUnreachable:
		return ErrUnreachable
	case CodeSessionGone:
		return ErrSessionGone
	case CodeOK:
		return nil
	}
	return ErrInternal
}

// RemoteError is a failure reported by the peer, in an Error frame or an open reply.
type RemoteError struct {
	Code    Code
	Message string
}

func (e *RemoteError) Error() string {
	if e.Message == "" {
		return e.Code.String()
	}
	return e.Message
}

// Is makes errors.Is(err, ErrRefused) and friends work across the wire.
func (e *RemoteError) Is(target error) bool {
	s := e.Code.sentinel()
	return s != nil && s == target
}

// CodeFor classifies a local error for an open reply or Error frame. The agent calls it with the
// error from dialing the requested address, so the plugin can tell "nothing listens there" from "no
// such service" without parsing text.
func CodeFor(err error) Code {
	if err == nil {
		return CodeOK
	}
	var re *RemoteError
	if errors.As(err, &re) {
		return re.Code
	}
	var dnsErr *net.DNSError
	var netErr net.Error
	switch {
	case errors.As(err, &dnsErr) && dnsErr.IsNotFound:
		return CodeUnknownHost
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, ErrRefused):
		return CodeRefused
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH), errors.Is(err, ErrUnreachable):
		return CodeUnreachable
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM), errors.Is(err, os.ErrPermission),
		errors.Is(err, ErrForbidden), errors.Is(err, ErrBadSecret), errors.Is(err, ErrDataConnLimit):
		return CodeForbidden
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, ErrTimeout),
		errors.As(err, &netErr) && netErr.Timeout():
		return CodeTimeout
	case errors.As(err, &dnsErr) && dnsErr.IsTimeout:
		return CodeTimeout
	case errors.Is(err, ErrUnsupported):
		return CodeUnsupported
	case errors.Is(err, ErrBadRequest):
		return CodeBadRequest
	case errors.Is(err, ErrProtocolMismatch):
		return CodeProtocolMismatch
	case errors.Is(err, ErrSessionGone):
		return CodeSessionGone
	}
	return CodeInternal
}

// Role names one end of the protocol in messages meant for humans.
type Role uint8

// The two ends.
const (
	RolePlugin Role = iota + 1
	RoleAgent
)

func (r Role) String() string {
	switch r {
	case RolePlugin:
		return "plugin"
	case RoleAgent:
		return "agent"
	}
	return "peer"
}

// MismatchError says that the two ends speak different protocol numbers and, above all, which one to
// upgrade: the plugin's release pins the agent image, so a newer agent means an old plugin and an
// older agent means a stale or overridden image.
type MismatchError struct {
	Local          Role
	LocalProtocol  int
	RemoteProtocol int
	// RemoteVersion is the peer's build version when it told us; informational only.
	RemoteVersion string
}

func (e *MismatchError) Error() string {
	remote := RolePlugin
	if e.Local == RolePlugin {
		remote = RoleAgent
	}
	var advice string
	// The plugin is the thing users upgrade; the agent image follows it.
	pluginNewer := (e.Local == RolePlugin) == (e.LocalProtocol > e.RemoteProtocol)
	if pluginNewer {
		advice = "the agent image is older: use the agent image released with this plugin (drop --agent-image or pull the matching tag)"
	} else {
		advice = "upgrade kubectl-trafficlab"
	}
	ver := ""
	if e.RemoteVersion != "" {
		ver = fmt.Sprintf(" (%s %s)", remote, e.RemoteVersion)
	}
	return fmt.Sprintf("%s speaks protocol %d, this %s speaks %d%s: %s",
		remote, e.RemoteProtocol, e.Local, e.LocalProtocol, ver, advice)
}

// Is lets callers test for any mismatch with errors.Is(err, ErrProtocolMismatch).
func (e *MismatchError) Is(target error) bool { return target == ErrProtocolMismatch }

// PeerLostError reports a control session that heard nothing for at least the heartbeat deadline.
type PeerLostError struct {
	Silence  time.Duration
	Deadline time.Duration
}

func (e *PeerLostError) Error() string {
	return fmt.Sprintf("no heartbeat from the peer for %v (deadline %v): the connection is probably cut", e.Silence, e.Deadline)
}

// Is matches ErrPeerLost.
func (e *PeerLostError) Is(target error) bool { return target == ErrPeerLost }

// ByeError carries the reason the peer gave when it ended the session.
type ByeError struct{ Reason string }

func (e *ByeError) Error() string {
	if e.Reason == "" {
		return ErrBye.Error()
	}
	return fmt.Sprintf("%v: %s", ErrBye, e.Reason)
}

// Is matches ErrBye.
func (e *ByeError) Is(target error) bool { return target == ErrBye }

// LogDataConnsRefused is the message of the agent's log line that counts refused data connections.
// Anything in the pod can cause it, so the plugin never takes it for the agent's last word on why a
// session ended.
const LogDataConnsRefused = "data connections refused"

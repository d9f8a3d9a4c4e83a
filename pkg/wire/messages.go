package wire

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"net"
	"strconv"
	"time"
)

// SecretSize is the length of a session secret.
const SecretSize = 32

// Secret authenticates data connections to the session that created it. It prints as "[redacted]"
// so that logging a Hello with %v or %+v cannot leak it.
type Secret [SecretSize]byte

// NewSecret returns a secret from crypto/rand.
func NewSecret() (Secret, error) {
	var s Secret
	if _, err := rand.Read(s[:]); err != nil {
		return s, fmt.Errorf("generate session secret: %w", err)
	}
	return s, nil
}

// Equal compares in constant time, so that response timing reveals nothing about the secret.
func (s Secret) Equal(o Secret) bool { return subtle.ConstantTimeCompare(s[:], o[:]) == 1 }

// IsZero reports an unset secret, which no session may use.
func (s Secret) IsZero() bool { return s == Secret{} }

func (Secret) String() string   { return "[redacted]" }
func (Secret) GoString() string { return "wire.Secret{[redacted]}" }

// MarshalText encodes the secret as standard base64; only the JSON encoder should ever call it.
func (s Secret) MarshalText() ([]byte, error) {
	return base64.StdEncoding.AppendEncode(nil, s[:]), nil
}

// UnmarshalText accepts exactly SecretSize bytes of standard base64.
func (s *Secret) UnmarshalText(b []byte) error {
	raw, err := base64.StdEncoding.AppendDecode(nil, b)
	if err != nil {
		return fmt.Errorf("secret: %w", err)
	}
	if len(raw) != SecretSize {
		return fmt.Errorf("secret is %d bytes, want %d: %w", len(raw), SecretSize, ErrMalformed)
	}
	copy(s[:], raw)
	return nil
}

// Duration travels as integer milliseconds: readable in a hex dump and free of float rounding.
type Duration int64

// Std converts to time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) * time.Millisecond }

// Millis converts from time.Duration, truncating below a millisecond.
func Millis(d time.Duration) Duration { return Duration(d / time.Millisecond) }

// SessionOptions are chosen by the plugin and adopted by the agent. Zero values mean "the default".
type SessionOptions struct {
	HeartbeatInterval Duration `json:"heartbeatIntervalMs,omitempty"`
	HeartbeatDeadline Duration `json:"heartbeatDeadlineMs,omitempty"`
	// User and Host say who runs the session and from which machine, as the plugin reports them
	// (SelfSubjectReview, else the kubeconfig's user name; os.Hostname), for `kubectl trafficlab
	// sessions`. The agent cannot check them: they are labels, not credentials.
	User string `json:"user,omitempty"`
	Host string `json:"host,omitempty"`
	// ReconnectGrace is how long the agent keeps the session after its control channel is lost (no
	// Bye), for the plugin to resume it; 0 releases it at once. The agent caps it at MaxReconnectGrace.
	ReconnectGrace Duration `json:"reconnectGraceMs,omitempty"`
}

// Reconnect grace bounds: the default the plugin asks for, and the most an agent keeps a session
// nobody may be coming back for (its redirect lifted, its registration held).
const (
	DefaultReconnectGrace = time.Minute
	MaxReconnectGrace     = 10 * time.Minute
)

// Resume asks the agent to re-attach a session whose control channel was lost. Token is the
// Welcome's ResumeToken: the session id is no secret (it names the nftables table and is logged),
// and anyone allowed to exec into the agent could otherwise take the session over.
type Resume struct {
	SessionID string `json:"sessionId"`
	Token     Secret `json:"token"`
}

// String and GoString keep the token out of logs, whatever the verb: fmt does not reach an array
// field's own String through every verb.
func (r Resume) String() string { return "{" + r.SessionID + " [redacted]}" }
func (r Resume) GoString() string {
	return "wire.Resume{SessionID: " + strconv.Quote(r.SessionID) + ", Token: [redacted]}"
}

// Hello is the plugin's first control frame.
type Hello struct {
	Protocol int            `json:"protocol"`
	Version  string         `json:"version"`
	Secret   Secret         `json:"secret"`
	Options  SessionOptions `json:"options"`
	// DataConns is how many data connections the plugin will open; the agent refuses any beyond it.
	DataConns int `json:"dataConns"`
	// Resume, when set, re-attaches an existing session instead of starting one; Secret and
	// DataConns are then the new data connections' (the old ones are gone).
	Resume *Resume `json:"resume,omitempty"`
}

// MaxDataConns bounds Hello.DataConns.
const MaxDataConns = 16

// Welcome is the agent's answer to an acceptable Hello.
type Welcome struct {
	Protocol  int    `json:"protocol"`
	Version   string `json:"version"`
	SessionID string `json:"sessionId"`
	// DataPort is the agent's listener on 127.0.0.1 inside the pod, for port-forward.
	DataPort int `json:"dataPort"`
	// DataKeyPin is the SHA-256 of the SubjectPublicKeyInfo of the key the data listener's TLS
	// presents; the plugin accepts no other.
	DataKeyPin KeyPin `json:"dataKeyPin"`
	AgentPID   int    `json:"agentPid"`
	// Kinds lists the stream kinds the agent accepts, so the plugin can refuse a verb up front
	// instead of failing on the first stream.
	Kinds []string `json:"kinds,omitempty"`
	// Compression lists the codecs the agent can decode and encode.
	Compression []Compression `json:"compression,omitempty"`
	// ResolvConf is the pod's /etc/resolv.conf, so that exec resolves names as the pod does.
	ResolvConf string `json:"resolvConf,omitempty"`
	// ResumeToken, given when the Hello asked for a reconnect grace, is what a later Hello must show
	// to resume this session (Hello.Resume).
	ResumeToken *Secret `json:"resumeToken,omitempty"`
	// ReconnectGrace is the grace the agent adopted (the Hello's, capped).
	ReconnectGrace Duration `json:"reconnectGraceMs,omitempty"`
}

// Heartbeat proves liveness; Seq only helps when reading traces.
type Heartbeat struct {
	Seq uint64 `json:"seq"`
}

// Error reports a failure on the control channel. A protocol mismatch carries the sender's
// protocol and version so the receiver can say which side to upgrade.
type Error struct {
	Code     Code   `json:"code"`
	Message  string `json:"message"`
	Protocol int    `json:"protocol,omitempty"`
	Version  string `json:"version,omitempty"`
}

// Bye ends the session on purpose; the receiver releases everything and exits.
type Bye struct {
	Reason string `json:"reason,omitempty"`
}

// Stream kinds. The side that opens a stream is fixed per kind (see docs/protocol.md); a peer that
// does not know a kind replies CodeUnsupported, so adding a kind does not bump Protocol.
const (
	// KindDial is opened by the plugin: the agent dials Address from the pod's network namespace.
	KindDial = "dial"
)

// Networks a dial may ask for.
const (
	NetworkTCP = "tcp"
	NetworkUDP = "udp"
)

// OpenRequest is the first frame on every stream, sent by the side that opened it.
type OpenRequest struct {
	Kind    string `json:"kind"`
	Network string `json:"network,omitempty"`
	// Address is host:port as the pod should dial it.
	Address string `json:"address,omitempty"`
	// Compression lists acceptable codecs in the opener's order of preference; empty means none.
	Compression []Compression `json:"compression,omitempty"`
	// Steal is KindSteal's spec.
	Steal *StealSpec `json:"steal,omitempty"`
	// Dump is KindDump's spec.
	Dump *DumpSpec `json:"dump,omitempty"`
	// Mirror is KindMirror's spec.
	Mirror *MirrorSpec `json:"mirror,omitempty"`
	// Port is the pod port a KindIncoming connection arrived on, Peer its client.
	Port int    `json:"port,omitempty"`
	Peer string `json:"peer,omitempty"`
	// Resume re-attaches the session's running steal or mirror (KindSteal, KindMirror) to this
	// stream after the session resumed: the spec is the one it started with, and its events go on
	// here.
	Resume bool `json:"resume,omitempty"`
}

// OpenReply answers an OpenRequest. Only after a CodeOK reply does stream data follow, framed and
// compressed as Compression says.
type OpenReply struct {
	Code        Code        `json:"code"`
	Message     string      `json:"message,omitempty"`
	Compression Compression `json:"compression,omitempty"`
}

func (Hello) FrameType() FrameType       { return FrameHello }
func (Welcome) FrameType() FrameType     { return FrameWelcome }
func (Heartbeat) FrameType() FrameType   { return FrameHeartbeat }
func (Error) FrameType() FrameType       { return FrameError }
func (Bye) FrameType() FrameType         { return FrameBye }
func (OpenRequest) FrameType() FrameType { return FrameOpen }
func (OpenReply) FrameType() FrameType   { return FrameOpenReply }

// validate checks only what the frame itself can know. Hellos and Welcomes of another protocol never
// get here (see Frame.Decode): a mismatch must reach the handshake, which turns it into advice.
func (h *Hello) validate() error {
	if h.Secret.IsZero() {
		return fmt.Errorf("empty secret: %w", ErrMalformed)
	}
	if h.Options.HeartbeatInterval < 0 || h.Options.HeartbeatDeadline < 0 {
		return fmt.Errorf("negative heartbeat option: %w", ErrMalformed)
	}
	if h.Options.ReconnectGrace < 0 {
		return fmt.Errorf("negative reconnect grace: %w", ErrMalformed)
	}
	if h.Resume != nil && (h.Resume.SessionID == "" || h.Resume.Token.IsZero()) {
		return fmt.Errorf("resume without a session id or token: %w", ErrMalformed)
	}
	if h.DataConns < 1 || h.DataConns > MaxDataConns {
		return fmt.Errorf("data connections %d out of range 1-%d: %w", h.DataConns, MaxDataConns, ErrMalformed)
	}
	return nil
}

func (w *Welcome) validate() error {
	if w.DataPort <= 0 || w.DataPort > 65535 {
		return fmt.Errorf("data port %d out of range: %w", w.DataPort, ErrMalformed)
	}
	if w.DataKeyPin.IsZero() {
		return fmt.Errorf("welcome without a data key pin: %w", ErrMalformed)
	}
	return nil
}

func (*Heartbeat) validate() error { return nil }
func (*Bye) validate() error       { return nil }

func (e *Error) validate() error {
	if e.Code == CodeOK {
		return fmt.Errorf("error frame with code ok: %w", ErrMalformed)
	}
	return nil
}

func (r *OpenReply) validate() error {
	if r.Code == CodeOK && !r.Compression.known() {
		return fmt.Errorf("reply chose codec %q: %w", r.Compression, ErrUnsupported)
	}
	return nil
}

// validate checks the shape of the request. An unknown kind or network is not malformed: the
// receiver answers CodeUnsupported so that newer peers can probe older ones.
func (r *OpenRequest) validate() error {
	if r.Kind == "" {
		return fmt.Errorf("open request without kind: %w", ErrBadRequest)
	}
	switch r.Kind {
	case KindDial:
	case KindSteal:
		if r.Steal == nil {
			return fmt.Errorf("steal stream without a spec: %w", ErrBadRequest)
		}
		return r.Steal.Validate()
	case KindIncoming, KindMirrored:
		return r.validateIncoming()
	case KindMirror:
		if r.Mirror == nil {
			return fmt.Errorf("mirror stream without a spec: %w", ErrBadRequest)
		}
		return r.Mirror.Validate()
	case KindDump:
		if r.Dump == nil {
			return fmt.Errorf("dump stream without a spec: %w", ErrBadRequest)
		}
		return r.Dump.Validate()
	default:
		return nil
	}
	if r.Network != NetworkTCP && r.Network != NetworkUDP {
		return fmt.Errorf("network %q: %w", r.Network, ErrUnsupported)
	}
	host, port, err := net.SplitHostPort(r.Address)
	if err != nil {
		return fmt.Errorf("address %q: %w", r.Address, ErrBadRequest)
	}
	if host == "" {
		return fmt.Errorf("address %q has no host: %w", r.Address, ErrBadRequest)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return fmt.Errorf("address %q: port must be 1-65535: %w", r.Address, ErrBadRequest)
	}
	return nil
}

// Validate lets the opener catch a bad request before it costs a round trip.
func (r OpenRequest) Validate() error { return r.validate() }

package wire

import (
	"encoding/binary"
	"fmt"
	"io"
)

// Data-connection preamble. The plugin writes
//
//	"TLD\x01" | protocol uint16 | secret [32]byte
//
// and the agent answers
//
//	"TLA\x01" | protocol uint16 | code uint8
//
// before either side starts yamux. The answer exists so that a bad secret or a protocol mismatch
// reaches the plugin as a reason rather than as a yamux session that dies on its first read.
const (
	PreambleMagic    = "TLD\x01"
	PreambleAckMagic = "TLA\x01"
	// PreambleSize is the length of the plugin's preamble.
	PreambleSize = 4 + 2 + SecretSize
	// PreambleAckSize is the length of the agent's answer.
	PreambleAckSize = 4 + 2 + 1
)

// Preamble is what the plugin presents on a new data connection.
type Preamble struct {
	Protocol int
	Secret   Secret
}

// AppendPreamble appends the encoded preamble to dst.
func AppendPreamble(dst []byte, p Preamble) []byte {
	dst = append(dst, PreambleMagic...)
	dst = binary.BigEndian.AppendUint16(dst, uint16(p.Protocol))
	return append(dst, p.Secret[:]...)
}

// ReadPreamble reads exactly PreambleSize bytes. It checks the magic but not the protocol or secret,
// which VerifyPreamble does.
func ReadPreamble(r io.Reader) (Preamble, error) {
	var b [PreambleSize]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return Preamble{}, fmt.Errorf("read data preamble: %w", err)
	}
	if string(b[:4]) != PreambleMagic {
		return Preamble{}, fmt.Errorf("data preamble starts with %q, want %q: %w", b[:4], PreambleMagic, ErrBadMagic)
	}
	p := Preamble{Protocol: int(binary.BigEndian.Uint16(b[4:6]))}
	copy(p.Secret[:], b[6:])
	return p, nil
}

// AppendPreambleAck appends the agent's answer.
func AppendPreambleAck(dst []byte, code Code) []byte {
	dst = append(dst, PreambleAckMagic...)
	dst = binary.BigEndian.AppendUint16(dst, Protocol)
	return append(dst, byte(code))
}

// ReadPreambleAck reads the agent's answer and returns its protocol number and code.
func ReadPreambleAck(r io.Reader) (protocol int, code Code, err error) {
	var b [PreambleAckSize]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return 0, 0, fmt.Errorf("read data preamble answer: %w", err)
	}
	if string(b[:4]) != PreambleAckMagic {
		return 0, 0, fmt.Errorf("data preamble answer starts with %q, want %q: %w", b[:4], PreambleAckMagic, ErrBadMagic)
	}
	code = Code(b[6])
	if code >= codeMax {
		code = CodeInternal
	}
	return int(binary.BigEndian.Uint16(b[4:6])), code, nil
}

// VerifyPreamble checks the protocol number, then the secret in constant time. The protocol check
// comes first because it is not secret and gives the better message.
func VerifyPreamble(p Preamble, want Secret) error {
	if p.Protocol != Protocol {
		return &MismatchError{Local: RoleAgent, LocalProtocol: Protocol, RemoteProtocol: p.Protocol}
	}
	if want.IsZero() || !p.Secret.Equal(want) {
		return ErrBadSecret
	}
	return nil
}

// ClientPreamble is the plugin's half of the data-connection handshake: it presents the secret and
// waits for the agent's verdict. The caller bounds it with a deadline on conn.
func ClientPreamble(conn io.ReadWriter, secret Secret) error {
	if _, err := conn.Write(AppendPreamble(make([]byte, 0, PreambleSize), Preamble{Protocol: Protocol, Secret: secret})); err != nil {
		return fmt.Errorf("write data preamble: %w", err)
	}
	proto, code, err := ReadPreambleAck(conn)
	if err != nil {
		return err
	}
	switch {
	case code == CodeProtocolMismatch || proto != Protocol:
		return &MismatchError{Local: RolePlugin, LocalProtocol: Protocol, RemoteProtocol: proto}
	case code == CodeForbidden:
		return fmt.Errorf("agent refused the data connection: %w", ErrBadSecret)
	case code != CodeOK:
		return fmt.Errorf("agent refused the data connection: %w", &RemoteError{Code: code, Message: code.String()})
	}
	return nil
}

// ServerPreamble is the agent's half: it reads the preamble, checks it, and answers. On any failure
// it answers with the reason (when the connection still works) and returns an error; the caller then
// closes conn. The caller bounds it with a deadline on conn, or an unauthenticated peer could hold the
// connection open forever.
func ServerPreamble(conn io.ReadWriter, secret Secret) error {
	p, err := ReadPreamble(conn)
	if err != nil {
		return err
	}
	verr := VerifyPreamble(p, secret)
	if _, err := conn.Write(AppendPreambleAck(make([]byte, 0, PreambleAckSize), CodeFor(verr))); err != nil && verr == nil {
		return fmt.Errorf("write data preamble answer: %w", err)
	}
	return verr
}

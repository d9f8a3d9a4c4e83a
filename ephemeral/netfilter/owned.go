package netfilter

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// replyTimeout bounds the wait for the kernel's answer to one batch. nf_tables answers within
// the send itself, so reaching it means the socket is broken.
const replyTimeout = 10 * time.Second

// ErrOwnerUnsupported is Open's answer on a kernel that refuses the owner flag (before 5.12) when
// Options.AllowUnowned is not set. Open then leaves nothing behind: the refused batch applied
// nothing, and the token is released.
var ErrOwnerUnsupported = errors.New("the kernel has no nftables table owner flag (Linux 5.12)")

// Options are how Open may install a redirect.
type Options struct {
	// AllowUnowned accepts a table without the owner flag on a kernel that refuses the flag. Such a
	// table outlives its process unless a Guard or a later SweepStale removes it, so it is a choice
	// the user makes, not a silent fallback.
	AllowUnowned bool
	// ForceUnowned acts as if the kernel refused the owner flag, without asking it: kernel tests
	// run the path old kernels take (AllowUnowned or not) on machines that are not old.
	ForceUnowned bool
	// Listener is the agent's listener on Redirect.ListenPort. The unowned path redirects with
	// tproxy, which hands connections only to a transparent socket, so Open sets IP_TRANSPARENT on
	// it; the owned path does not need it.
	Listener syscall.Conn
}

// Owned is a session's table, created and changed over one netlink socket that stays open for
// the table's whole life. With the owner flag the kernel deletes the table the moment that socket
// closes, which it does when the process exits however it exits, SIGKILL included.
type Owned struct {
	mu    sync.Mutex
	c     conn // nil once closed
	seq   uint32
	name  string
	owned bool
	token *token
	// redirect is what the table was made with, which Restore adds again after StopNew.
	redirect Redirect
}

// Open creates the session's table inet trafficlab_<id> with the redirect r, in one atomic batch,
// over a new NETLINK_NETFILTER socket in the calling thread's network namespace that the returned
// value keeps open, after taking the table's liveness token (token.go). The table carries the
// owner flag. A kernel that refuses the flag (before 5.12) gets ErrOwnerUnsupported, unless
// opts.AllowUnowned: then it gets the unowned table (see Batch), KernelOwned reports false, and a
// Guard must remove the table should the process die without calling Close. An existing table of
// the same name is an error: it belongs to someone else.
func Open(id string, r Redirect, opts Options) (*Owned, error) {
	// Validate before opening a socket there would be nothing to do with.
	if _, err := Batch(id, r, true); err != nil {
		return nil, err
	}
	name, err := TableName(id)
	if err != nil {
		return nil, err
	}
	tok, err := holdToken(name)
	if err != nil {
		return nil, err
	}
	c, err := dialNetfilter()
	if err != nil {
		tok.Close()
		return nil, err
	}
	transparent := func() error {
		if opts.Listener == nil {
			return errors.New("the unowned redirect needs the listener, to make it transparent for tproxy")
		}
		return setTransparent(opts.Listener)
	}
	o, err := open(c, id, r, opts, transparent)
	if err != nil {
		c.Close()
		tok.Close()
		return nil, err
	}
	o.token = tok
	return o, nil
}

// open tries the owner flag first unless opts.ForceUnowned; transparent readies the listener for
// the unowned table before the table exists.
func open(c conn, id string, r Redirect, opts Options, transparent func() error) (*Owned, error) {
	name, err := TableName(id)
	if err != nil {
		return nil, err
	}
	o := &Owned{c: c, name: name, owned: true, redirect: r}
	if !opts.ForceUnowned {
		err = o.create(id, r)
		var be *batchError
		if !errors.As(err, &be) || !be.ownerRefused() {
			if err != nil {
				return nil, err
			}
			return o, nil
		}
	}
	if !opts.AllowUnowned {
		return nil, ErrOwnerUnsupported
	}
	o.owned = false
	if err := transparent(); err != nil {
		return nil, err
	}
	if err := o.create(id, r); err != nil {
		return nil, err
	}
	return o, nil
}

func (o *Owned) create(id string, r Redirect) error {
	msgs, err := Batch(id, r, o.owned)
	if err != nil {
		return err
	}
	if err := exchange(o.c, &o.seq, msgs); err != nil {
		return fmt.Errorf("create nftables table inet %q: %w", o.name, err)
	}
	return nil
}

// KernelOwned reports whether the kernel took the owner flag, and so removes the table by itself
// when the socket closes. When false, run a Guard for the session.
func (o *Owned) KernelOwned() bool { return o.owned }

// Table returns the table's name.
func (o *Owned) Table() string { return o.name }

// Close deletes the table over its own socket (the only one an owned table accepts changes from)
// and closes the socket. A table that is already gone is not an error, and calls after the
// first do nothing, so a signal handler and the normal exit path may both call it.
func (o *Owned) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.c == nil {
		return nil
	}
	c := o.c
	o.c = nil

	err := exchange(c, &o.seq, deleteBatch(o.name))
	if errors.Is(err, unix.ENOENT) {
		err = nil
	}
	if err != nil {
		err = fmt.Errorf("delete nftables table inet %q: %w", o.name, err)
	}
	// Closing also removes an owned table that the delete could not.
	if cerr := c.Close(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("close netlink socket of table inet %q: %w", o.name, cerr))
	}
	// The token goes last: a table is never without one, so no sweep takes it for a leftover.
	if o.token != nil {
		_ = o.token.Close()
	}
	return err
}

// conn is the lasting netlink socket; tests substitute a scripted kernel.
type conn interface {
	SendMessages(msgs []netlink.Message) ([]netlink.Message, error)
	// Receive returns the messages of one datagram, error replies as messages.
	Receive() ([]netlink.Message, error)
	SetReadDeadline(t time.Time) error
	Close() error
}

// rawConn reads a *netlink.Conn's replies itself: netlink.Conn.Receive turns an error reply into
// a Go error without its sequence number, and the sequence number is what tells which message of
// a batch failed, and which replies belong to an earlier batch that timed out.
type rawConn struct {
	*netlink.Conn
	rc  syscall.RawConn
	buf []byte
}

func dialNetfilter() (*rawConn, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return nil, fmt.Errorf("open netlink netfilter socket: %w", err)
	}
	// Error replies then echo only the failing message's header rather than the whole rule. Old
	// kernels without the option send the rule too, which the buffer below holds.
	_ = c.SetOption(netlink.CapAcknowledge, true)
	rc, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("open netlink netfilter socket: %w", err)
	}
	return &rawConn{Conn: c, rc: rc, buf: make([]byte, 64<<10)}, nil
}

func (c *rawConn) Receive() ([]netlink.Message, error) {
	var n int
	var rerr error
	// rc.Read waits in the runtime's poller, so SetReadDeadline applies.
	err := c.rc.Read(func(fd uintptr) bool {
		n, _, rerr = unix.Recvfrom(int(fd), c.buf, unix.MSG_TRUNC)
		return !errors.Is(rerr, unix.EAGAIN) && !errors.Is(rerr, unix.EINTR)
	})
	switch {
	case err != nil:
		return nil, err
	case rerr != nil:
		return nil, rerr
	case n > len(c.buf):
		return nil, fmt.Errorf("netlink reply of %d bytes does not fit the %d-byte buffer", n, len(c.buf))
	}
	raw, err := syscall.ParseNetlinkMessage(c.buf[:n])
	if err != nil {
		return nil, fmt.Errorf("parse netlink reply: %w", err)
	}
	msgs := make([]netlink.Message, len(raw))
	for i, m := range raw {
		msgs[i] = netlink.Message{
			Header: netlink.Header{
				Length:   m.Header.Len,
				Type:     netlink.HeaderType(m.Header.Type),
				Flags:    netlink.HeaderFlags(m.Header.Flags),
				Sequence: m.Header.Seq,
				PID:      m.Header.Pid,
			},
			Data: slices.Clone(m.Data),
		}
	}
	return msgs, nil
}

// batchError is the kernel's refusal of one message of a batch.
type batchError struct {
	msg   netlink.Message
	errno unix.Errno
}

func (e *batchError) Error() string { return describe(e.msg) + ": " + e.errno.Error() }
func (e *batchError) Unwrap() error { return e.errno }

// ownerRefused reports a kernel without NFT_TABLE_F_OWNER: it rejects the flag on the table
// itself, while the messages after it fail only because the table is missing.
func (e *batchError) ownerRefused() bool {
	return e.msg.Header.Type == nftMsgType(unix.NFT_MSG_NEWTABLE) &&
		(e.errno == unix.EOPNOTSUPP || e.errno == unix.EINVAL)
}

// exchange sends one batch and waits for the kernel's answer to all of it. It returns the first
// message the kernel refused as a *batchError; the kernel has then applied none of the batch.
//
// Every message in the batch asks for an acknowledgement, and right after the batch goes a
// GETGEN request in a send of its own (the kernel ignores anything after BATCH_END in the same
// datagram). Netlink handles one socket's sends in order, so once GETGEN's acknowledgement is
// in, every answer to the batch is in too, whatever their number: a batch refused as a whole
// (no CAP_NET_ADMIN) has one error instead of one answer per message.
func exchange(c conn, seq *uint32, batch []netlink.Message) error {
	msgs := slices.Clone(batch)
	index := make(map[uint32]int, len(msgs))
	for i := range msgs {
		*seq++
		msgs[i].Header.Sequence = *seq
		index[*seq] = i
	}
	*seq++
	syncSeq := *seq
	sync := netlink.Message{
		Header: netlink.Header{
			Type:     nftMsgType(unix.NFT_MSG_GETGEN),
			Flags:    netlink.Request | netlink.Acknowledge,
			Sequence: syncSeq,
		},
		Data: nfgenmsg(unix.AF_UNSPEC, 0),
	}
	if _, err := c.SendMessages(msgs); err != nil {
		return fmt.Errorf("send nftables batch: %w", err)
	}
	if _, err := c.SendMessages([]netlink.Message{sync}); err != nil {
		return fmt.Errorf("send nftables batch: %w", err)
	}
	if err := c.SetReadDeadline(time.Now().Add(replyTimeout)); err != nil {
		return fmt.Errorf("set netlink read deadline: %w", err)
	}

	errnos := make([]unix.Errno, len(msgs))
	for {
		replies, err := c.Receive()
		if err != nil {
			return fmt.Errorf("receive nftables answer: %w", err)
		}
		for _, m := range replies {
			if m.Header.Type != netlink.Error {
				continue // GETGEN's own answer
			}
			errno, err := replyErrno(m)
			if err != nil {
				return err
			}
			if m.Header.Sequence != syncSeq {
				// Replies of an earlier, timed-out exchange have sequence numbers not in index.
				if i, ok := index[m.Header.Sequence]; ok {
					errnos[i] = errno
				}
				continue
			}
			for i, e := range errnos {
				if e != 0 {
					return &batchError{msg: msgs[i], errno: e}
				}
			}
			if errno != 0 {
				return fmt.Errorf("nftables generation request: %w", errno)
			}
			return nil
		}
	}
}

// replyErrno reads an NLMSG_ERROR: a negative errno, 0 for an acknowledgement.
func replyErrno(m netlink.Message) (unix.Errno, error) {
	if len(m.Data) < 4 {
		return 0, fmt.Errorf("short netlink error message of %d bytes", len(m.Data))
	}
	return unix.Errno(-int32(binary.NativeEndian.Uint32(m.Data))), nil
}

// describe names what a batch message does, for errors.
func describe(m netlink.Message) string {
	attr := func(typ uint16) string {
		if len(m.Data) < 4 {
			return ""
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return ""
		}
		for ad.Next() {
			if ad.Type() == typ {
				return ad.String()
			}
		}
		return ""
	}
	switch m.Header.Type {
	case unix.NFNL_MSG_BATCH_BEGIN, unix.NFNL_MSG_BATCH_END:
		return "batch"
	case nftMsgType(unix.NFT_MSG_NEWTABLE):
		return "add table"
	case nftMsgType(unix.NFT_MSG_DELTABLE):
		return "delete table"
	case nftMsgType(unix.NFT_MSG_NEWCHAIN):
		return fmt.Sprintf("add chain %q", attr(unix.NFTA_CHAIN_NAME))
	case nftMsgType(unix.NFT_MSG_NEWRULE):
		return fmt.Sprintf("add rule to chain %q", attr(unix.NFTA_RULE_CHAIN))
	default:
		return fmt.Sprintf("netlink message type %#x", uint16(m.Header.Type))
	}
}

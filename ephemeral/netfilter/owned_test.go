package netfilter

import (
	"encoding/binary"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nlenc"
	"golang.org/x/sys/unix"
)

// scriptedKernel is a conn that answers like nfnetlink: every message of a batch that asks for an
// acknowledgement gets one reply, an ack or an error, each in a datagram of its own, in order;
// GETGEN gets its generation message and an ack.
type scriptedKernel struct {
	// answer returns the errno for one message of a batch; nil accepts everything.
	answer func(m netlink.Message) unix.Errno
	// refuse, when set, refuses whole batches with one error on BATCH_BEGIN, as nfnetlink does
	// for a sender without CAP_NET_ADMIN.
	refuse unix.Errno
	// early is queued before any reply, like leftovers of an earlier exchange.
	early []netlink.Message
	// silent kernels never answer.
	silent bool

	batches [][]netlink.Message // everything sent, one entry per send, GETGEN included
	queue   []netlink.Message
	closed  int
}

func (k *scriptedKernel) SendMessages(msgs []netlink.Message) ([]netlink.Message, error) {
	if k.closed > 0 {
		return nil, errors.New("use of closed socket")
	}
	k.batches = append(k.batches, slices.Clone(msgs))
	if k.silent {
		return msgs, nil
	}
	k.queue = append(k.queue, k.early...)
	k.early = nil
	for _, m := range msgs {
		switch {
		case m.Header.Type == nftMsgType(unix.NFT_MSG_GETGEN):
			k.queue = append(k.queue,
				netlink.Message{Header: netlink.Header{Type: nftMsgType(unix.NFT_MSG_NEWGEN), Sequence: m.Header.Sequence}, Data: make([]byte, 12)},
				ackOf(m, 0))
		case m.Header.Type == unix.NFNL_MSG_BATCH_BEGIN && k.refuse != 0:
			k.queue = append(k.queue, ackOf(m, k.refuse))
			return msgs, nil
		case m.Header.Flags&netlink.Acknowledge != 0:
			var errno unix.Errno
			if k.answer != nil {
				errno = k.answer(m)
			}
			k.queue = append(k.queue, ackOf(m, errno))
		}
	}
	return msgs, nil
}

func (k *scriptedKernel) Receive() ([]netlink.Message, error) {
	if len(k.queue) == 0 {
		// What the real socket returns when the read deadline passes.
		return nil, errors.New("i/o timeout")
	}
	m := k.queue[0]
	k.queue = k.queue[1:]
	return []netlink.Message{m}, nil
}

func (k *scriptedKernel) SetReadDeadline(time.Time) error { return nil }

func (k *scriptedKernel) Close() error {
	k.closed++
	return nil
}

func ackOf(m netlink.Message, errno unix.Errno) netlink.Message {
	// With NETLINK_CAP_ACK the error carries the request's header only.
	data := nlenc.Int32Bytes(-int32(errno))
	data = append(data, nlenc.Uint32Bytes(m.Header.Length)...)
	data = append(data, nlenc.Uint16Bytes(uint16(m.Header.Type))...)
	data = append(data, nlenc.Uint16Bytes(uint16(m.Header.Flags))...)
	data = append(data, nlenc.Uint32Bytes(m.Header.Sequence)...)
	data = append(data, nlenc.Uint32Bytes(m.Header.PID)...)
	return netlink.Message{Header: netlink.Header{Type: netlink.Error, Sequence: m.Header.Sequence}, Data: data}
}

// ownerUnsupported answers like a kernel before 5.12: the owner flag is refused on the table, and
// everything after it fails because the table does not exist.
func ownerUnsupported(errno unix.Errno) func(m netlink.Message) unix.Errno {
	failed := false
	return func(m netlink.Message) unix.Errno {
		if m.Header.Type == nftMsgType(unix.NFT_MSG_NEWTABLE) {
			failed = tableFlags(m)&tableFlagOwner != 0
			if failed {
				return errno
			}
			return 0
		}
		if failed {
			return unix.ENOENT
		}
		return 0
	}
}

func tableFlags(m netlink.Message) uint32 {
	ad, err := netlink.NewAttributeDecoder(m.Data[4:])
	if err != nil {
		return 0
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		if ad.Type() == unix.NFTA_TABLE_FLAGS {
			return ad.Uint32()
		}
	}
	return 0
}

var testRedirect = Redirect{Ports: []uint16{80}, ListenPort: 15001, Mark: 0x7f1a0000}

// sentSummary reduces what was sent to the message types and table flags, one string per send.
func sentSummary(k *scriptedKernel) []string {
	var out []string
	for _, b := range k.batches {
		var parts []string
		for _, m := range b {
			s := describe(m)
			if m.Header.Type == nftMsgType(unix.NFT_MSG_NEWTABLE) {
				s += map[bool]string{true: " owner", false: ""}[tableFlags(m)&tableFlagOwner != 0]
			}
			if m.Header.Type == nftMsgType(unix.NFT_MSG_GETGEN) {
				s = "getgen"
			}
			parts = append(parts, s)
		}
		out = append(out, strings.Join(slices.Compact(parts), ", "))
	}
	return out
}

// openRecorded is open as Open calls it on a kernel test's behalf, with the listener step recorded.
func openRecorded(k *scriptedKernel, opts Options, transparentErr error) (*Owned, int, error) {
	calls := 0
	o, err := open(k, "abc", testRedirect, opts, func() error { calls++; return transparentErr })
	return o, calls, err
}

func TestOpen(t *testing.T) {
	create := func(owner string) string {
		return "batch, add table" + owner + `, add chain "prerouting", add chain "output", add chain "input", ` +
			`add rule to chain "prerouting", add rule to chain "output", add rule to chain "input", batch`
	}
	tproxy := `batch, add table, add chain "prerouting", add chain "input", add rule to chain "prerouting", add rule to chain "input", batch`
	allow := Options{AllowUnowned: true}
	tests := []struct {
		name            string
		k               *scriptedKernel
		opts            Options
		transparentErr  error
		wantOwned       bool
		wantTransparent int
		wantSent        []string
		wantErr         string
		wantErrno       unix.Errno
		wantIs          error
	}{
		{
			name:      "owner flag accepted",
			k:         &scriptedKernel{},
			wantOwned: true,
			wantSent:  []string{create(" owner"), "getgen"},
		},
		{
			name:            "owner flag refused with EOPNOTSUPP, unowned allowed: the tproxy table",
			k:               &scriptedKernel{answer: ownerUnsupported(unix.EOPNOTSUPP)},
			opts:            allow,
			wantTransparent: 1,
			wantSent:        []string{create(" owner"), "getgen", tproxy, "getgen"},
		},
		{
			name:            "owner flag refused with EINVAL, unowned allowed",
			k:               &scriptedKernel{answer: ownerUnsupported(unix.EINVAL)},
			opts:            allow,
			wantTransparent: 1,
			wantSent:        []string{create(" owner"), "getgen", tproxy, "getgen"},
		},
		{
			name:     "owner flag refused, unowned not allowed: refused after the one refused batch",
			k:        &scriptedKernel{answer: ownerUnsupported(unix.EOPNOTSUPP)},
			wantSent: []string{create(" owner"), "getgen"},
			wantErr:  "no nftables table owner flag",
			wantIs:   ErrOwnerUnsupported,
		},
		{
			name:            "forced unowned: the tproxy table straight away",
			k:               &scriptedKernel{},
			opts:            Options{ForceUnowned: true, AllowUnowned: true},
			wantTransparent: 1,
			wantSent:        []string{tproxy, "getgen"},
		},
		{
			name:    "forced unowned, not allowed: nothing sent",
			k:       &scriptedKernel{},
			opts:    Options{ForceUnowned: true},
			wantErr: "no nftables table owner flag",
			wantIs:  ErrOwnerUnsupported,
		},
		{
			name:            "listener cannot be made transparent: no unowned table",
			k:               &scriptedKernel{answer: ownerUnsupported(unix.EOPNOTSUPP)},
			opts:            allow,
			transparentErr:  unix.EPERM,
			wantTransparent: 1,
			wantSent:        []string{create(" owner"), "getgen"},
			wantErrno:       unix.EPERM,
			wantErr:         "operation not permitted",
		},
		{
			name: "table exists: no fallback, it is somebody else's",
			k: &scriptedKernel{answer: func(m netlink.Message) unix.Errno {
				if m.Header.Type == nftMsgType(unix.NFT_MSG_NEWTABLE) {
					return unix.EEXIST
				}
				return 0
			}},
			wantSent:  []string{create(" owner"), "getgen"},
			wantErr:   `create nftables table inet "trafficlab_abc": add table: file exists`,
			wantErrno: unix.EEXIST,
		},
		{
			name: "rule refused: first error reported, no fallback",
			k: &scriptedKernel{answer: func(m netlink.Message) unix.Errno {
				if describe(m) == `add rule to chain "output"` {
					return unix.EOPNOTSUPP
				}
				return 0
			}},
			wantSent:  []string{create(" owner"), "getgen"},
			wantErr:   `create nftables table inet "trafficlab_abc": add rule to chain "output": operation not supported`,
			wantErrno: unix.EOPNOTSUPP,
		},
		{
			name:      "whole batch refused",
			k:         &scriptedKernel{refuse: unix.EPERM},
			wantSent:  []string{create(" owner"), "getgen"},
			wantErr:   `create nftables table inet "trafficlab_abc": batch: operation not permitted`,
			wantErrno: unix.EPERM,
		},
		{
			name: "fallback refused too",
			k: &scriptedKernel{answer: func(m netlink.Message) unix.Errno {
				if m.Header.Type == nftMsgType(unix.NFT_MSG_NEWTABLE) {
					return unix.EINVAL
				}
				return unix.ENOENT
			}},
			opts:            allow,
			wantTransparent: 1,
			wantSent:        []string{create(" owner"), "getgen", tproxy, "getgen"},
			wantErr:         `create nftables table inet "trafficlab_abc": add table: invalid argument`,
			wantErrno:       unix.EINVAL,
		},
		{
			name: "replies of an earlier exchange are ignored",
			k: &scriptedKernel{early: []netlink.Message{
				ackOf(netlink.Message{Header: netlink.Header{Sequence: 999}}, unix.EEXIST),
			}},
			wantOwned: true,
			wantSent:  []string{create(" owner"), "getgen"},
		},
		{
			name:     "no answer",
			k:        &scriptedKernel{silent: true},
			wantSent: []string{create(" owner"), "getgen"},
			wantErr:  `create nftables table inet "trafficlab_abc": receive nftables answer: i/o timeout`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, transparent, err := openRecorded(tt.k, tt.opts, tt.transparentErr)
			if diff := cmp.Diff(tt.wantSent, sentSummary(tt.k)); diff != "" {
				t.Errorf("sent (-want +got):\n%s", diff)
			}
			if transparent != tt.wantTransparent {
				t.Errorf("listener made transparent %d times, want %d", transparent, tt.wantTransparent)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("open = %v, want %v", err, tt.wantIs)
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("open = %v, want error containing %q", err, tt.wantErr)
				}
				if tt.wantErrno != 0 && !errors.Is(err, tt.wantErrno) {
					t.Errorf("open error %v does not wrap %v", err, tt.wantErrno)
				}
				return
			}
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			if o.KernelOwned() != tt.wantOwned {
				t.Errorf("KernelOwned() = %v, want %v", o.KernelOwned(), tt.wantOwned)
			}
			if o.Table() != "trafficlab_abc" {
				t.Errorf("Table() = %q", o.Table())
			}
		})
	}
}

// TestExchangeSequences checks that every message of a batch and the GETGEN after it carry their
// own sequence number, increasing across exchanges on one socket.
func TestExchangeSequences(t *testing.T) {
	k := &scriptedKernel{}
	o, _, err := openRecorded(k, Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	var seqs []uint32
	for _, b := range k.batches {
		for _, m := range b {
			seqs = append(seqs, m.Header.Sequence)
		}
	}
	for i := range seqs {
		if seqs[i] != uint32(i+1) {
			t.Fatalf("sequence numbers %v, want 1, 2, 3, ...", seqs)
		}
	}
}

func TestClose(t *testing.T) {
	deleteSent := []string{"batch, delete table, batch", "getgen"}
	tests := []struct {
		name    string
		errno   unix.Errno
		wantErr string
	}{
		{name: "deletes the table"},
		{name: "table already gone", errno: unix.ENOENT},
		{name: "delete refused", errno: unix.EPERM, wantErr: `delete nftables table inet "trafficlab_abc": delete table: operation not permitted`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := &scriptedKernel{}
			o, _, err := openRecorded(k, Options{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			k.batches = nil
			k.answer = func(m netlink.Message) unix.Errno {
				if m.Header.Type == nftMsgType(unix.NFT_MSG_DELTABLE) {
					return tt.errno
				}
				return 0
			}
			err = o.Close()
			if tt.wantErr == "" && err != nil {
				t.Fatalf("Close: %v", err)
			}
			if tt.wantErr != "" && (err == nil || err.Error() != tt.wantErr) {
				t.Fatalf("Close = %v, want %q", err, tt.wantErr)
			}
			if diff := cmp.Diff(deleteSent, sentSummary(k)); diff != "" {
				t.Errorf("sent (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(deleteBatch("trafficlab_abc")[1].Data, k.batches[0][1].Data); diff != "" {
				t.Errorf("DELTABLE (-want +got):\n%s", diff)
			}
			// The socket is closed even when the delete failed: for an owned table that is the
			// delete.
			if k.closed != 1 {
				t.Errorf("socket closed %d times, want 1", k.closed)
			}
			if err := o.Close(); err != nil {
				t.Errorf("second Close: %v", err)
			}
			if k.closed != 1 || len(k.batches) != 2 {
				t.Errorf("second Close sent %d sends, closed %d times; want nothing", len(k.batches)-2, k.closed-1)
			}
		})
	}
}

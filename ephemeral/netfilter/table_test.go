package netfilter

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nlenc"
	"golang.org/x/sys/unix"
)

func TestTableName(t *testing.T) {
	tests := []struct {
		id      string
		want    string
		wantErr string
	}{
		{id: "abc", want: "trafficlab_abc"},
		{id: "0", want: "trafficlab_0"},
		{id: "0123456789abcdef", want: "trafficlab_0123456789abcdef"},
		{id: "", wantErr: "must not be empty"},
		{id: "0123456789abcdefg", wantErr: "longer than 16"},
		{id: "ABC", wantErr: "only a-z and 0-9"},
		{id: "a-b", wantErr: "only a-z and 0-9"},
		{id: "a_b", wantErr: "only a-z and 0-9"},
		{id: "ä", wantErr: "only a-z and 0-9"},
		{id: "a b", wantErr: "only a-z and 0-9"},
	}
	for _, tt := range tests {
		got, err := TableName(tt.id)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("TableName(%q) = %q, %v; want error containing %q", tt.id, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("TableName(%q) = %q, %v; want %q", tt.id, got, err, tt.want)
		}
		if id, ok := sessionID(got); !ok || id != tt.id {
			t.Errorf("sessionID(%q) = %q, %v; want %q, true", got, id, ok, tt.id)
		}
	}
}

// fakeKernel answers netlink requests the way nf_tables does, for the few message types this
// package sends, and records every request.
type fakeKernel struct {
	tables  []*nftables.Table // what a table dump returns
	missing map[string]bool   // table names whose deletion fails with ENOENT
	sent    []netlink.Message
}

func (k *fakeKernel) conn(t *testing.T) *nftables.Conn {
	t.Helper()
	c, err := nftables.New(nftables.WithTestDial(k.answer))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (k *fakeKernel) answer(req []netlink.Message) ([]netlink.Message, error) {
	k.sent = append(k.sent, req...)
	var replies []netlink.Message
	for _, m := range req {
		switch {
		case m.Header.Type == msgType(unix.NFT_MSG_GETTABLE) && m.Header.Flags&netlink.Dump != 0:
			return k.dump(m), nil
		case m.Header.Flags&netlink.Acknowledge == 0:
		case m.Header.Type == msgType(unix.NFT_MSG_DELTABLE) && k.missing[tableNameOf(m)]:
			replies = append(replies, errorReply(m, unix.ENOENT))
		default:
			replies = append(replies, errorReply(m, 0))
		}
	}
	return replies, nil
}

func (k *fakeKernel) dump(req netlink.Message) []netlink.Message {
	var replies []netlink.Message
	for _, t := range k.tables {
		ae := netlink.NewAttributeEncoder()
		ae.String(unix.NFTA_TABLE_NAME, t.Name)
		ae.Uint32(unix.NFTA_TABLE_FLAGS, 0)
		ae.Uint32(unix.NFTA_TABLE_USE, 0)
		attrs, err := ae.Encode()
		if err != nil {
			panic(err)
		}
		replies = append(replies, netlink.Message{
			Header: netlink.Header{Type: msgType(unix.NFT_MSG_NEWTABLE), Flags: netlink.Multi, Sequence: req.Header.Sequence},
			Data:   append([]byte{byte(t.Family), unix.NFNETLINK_V0, 0, 0}, attrs...),
		})
	}
	return append(replies, netlink.Message{
		Header: netlink.Header{Type: netlink.Done, Flags: netlink.Multi, Sequence: req.Header.Sequence},
		Data:   []byte{0, 0, 0, 0},
	})
}

func msgType(nftMsg int) netlink.HeaderType {
	return netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | nftMsg)
}

// errorReply is an NLMSG_ERROR; errno 0 is a plain acknowledgement.
func errorReply(req netlink.Message, errno unix.Errno) netlink.Message {
	return netlink.Message{
		Header: netlink.Header{Type: netlink.Error, Sequence: req.Header.Sequence, PID: req.Header.PID},
		Data:   nlenc.Int32Bytes(-int32(errno)),
	}
}

func tableNameOf(m netlink.Message) string {
	ad, err := netlink.NewAttributeDecoder(m.Data[4:])
	if err != nil {
		return ""
	}
	for ad.Next() {
		if ad.Type() == unix.NFTA_TABLE_NAME {
			return ad.String()
		}
	}
	return ""
}

// message is the comparable part of a netlink message. Data is split into 32-bit words, the
// layout `nft --debug=netlink` prints, so a diff points at the attribute that differs.
type message struct {
	Type  netlink.HeaderType
	Flags netlink.HeaderFlags
	Data  []string
}

func messages(msgs []netlink.Message) []message {
	var out []message
	for _, m := range msgs {
		out = append(out, message{Type: m.Header.Type, Flags: m.Header.Flags, Data: words(m.Data)})
	}
	return out
}

func words(b []byte) []string {
	var out []string
	for len(b) > 0 {
		n := min(4, len(b))
		out = append(out, fmt.Sprintf("% x", b[:n]))
		b = b[n:]
	}
	return out
}

func concat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// Golden messages. The nfgenmsg header is family, version, resource id (big endian); the batch
// markers carry the nftables subsystem (10) as resource id.
var (
	batchBegin = message{Type: unix.NFNL_MSG_BATCH_BEGIN, Flags: netlink.Request, Data: words([]byte{0, 0, 0, 10})}
	batchEnd   = message{Type: unix.NFNL_MSG_BATCH_END, Flags: netlink.Request, Data: words([]byte{0, 0, 0, 10})}
)

// tableMsg is NEWTABLE or DELTABLE for inet trafficlab_abc:
//
//	nfgenmsg  family inet (1), NFNETLINK_V0, res_id 0
//	NFTA_TABLE_NAME   "trafficlab_abc\0" (len 19, padded to 20)
//	NFTA_TABLE_FLAGS  0
func tableMsg(typ int, flags netlink.HeaderFlags) message {
	return message{Type: msgType(typ), Flags: flags, Data: words(concat(
		[]byte{unix.NFPROTO_INET, 0, 0, 0},
		[]byte{19, 0, unix.NFTA_TABLE_NAME, 0}, []byte("trafficlab_abc\x00"), []byte{0},
		[]byte{8, 0, unix.NFTA_TABLE_FLAGS, 0}, []byte{0, 0, 0, 0},
	))}
}

func TestEnsureGolden(t *testing.T) {
	k := &fakeKernel{}
	if err := Ensure(k.conn(t), "abc"); err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	want := []message{
		batchBegin,
		// nft add table inet trafficlab_abc: NLM_F_CREATE without NLM_F_EXCL, so an existing
		// table is kept instead of failing with EEXIST.
		tableMsg(unix.NFT_MSG_NEWTABLE, netlink.Request|netlink.Acknowledge|netlink.Create),
		batchEnd,
	}
	if diff := cmp.Diff(want, messages(k.sent)); diff != "" {
		t.Errorf("netlink messages (-want +got):\n%s", diff)
	}
}

func TestDeleteGolden(t *testing.T) {
	for _, missing := range []bool{false, true} {
		t.Run(fmt.Sprintf("missing=%v", missing), func(t *testing.T) {
			k := &fakeKernel{missing: map[string]bool{"trafficlab_abc": missing}}
			if err := Delete(k.conn(t), "abc"); err != nil {
				t.Fatalf("Delete: %v", err)
			}
			want := []message{
				batchBegin,
				// nft delete table inet trafficlab_abc
				tableMsg(unix.NFT_MSG_DELTABLE, netlink.Request|netlink.Acknowledge),
				batchEnd,
			}
			if diff := cmp.Diff(want, messages(k.sent)); diff != "" {
				t.Errorf("netlink messages (-want +got):\n%s", diff)
			}
		})
	}
}

func TestInvalidIDSendsNothing(t *testing.T) {
	k := &fakeKernel{}
	c := k.conn(t)
	for name, f := range map[string]func() error{
		"Ensure": func() error { return Ensure(c, "Bad") },
		"Delete": func() error { return Delete(c, "Bad") },
	} {
		if err := f(); err == nil {
			t.Errorf("%s(%q) succeeded", name, "Bad")
		}
	}
	if len(k.sent) != 0 {
		t.Errorf("sent %d messages for an invalid id", len(k.sent))
	}
}

// recordingConn is a Conn that logs calls, to check Sweep's choices without netlink.
type recordingConn struct {
	tables  []*nftables.Table
	listErr error
	failDel map[string]error
	pending []string
	calls   []string
}

func (c *recordingConn) AddTable(t *nftables.Table) *nftables.Table {
	c.pending = append(c.pending, "add "+t.Name)
	return t
}

func (c *recordingConn) DelTable(t *nftables.Table) {
	c.pending = append(c.pending, fmt.Sprintf("delete %d %s", t.Family, t.Name))
}

func (c *recordingConn) ListTables() ([]*nftables.Table, error) {
	c.calls = append(c.calls, "list")
	return c.tables, c.listErr
}

func (c *recordingConn) Flush() error {
	c.calls = append(c.calls, "flush["+strings.Join(c.pending, ", ")+"]")
	var err error
	for _, p := range c.pending {
		for name, e := range c.failDel {
			if strings.HasSuffix(p, " "+name) {
				err = e
			}
		}
	}
	c.pending = nil
	return err
}

func TestSweep(t *testing.T) {
	inet := func(name string) *nftables.Table {
		return &nftables.Table{Name: name, Family: nftables.TableFamilyINet}
	}
	tables := []*nftables.Table{
		inet("app"),
		inet("trafficlab_live"),
		inet("trafficlab_dead1"),
		inet("trafficlab_Dead"),  // not a name TableName makes: foreign
		inet("trafficlab_"),      // likewise
		inet("xtrafficlab_dead"), // likewise
		inet("trafficlab_dead2"),
		{Name: "trafficlab_owned", Family: nftables.TableFamilyINet, Flags: tableFlagOwner}, // a live session's
		{Name: "trafficlab_dead3", Family: nftables.TableFamilyIPv4},                        // any family
		{Name: "trafficlab_live", Family: nftables.TableFamilyIPv6},
	}
	keep := func(name string) bool { return name == "trafficlab_live" }

	tests := []struct {
		name        string
		conn        *recordingConn
		wantDeleted []string
		wantCalls   []string
		wantErr     string
	}{
		{
			name:        "deletes dead sessions only, one batch each",
			conn:        &recordingConn{tables: tables},
			wantDeleted: []string{"inet trafficlab_dead1", "inet trafficlab_dead2", "ip trafficlab_dead3"},
			wantCalls: []string{
				"list",
				"flush[delete 1 trafficlab_dead1]",
				"flush[delete 1 trafficlab_dead2]",
				"flush[delete 2 trafficlab_dead3]",
			},
		},
		{
			name:        "table gone meanwhile counts as deleted",
			conn:        &recordingConn{tables: tables, failDel: map[string]error{"trafficlab_dead1": fmt.Errorf("conn.Receive: %w", unix.ENOENT)}},
			wantDeleted: []string{"inet trafficlab_dead1", "inet trafficlab_dead2", "ip trafficlab_dead3"},
			wantCalls: []string{
				"list",
				"flush[delete 1 trafficlab_dead1]",
				"flush[delete 1 trafficlab_dead2]",
				"flush[delete 2 trafficlab_dead3]",
			},
		},
		{
			name:        "one failure does not stop the rest",
			conn:        &recordingConn{tables: tables, failDel: map[string]error{"trafficlab_dead1": unix.EPERM}},
			wantDeleted: []string{"inet trafficlab_dead2", "ip trafficlab_dead3"},
			wantCalls: []string{
				"list",
				"flush[delete 1 trafficlab_dead1]",
				"flush[delete 1 trafficlab_dead2]",
				"flush[delete 2 trafficlab_dead3]",
			},
			wantErr: `delete nftables table inet "trafficlab_dead1": operation not permitted`,
		},
		{
			name:      "list failure",
			conn:      &recordingConn{listErr: unix.EPERM},
			wantCalls: []string{"list"},
			wantErr:   "list nftables tables: operation not permitted",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			deleted, err := Sweep(tt.conn, keep)
			if diff := cmp.Diff(tt.wantDeleted, deleted); diff != "" {
				t.Errorf("deleted (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantCalls, tt.conn.calls); diff != "" {
				t.Errorf("calls (-want +got):\n%s", diff)
			}
			gotErr := ""
			if err != nil {
				gotErr = err.Error()
			}
			if gotErr != tt.wantErr {
				t.Errorf("error = %q, want %q", gotErr, tt.wantErr)
			}
		})
	}
}

// TestSweepGolden runs Sweep over the real nftables.Conn against the fake kernel, to pin the
// dump request and the delete batches on the wire.
func TestSweepGolden(t *testing.T) {
	k := &fakeKernel{
		tables: []*nftables.Table{
			{Name: "app", Family: nftables.TableFamilyINet},
			{Name: "trafficlab_abc", Family: nftables.TableFamilyINet},
			{Name: "trafficlab_live", Family: nftables.TableFamilyINet},
		},
		missing: map[string]bool{"trafficlab_abc": true}, // another agent's sweep won the race
	}
	deleted, err := Sweep(k.conn(t), func(name string) bool { return name == "trafficlab_live" })
	if err != nil {
		t.Fatalf("Sweep: %v", err)
	}
	if diff := cmp.Diff([]string{"inet trafficlab_abc"}, deleted); diff != "" {
		t.Errorf("deleted (-want +got):\n%s", diff)
	}
	want := []message{
		// nft list tables: a dump of every family, no name attribute
		{Type: msgType(unix.NFT_MSG_GETTABLE), Flags: netlink.Request | netlink.Dump, Data: words([]byte{unix.NFPROTO_UNSPEC, 0, 0, 0})},
		batchBegin,
		tableMsg(unix.NFT_MSG_DELTABLE, netlink.Request|netlink.Acknowledge),
		batchEnd,
	}
	if diff := cmp.Diff(want, messages(k.sent)); diff != "" {
		t.Errorf("netlink messages (-want +got):\n%s", diff)
	}
}

func TestDeleteReportsOtherErrors(t *testing.T) {
	c := &recordingConn{failDel: map[string]error{"trafficlab_abc": unix.EPERM}}
	err := Delete(c, "abc")
	if !errors.Is(err, unix.EPERM) {
		t.Errorf("Delete = %v, want EPERM wrapped", err)
	}
}

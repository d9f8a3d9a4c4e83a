package meshrules

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nltest"
	"golang.org/x/sys/unix"
)

// google/nftables drops the expressions it has no type for (tproxy among them) and the source
// register of `ct ... set`, so the rules it returns can look broader than they are: a rule whose
// only condition it cannot decode would seem unconditional. The rules are therefore decoded here
// from the kernel's own replies, which a tap between the library and the netlink socket sees
// (nftables.WithTestDial is the library's hook for handing it a connection), with the library
// doing the requests and decoding each known expression's attributes.

const (
	nfnlSubsysNftables = 10
	// nft_rule's NEWRULE message, the reply to GETRULE dumps.
	newRuleType = nfnlSubsysNftables<<8 | unix.NFT_MSG_NEWRULE
)

// ruleKey names a rule across the library's Rule and the raw reply.
type ruleKey struct {
	Family       byte
	Table, Chain string
	Handle       uint64
}

// rawExpr is one expression of a rule as the kernel sent it: its name and its attributes.
type rawExpr struct {
	Name string
	Data []byte
}

// ruleIndex keeps the raw expressions of every rule a dump returned.
type ruleIndex struct {
	mu    sync.Mutex
	rules map[ruleKey][]rawExpr
	err   error
}

// wrap taps next's replies, indexing the rules among them.
func (x *ruleIndex) wrap(next nltest.Func) nltest.Func {
	return func(req []netlink.Message) ([]netlink.Message, error) {
		replies, err := next(req)
		x.mu.Lock()
		defer x.mu.Unlock()
		for _, m := range replies {
			if m.Header.Type != newRuleType {
				continue
			}
			k, exprs, perr := parseRuleMsg(m.Data)
			if perr != nil {
				x.err = errors.Join(x.err, perr)
				continue
			}
			if x.rules == nil {
				x.rules = map[ruleKey][]rawExpr{}
			}
			x.rules[k] = exprs
		}
		return replies, err
	}
}

func (x *ruleIndex) get(k ruleKey) ([]rawExpr, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.err != nil {
		return nil, x.err
	}
	exprs, ok := x.rules[k]
	if !ok {
		return nil, fmt.Errorf("rule %d of chain %s: not in the kernel's replies", k.Handle, k.Chain)
	}
	return exprs, nil
}

// parseRuleMsg reads a NEWRULE message: struct nfgenmsg (family, version, res_id), then
// NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_HANDLE and NFTA_RULE_EXPRESSIONS, a list of
// NFTA_LIST_ELEM each holding NFTA_EXPR_NAME and NFTA_EXPR_DATA.
func parseRuleMsg(data []byte) (ruleKey, []rawExpr, error) {
	var k ruleKey
	if len(data) < 4 {
		return k, nil, fmt.Errorf("nftables rule message of %d bytes", len(data))
	}
	k.Family = data[0]
	ad, err := netlink.NewAttributeDecoder(data[4:])
	if err != nil {
		return k, nil, fmt.Errorf("nftables rule message: %w", err)
	}
	ad.ByteOrder = binary.BigEndian
	var exprs []rawExpr
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_RULE_TABLE:
			k.Table = ad.String()
		case unix.NFTA_RULE_CHAIN:
			k.Chain = ad.String()
		case unix.NFTA_RULE_HANDLE:
			k.Handle = ad.Uint64()
		case unix.NFTA_RULE_EXPRESSIONS:
			ad.Nested(func(list *netlink.AttributeDecoder) error {
				for list.Next() {
					if list.Type() != unix.NFTA_LIST_ELEM {
						continue
					}
					var e rawExpr
					list.Nested(func(el *netlink.AttributeDecoder) error {
						for el.Next() {
							switch el.Type() {
							case unix.NFTA_EXPR_NAME:
								e.Name = el.String()
							case unix.NFTA_EXPR_DATA:
								e.Data = el.Bytes()
							}
						}
						return el.Err()
					})
					if e.Name == "" {
						return errors.New("an expression without a name")
					}
					exprs = append(exprs, e)
				}
				return list.Err()
			})
		}
	}
	if err := ad.Err(); err != nil {
		return k, nil, fmt.Errorf("nftables rule message: %w", err)
	}
	return k, exprs, nil
}

// forward sends the library's requests on a real netlink socket.
func forward(sock *netlink.Conn) nltest.Func {
	return func(req []netlink.Message) ([]netlink.Message, error) {
		if len(req) == 0 {
			return nil, io.EOF // nltest polls for multicast messages after an empty reply: none
		}
		var all []netlink.Message
		for _, m := range req {
			// The real socket numbers its own messages; the library's conn checks the replies
			// against the numbers it gave.
			seq, pid := m.Header.Sequence, m.Header.PID
			m.Header.Sequence, m.Header.PID = 0, 0
			replies, err := sock.Execute(m)
			if err != nil {
				return nil, err
			}
			if n := len(replies); n > 0 && replies[n-1].Header.Flags&netlink.Multi != 0 {
				// Execute drops a dump's closing message, which the library's reader waits for.
				replies = append(replies, netlink.Message{Header: netlink.Header{Length: 16, Type: netlink.Done, Flags: netlink.Multi}})
			}
			for i := range replies {
				replies[i].Header.Sequence, replies[i].Header.PID = seq, pid
			}
			all = append(all, replies...)
		}
		return all, nil
	}
}

package meshrules

import (
	"fmt"
	"net/netip"
	"strings"
)

// The forms rules come in (Table.Source, Inbound.Source).
const (
	// SourceLegacy is iptables-legacy: x_tables in the kernel, read with getsockopt as iptables
	// does. nftables netlink cannot see it.
	SourceLegacy = "iptables-legacy"
	// SourceIptablesNft is iptables-nft: nftables tables named like iptables' (`ip nat`,
	// `ip6 mangle`), with xt compat expressions for the matches and targets it does not
	// translate.
	SourceIptablesNft = "iptables-nft"
	// SourceNftables is any other nftables table, such as Istio's native `inet istio-proxy-nat`.
	SourceNftables = "nftables"
)

// Family is a table's address family.
type Family uint8

// The families read. FamilyINet tables see both IPv4 and IPv6.
const (
	FamilyIPv4 Family = iota + 1
	FamilyIPv6
	FamilyINet
)

func (f Family) String() string {
	switch f {
	case FamilyIPv4:
		return "ip"
	case FamilyIPv6:
		return "ip6"
	case FamilyINet:
		return "inet"
	}
	return fmt.Sprintf("family(%d)", uint8(f))
}

// Hook is a netfilter hook.
type Hook uint8

// The hooks. A user chain (one only jumped to) has HookNone.
const (
	HookNone Hook = iota
	HookPrerouting
	HookInput
	HookForward
	HookOutput
	HookPostrouting
)

func (h Hook) String() string {
	return [...]string{"none", "prerouting", "input", "forward", "output", "postrouting"}[min(int(h), 5)]
}

// Table is one table of rules in one form.
type Table struct {
	Source string
	Family Family
	Name   string
	Chains []*Chain
}

// String names the table as a user would look for it: "iptables-legacy nat (ip6)",
// "nftables inet istio-proxy-nat".
func (t *Table) String() string {
	if t.Source == SourceNftables {
		return fmt.Sprintf("nftables %s %s", t.Family, t.Name)
	}
	return fmt.Sprintf("%s %s %s", t.Source, t.Family, t.Name)
}

// Chain returns the chain named name, or nil.
func (t *Table) Chain(name string) *Chain {
	for _, c := range t.Chains {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// Chain is a base chain (Hook set) or a user chain, and its rules in order.
type Chain struct {
	Name string
	Hook Hook
	// Type is the base chain's type, "nat", "filter" or "route"; iptables' nat table's chains
	// are "nat", its mangle table's "filter" (and "route" for OUTPUT), as iptables-nft creates
	// them.
	Type     string
	Priority int32
	// PolicyDrop is a base chain whose policy is drop.
	PolicyDrop bool
	Rules      []Rule
}

// Rule is one rule: when every match holds, its actions run in order.
type Rule struct {
	Matches []Match
	Actions []Action
}

// Field is what a Match tests.
type Field uint8

// The fields. FieldUnknown is a match this package cannot evaluate; Match.What names it.
const (
	FieldUnknown  Field = iota
	FieldNFProto        // the packet's family (inet tables): Match.Family
	FieldL4Proto        // Match.Proto
	FieldSrc            // Match.Prefix
	FieldDst            // Match.Prefix
	FieldInIface        // Match.Iface, Match.IfacePrefix
	FieldOutIface       // Match.Iface, Match.IfacePrefix
	FieldSrcPort        // Match.Ports
	FieldDstPort        // Match.Ports
	FieldUID            // Match.IDs
	FieldGID            // Match.IDs
	FieldMark           // (mark & Match.Mask) == Match.Mark
)

// Match is one condition of a rule.
type Match struct {
	Field  Field
	Invert bool
	// AbsentFails is nftables' semantics for a field the packet does not have (a socket's uid in
	// prerouting, the output interface before routing): the rule does not match, inverted or
	// not. iptables compares an absent interface as "" and an absent owner as no match, which
	// its own inversion flips.
	AbsentFails bool

	Family      Family
	Proto       uint8
	Prefix      netip.Prefix
	Iface       string
	IfacePrefix bool
	Ports       []PortRange
	IDs         IDRange
	Mark, Mask  uint32

	What string
}

// PortRange is an inclusive port range.
type PortRange struct{ From, To uint16 }

// IDRange is an inclusive uid or gid range.
type IDRange struct{ From, To uint32 }

// ActionKind is what an Action does.
type ActionKind uint8

// The actions. ActionRedirect, ActionTPROXY, ActionAccept, ActionDrop, ActionReturn, ActionJump
// and ActionGoto end the rule; ActionSetMark does not. ActionUnknown is one this package cannot
// evaluate; Action.What names it.
const (
	ActionUnknown ActionKind = iota
	ActionAccept
	ActionDrop
	ActionReturn
	ActionJump
	ActionGoto
	// ActionRedirect is REDIRECT (`redirect to :Port`): the connection goes to the local Port, 0
	// for its own.
	ActionRedirect
	// ActionTPROXY is TPROXY (`tproxy to :Port`): the connection goes to a local socket on Port
	// without a destination rewrite.
	ActionTPROXY
	// ActionSetMark sets the packet's mark: mark = (mark &^ Mask) ^ Mark.
	ActionSetMark
)

// Action is what a rule does.
type Action struct {
	Kind       ActionKind
	Chain      string
	Port       uint16
	Mark, Mask uint32
	What       string
}

// String is the action in iptables' words, for messages.
func (a Action) String() string {
	switch a.Kind {
	case ActionAccept:
		return "ACCEPT"
	case ActionDrop:
		return "DROP"
	case ActionReturn:
		return "RETURN"
	case ActionJump:
		return "jump " + a.Chain
	case ActionGoto:
		return "goto " + a.Chain
	case ActionRedirect:
		return fmt.Sprintf("REDIRECT to %d", a.Port)
	case ActionTPROXY:
		return fmt.Sprintf("TPROXY to %d", a.Port)
	case ActionSetMark:
		return fmt.Sprintf("MARK set 0x%x/0x%x", a.Mark, a.Mask)
	}
	return a.What
}

// String is the match in iptables' words, for messages and test failures.
func (m Match) String() string {
	var b strings.Builder
	if m.Invert {
		b.WriteString("! ")
	}
	switch m.Field {
	case FieldNFProto:
		fmt.Fprintf(&b, "nfproto %s", m.Family)
	case FieldL4Proto:
		fmt.Fprintf(&b, "-p %d", m.Proto)
	case FieldSrc:
		fmt.Fprintf(&b, "-s %s", m.Prefix)
	case FieldDst:
		fmt.Fprintf(&b, "-d %s", m.Prefix)
	case FieldInIface, FieldOutIface:
		flag := "-i"
		if m.Field == FieldOutIface {
			flag = "-o"
		}
		plus := ""
		if m.IfacePrefix {
			plus = "+"
		}
		fmt.Fprintf(&b, "%s %s%s", flag, m.Iface, plus)
	case FieldSrcPort, FieldDstPort:
		flag := "--sport"
		if m.Field == FieldDstPort {
			flag = "--dport"
		}
		var ps []string
		for _, p := range m.Ports {
			if p.From == p.To {
				ps = append(ps, fmt.Sprint(p.From))
			} else {
				ps = append(ps, fmt.Sprintf("%d:%d", p.From, p.To))
			}
		}
		fmt.Fprintf(&b, "%s %s", flag, strings.Join(ps, ","))
	case FieldUID, FieldGID:
		flag := "--uid-owner"
		if m.Field == FieldGID {
			flag = "--gid-owner"
		}
		if m.IDs.From == m.IDs.To {
			fmt.Fprintf(&b, "%s %d", flag, m.IDs.From)
		} else {
			fmt.Fprintf(&b, "%s %d-%d", flag, m.IDs.From, m.IDs.To)
		}
	case FieldMark:
		fmt.Fprintf(&b, "--mark 0x%x/0x%x", m.Mark, m.Mask)
	default:
		b.WriteString(m.What)
	}
	return b.String()
}

// String is the rule in iptables' words.
func (r Rule) String() string {
	var parts []string
	for _, m := range r.Matches {
		parts = append(parts, m.String())
	}
	for _, a := range r.Actions {
		parts = append(parts, "-j "+a.String())
	}
	return strings.Join(parts, " ")
}

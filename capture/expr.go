// Filter expressions: why a subset compiler.
//
// `dump` takes a tcpdump-syntax filter (pcap-filter(7)), and the agent must run it in the kernel
// as classic BPF so that the pod's other traffic is never copied out of it. libpcap's compiler
// would need cgo, which the agent, a static libc-free binary built for several architectures,
// cannot have; filtering in user space instead would copy every packet of the pod into the
// agent only to drop most of them. So this file compiles the commonly used part of the syntax
// itself, with libpcap's semantics (the tests run libpcap's own programs, as printed by
// `dumpcap -d`, on the same frames), and refuses everything else with an error rather than
// approximating it. The plugin links the same code, so it can reject a bad filter before it
// touches the cluster.

package capture

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/bpf"
)

// Expr is a parsed filter expression in a subset of tcpdump's syntax (pcap-filter(7)), for
// Ethernet frames carrying IPv4, IPv6, ARP or RARP. Make one with ParseExpr; the zero Expr
// matches nothing.
//
// Primitives:
//
//	[ip|ip6|arp|rarp] [src|dst] host ADDR   IPv4 or IPv6 address; IPv4 also matches ARP and RARP
//	[ip|ip6|arp|rarp] [src|dst] net CIDR    as host, for an address prefix (10.0.0.0/8, fd00::/16)
//	[tcp|udp|sctp] [src|dst] port N         0-65535; without a protocol tcp, udp or sctp
//	[tcp|udp|sctp] [src|dst] portrange A-B
//	[ip|ip6] proto N                        IP protocol number 0-255
//	ip, ip6, arp, rarp, tcp, udp, sctp, icmp, icmp6
//	less N, greater N                       frame length at most / at least N bytes
//
// joined with and (&&), or (||), not (!) and parentheses. Keywords are lowercase, numbers
// decimal. The frame length of less and greater is the one the kernel sees, before the snap
// length cuts the frame (with segmentation offload, that of the merged frame). As in libpcap, ports are only
// matched in the first fragment of an IPv4 datagram and, in IPv6, only when the fixed header's
// next header is TCP, UDP or SCTP itself: extension headers are not walked. The bare protocol
// primitives (tcp, icmp6, ip6 proto N, ...) also look behind one IPv6 fragment header, again as
// libpcap does. A frame too short for a field the program reads is dropped.
//
// Two places where tcpdump's grammar surprises people are errors instead: a value without its
// own qualifiers ("port 80 or 443", which tcpdump reads as "port 80 or port 443"), and "and"
// after "or" at one level of parentheses ("a or b and c", which tcpdump reads as
// "(a or b) and c", not as "a or (b and c)"). Every expression this package accepts therefore
// means the same whether "and" binds tighter than "or" or, as in tcpdump, neither does.
type Expr struct {
	_    [0]func() // not comparable: == on the tree's slices would panic
	root node
	vm   *bpf.VM // the compiled program, for Match; read-only, so copies may share it
}

// ExprError is a syntax error in a filter expression. Its message is one line.
type ExprError struct {
	// Expr is the whole expression as given.
	Expr string
	// Col is the 1-based column, in characters, of the offending token; 0 when the error is
	// not about one token.
	Col int
	// Msg says what is wrong; it quotes the offending token and its column.
	Msg string
}

func (e *ExprError) Error() string { return fmt.Sprintf("filter %q: %s", e.Expr, e.Msg) }

// maxInsns is the kernel's limit on classic BPF programs (BPF_MAXINSNS), less room for the
// loopback prefix that program() puts in front.
const maxInsns = 4096 - 3

// maxDepth bounds the nesting of parentheses and negations, so that the recursive parser's
// stack stays small whatever it is given.
const maxDepth = 100

// ParseExpr parses a filter expression and compiles it once, so that an expression it returns
// always assembles. Syntax errors are *ExprError; an expression too long for the kernel fails
// too.
func ParseExpr(s string) (Expr, error) {
	toks, err := tokenize(s)
	if err != nil {
		return Expr{}, err
	}
	p := &parser{src: s, toks: toks}
	if p.peek().kind == tokEOF {
		return Expr{}, &ExprError{Expr: s, Msg: "empty expression"}
	}
	root, err := p.parseLevel()
	if err != nil {
		return Expr{}, err
	}
	switch t := p.peek(); t.kind {
	case tokEOF:
	case tokRParen:
		return Expr{}, p.errorf(t, "unexpected %q at %d", t.text, p.col(t))
	default:
		return Expr{}, p.unexpected(t, `"and" or "or"`)
	}
	e := Expr{root: root}
	prog, err := compile(root, DefaultSnapLen)
	if err != nil {
		return Expr{}, fmt.Errorf("filter %q: %w", s, err)
	}
	if e.vm, err = bpf.NewVM(prog); err != nil {
		return Expr{}, fmt.Errorf("filter %q: %w", s, err)
	}
	return e, nil
}

// String returns the expression in canonical form: lowercase keywords, canonical addresses,
// "and", "or" and "not" for the symbols, and parentheses exactly where the operator changes.
// ParseExpr accepts it and yields the same program.
func (e Expr) String() string {
	if e.root == nil {
		return ""
	}
	var b strings.Builder
	format(&b, e.root)
	return b.String()
}

// Program returns the expression as classic BPF for Ethernet frames. Matching frames are
// accepted with snapLen, which the kernel uses to cut them; others are dropped.
func (e Expr) Program(snapLen uint32) ([]bpf.Instruction, error) {
	if e.root == nil {
		return nil, errors.New("empty filter expression: use ParseExpr")
	}
	if snapLen == 0 {
		return nil, fmt.Errorf("filter %q: snap length 0 would keep nothing", e)
	}
	prog, err := compile(e.root, snapLen)
	if err != nil {
		return nil, fmt.Errorf("filter %q: %w", e, err)
	}
	return prog, nil
}

// Match reports whether the compiled program accepts the frame, run in x/net/bpf's VM. The
// frame's length stands for the length on the wire (less, greater).
func (e Expr) Match(frame []byte) bool {
	if e.vm == nil {
		return false
	}
	n, err := e.vm.Run(frame)
	return err == nil && n > 0
}

// ---------------------------------------------------------------------------------------------
// Syntax tree.

// node is andExpr, orExpr, notExpr or prim.
type node interface{}

// andExpr and orExpr hold two or more operands, none of them of their own kind: the parser
// flattens chains, so that String is canonical.
type (
	andExpr []node
	orExpr  []node
	notExpr struct{ x node }
)

type protoQual uint8

const (
	pqNone protoQual = iota
	pqIP
	pqIP6
	pqARP
	pqRARP
	pqTCP
	pqUDP
	pqSCTP
	pqICMP
	pqICMP6
)

var protoNames = [...]string{"", "ip", "ip6", "arp", "rarp", "tcp", "udp", "sctp", "icmp", "icmp6"}

func (q protoQual) String() string { return protoNames[q] }

type dirQual uint8

const (
	dirAny dirQual = iota
	dirSrc
	dirDst
)

type primKind uint8

const (
	kindProto     primKind = iota // a protocol alone: "tcp"
	kindHost                      // host ADDR
	kindNet                       // net CIDR
	kindPort                      // port N
	kindPortRange                 // portrange A-B
	kindProtoNum                  // proto N
	kindLess                      // less N
	kindGreater                   // greater N
)

// prim is one primitive. Which fields are set depends on kind.
type prim struct {
	proto protoQual
	dir   dirQual
	kind  primKind
	net   netip.Prefix // host (full length) and net
	lo    uint32       // port, portrange, proto number, less and greater length
	hi    uint32       // portrange
}

// format writes n in canonical form. An operand is parenthesized when it is an and/or of the
// other kind, or any and/or under "not"; chains of one kind are already flat.
func format(b *strings.Builder, n node) {
	operand := func(x node, paren bool) {
		if paren {
			b.WriteByte('(')
			format(b, x)
			b.WriteByte(')')
		} else {
			format(b, x)
		}
	}
	isOr := func(x node) bool { _, ok := x.(orExpr); return ok }
	isAnd := func(x node) bool { _, ok := x.(andExpr); return ok }
	switch n := n.(type) {
	case andExpr:
		for i, x := range n {
			if i > 0 {
				b.WriteString(" and ")
			}
			operand(x, isOr(x))
		}
	case orExpr:
		for i, x := range n {
			if i > 0 {
				b.WriteString(" or ")
			}
			operand(x, isAnd(x))
		}
	case notExpr:
		b.WriteString("not ")
		operand(n.x, isAnd(n.x) || isOr(n.x))
	case prim:
		b.WriteString(n.String())
	}
}

func (p prim) String() string {
	var parts []string
	if p.proto != pqNone {
		parts = append(parts, p.proto.String())
	}
	switch p.dir {
	case dirSrc:
		parts = append(parts, "src")
	case dirDst:
		parts = append(parts, "dst")
	}
	switch p.kind {
	case kindHost:
		parts = append(parts, "host", p.net.Addr().String())
	case kindNet:
		parts = append(parts, "net", p.net.String())
	case kindPort:
		parts = append(parts, "port", strconv.FormatUint(uint64(p.lo), 10))
	case kindPortRange:
		parts = append(parts, "portrange", fmt.Sprintf("%d-%d", p.lo, p.hi))
	case kindProtoNum:
		parts = append(parts, "proto", strconv.FormatUint(uint64(p.lo), 10))
	case kindLess:
		parts = append(parts, "less", strconv.FormatUint(uint64(p.lo), 10))
	case kindGreater:
		parts = append(parts, "greater", strconv.FormatUint(uint64(p.lo), 10))
	}
	return strings.Join(parts, " ")
}

// filterNode is Filter as a primitive: Filter{TCP, 80} means "tcp port 80".
func filterNode(f Filter) node {
	q := pqTCP
	if f.Proto == UDP {
		q = pqUDP
	}
	return prim{proto: q, kind: kindPort, lo: uint32(f.Port), hi: uint32(f.Port)}
}

// ---------------------------------------------------------------------------------------------
// Tokens.

type tokKind uint8

const (
	tokWord tokKind = iota
	tokLParen
	tokRParen
	tokNot // !
	tokAnd // &&
	tokOr  // ||
	tokEOF
)

type token struct {
	kind tokKind
	text string
	pos  int // byte offset in the expression
}

func (t token) is(word string) bool { return t.kind == tokWord && t.text == word }

func isWordByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '.' || c == ':' || c == '/' || c == '-' || c == '_'
}

func tokenize(s string) ([]token, error) {
	var toks []token
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '(':
			toks = append(toks, token{tokLParen, "(", i})
			i++
		case c == ')':
			toks = append(toks, token{tokRParen, ")", i})
			i++
		case c == '!':
			toks = append(toks, token{tokNot, "!", i})
			i++
		case c == '&' && i+1 < len(s) && s[i+1] == '&':
			toks = append(toks, token{tokAnd, "&&", i})
			i += 2
		case c == '|' && i+1 < len(s) && s[i+1] == '|':
			toks = append(toks, token{tokOr, "||", i})
			i += 2
		case isWordByte(c):
			j := i
			for j < len(s) && isWordByte(s[j]) {
				j++
			}
			toks = append(toks, token{tokWord, s[i:j], i})
			i = j
		default:
			r, _ := utf8.DecodeRuneInString(s[i:])
			col := utf8.RuneCountInString(s[:i]) + 1
			msg := fmt.Sprintf("unexpected character %q at %d", string(r), col)
			if strings.ContainsRune("[]&|<>=+*%^~\\", r) {
				// libpcap's arithmetic: tcp[13] & 2 != 0, len <= 100, \tcp
				msg = fmt.Sprintf("unsupported %q at %d: arithmetic, packet data accessors such as tcp[13] and escapes are not in this filter subset", string(r), col)
			}
			return nil, &ExprError{Expr: s, Col: col, Msg: msg}
		}
	}
	return append(toks, token{tokEOF, "", len(s)}), nil
}

// ---------------------------------------------------------------------------------------------
// Parser.

var protoQuals = map[string]protoQual{
	"ip": pqIP, "ip6": pqIP6, "arp": pqARP, "rarp": pqRARP, "tcp": pqTCP, "udp": pqUDP,
	"sctp": pqSCTP, "icmp": pqICMP, "icmp6": pqICMP6,
}

var typeKinds = map[string]primKind{
	"host": kindHost, "net": kindNet, "port": kindPort, "portrange": kindPortRange,
	"proto": kindProtoNum, "less": kindLess, "greater": kindGreater,
}

// unsupported are pcap-filter(7) keywords outside the subset, named as such in errors rather
// than as unknown words.
var unsupported = map[string]bool{
	"ether": true, "vlan": true, "mpls": true, "broadcast": true, "multicast": true,
	"gateway": true, "mask": true, "len": true, "inbound": true, "outbound": true,
	"ifindex": true, "ifname": true, "on": true, "protochain": true, "igmp": true,
	"igrp": true, "pim": true, "vrrp": true, "carp": true, "ah": true, "esp": true,
	"llc": true, "stp": true, "ipx": true, "netbeui": true, "decnet": true, "iso": true,
	"isis": true, "clnp": true, "esis": true, "atalk": true, "aarp": true, "lat": true,
	"sca": true, "moprc": true, "mopdl": true, "geneve": true, "pppoed": true,
	"pppoes": true, "link": true, "ppp": true, "slip": true, "fddi": true, "tr": true,
	"wlan": true, "type": true, "subtype": true, "dir": true, "ra": true, "ta": true,
	"addr1": true, "addr2": true, "addr3": true, "addr4": true, "l1": true, "l2": true,
	"iih": true, "lsp": true, "snp": true, "csnp": true, "psnp": true, "icmptype": true,
	"icmpcode": true, "tcpflags": true, "ip6multicast": true, "ip6broadcast": true,
}

type parser struct {
	src   string
	toks  []token
	i     int
	depth int
	// lastQuals are the qualifiers of the last primitive with a value ("tcp dst port"), for
	// the advice on tcpdump's qualifier carry-over.
	lastQuals string
}

func (p *parser) peek() token { return p.toks[p.i] }

func (p *parser) next() token {
	t := p.toks[p.i]
	if t.kind != tokEOF {
		p.i++
	}
	return t
}

func (p *parser) col(t token) int { return utf8.RuneCountInString(p.src[:t.pos]) + 1 }

func (p *parser) errorf(t token, format string, args ...any) error {
	return &ExprError{Expr: p.src, Col: p.col(t), Msg: fmt.Sprintf(format, args...)}
}

func isAndTok(t token) bool { return t.kind == tokAnd || t.is("and") }
func isOrTok(t token) bool  { return t.kind == tokOr || t.is("or") }
func isNotTok(t token) bool { return t.kind == tokNot || t.is("not") }

// parseLevel parses operands joined by and/or up to a ")" or the end. tcpdump gives "and" and
// "or" the same precedence and groups left to right; an "and" after an "or" is the one case
// where that differs from "and" binding tighter, and is refused.
func (p *parser) parseLevel() (node, error) {
	left, err := p.parseUnary(token{kind: tokEOF})
	if err != nil {
		return nil, err
	}
	var orTok *token
	for {
		op := p.peek()
		isAnd := isAndTok(op)
		if !isAnd && !isOrTok(op) {
			return left, nil
		}
		p.next()
		if isAnd && orTok != nil {
			return nil, p.errorf(op, `ambiguous %q at %d after %q at %d: add parentheses (tcpdump reads "a or b and c" as "(a or b) and c")`,
				op.text, p.col(op), orTok.text, p.col(*orTok))
		}
		if !isAnd {
			orTok = &op
		}
		right, err := p.parseUnary(op)
		if err != nil {
			return nil, err
		}
		if isAnd {
			left = join[andExpr](left, right)
		} else {
			left = join[orExpr](left, right)
		}
	}
}

// join makes an n-ary and/or node, flattening operands of the same kind.
func join[T andExpr | orExpr](xs ...node) node {
	var out T
	for _, x := range xs {
		if same, ok := x.(T); ok {
			out = append(out, same...)
		} else {
			out = append(out, x)
		}
	}
	return out
}

// parseUnary parses a negation, a parenthesized level or a primitive; after is the operator
// before it, for errors.
func (p *parser) parseUnary(after token) (node, error) {
	t := p.peek()
	switch {
	case isNotTok(t) || t.kind == tokLParen:
		p.next()
		if p.depth++; p.depth > maxDepth {
			return nil, p.errorf(t, "%q at %d nests deeper than %d levels", t.text, p.col(t), maxDepth)
		}
		defer func() { p.depth-- }()
		if t.kind != tokLParen {
			x, err := p.parseUnary(t)
			if err != nil {
				return nil, err
			}
			return notExpr{x}, nil
		}
		x, err := p.parseLevel()
		if err != nil {
			return nil, err
		}
		switch c := p.next(); c.kind {
		case tokRParen:
			return x, nil
		case tokEOF:
			return nil, p.errorf(t, `missing ")" for %q at %d`, t.text, p.col(t))
		default:
			return nil, p.unexpected(c, `"and", "or" or ")"`)
		}
	case t.kind == tokEOF:
		if after.kind == tokEOF {
			return nil, p.errorf(t, "missing a primitive at %d", p.col(t))
		}
		return nil, p.errorf(after, "missing a primitive after %q at %d", after.text, p.col(after))
	case t.kind != tokWord || isAndTok(t) || isOrTok(t):
		return nil, p.errorf(t, "expected a primitive, found %q at %d", t.text, p.col(t))
	}
	return p.parsePrimitive()
}

// looksLikeValue tells a value (80, 10.0.0.1, fd00::/8, 80-90) from a misspelt keyword.
func looksLikeValue(s string) bool {
	return s != "" && ('0' <= s[0] && s[0] <= '9' || strings.Contains(s, ":"))
}

// guessType is the type keyword a bare value probably wants.
func guessType(v string) string {
	switch {
	case strings.Contains(v, "/"):
		return "net"
	case strings.Contains(v, "-"):
		return "portrange"
	case strings.ContainsAny(v, ".:"):
		return "host"
	default:
		return "port"
	}
}

// insertAt returns the expression with s inserted before token t, for advice.
func (p *parser) insertAt(t token, s string) string {
	return p.src[:t.pos] + s + " " + p.src[t.pos:]
}

func (p *parser) parsePrimitive() (node, error) {
	var pr prim
	var quals []token // the qualifier tokens given, in order
	first := p.peek()
	if q, ok := protoQuals[first.text]; ok && first.kind == tokWord {
		pr.proto = q
		quals = append(quals, p.next())
	}
	if t := p.peek(); t.is("src") || t.is("dst") {
		pr.dir = dirSrc
		if t.text == "dst" {
			pr.dir = dirDst
		}
		quals = append(quals, p.next())
	}
	t := p.peek()
	if kind, ok := typeKinds[t.text]; ok && t.kind == tokWord {
		p.next()
		pr.kind = kind
		if err := p.parseValue(&pr, quals, t); err != nil {
			return nil, err
		}
		return pr, nil
	}

	// No type keyword.
	if t.kind == tokWord && looksLikeValue(t.text) {
		if len(quals) == 0 && p.lastQuals != "" {
			return nil, p.errorf(t, "value %q at %d needs its own qualifiers (tcpdump's carry-over is not supported): write %q",
				t.text, p.col(t), p.insertAt(t, p.lastQuals))
		}
		return nil, p.errorf(t, "value %q at %d needs a qualifier: write %q", t.text, p.col(t), p.insertAt(t, guessType(t.text)))
	}
	if pr.dir != dirAny {
		d := quals[len(quals)-1]
		if t.kind == tokEOF {
			return nil, p.errorf(d, "missing host, net, port or portrange after %q at %d", d.text, p.col(d))
		}
		return nil, p.errorf(t, "expected host, net, port or portrange after %q, found %q at %d", d.text, t.text, p.col(t))
	}
	if pr.proto != pqNone {
		pr.kind = kindProto
		p.lastQuals = ""
		return pr, nil
	}
	return nil, p.unknown(t)
}

// unexpected is the error for a token after a complete operand where an operator belongs.
func (p *parser) unexpected(t token, want string) error {
	if t.kind == tokWord && (unsupported[t.text] || !isKeyword(t.text) && !looksLikeValue(t.text)) {
		return p.unknown(t)
	}
	return p.errorf(t, "expected %s before %q at %d", want, t.text, p.col(t))
}

func (p *parser) unknown(t token) error {
	switch {
	case unsupported[t.text]:
		return p.errorf(t, "%q at %d is a tcpdump keyword this filter subset does not support", t.text, p.col(t))
	case isKeyword(strings.ToLower(t.text)):
		return p.errorf(t, "unknown word %q at %d (keywords are lowercase)", t.text, p.col(t))
	}
	return p.errorf(t, "unknown word %q at %d", t.text, p.col(t))
}

func isKeyword(w string) bool {
	_, proto := protoQuals[w]
	_, typ := typeKinds[w]
	return proto || typ || unsupported[w] || w == "src" || w == "dst" || w == "and" || w == "or" || w == "not"
}

// allowedProtos says which protocol qualifiers each type takes, as libpcap does.
var allowedProtos = map[primKind][]protoQual{
	kindHost:      {pqNone, pqIP, pqIP6, pqARP, pqRARP},
	kindNet:       {pqNone, pqIP, pqIP6, pqARP, pqRARP},
	kindPort:      {pqNone, pqTCP, pqUDP, pqSCTP},
	kindPortRange: {pqNone, pqTCP, pqUDP, pqSCTP},
	kindProtoNum:  {pqNone, pqIP, pqIP6},
	kindLess:      {pqNone},
	kindGreater:   {pqNone},
}

// parseValue parses the value after the type keyword typ and checks the qualifiers against it.
func (p *parser) parseValue(pr *prim, quals []token, typ token) error {
	v := p.peek()
	if v.kind != tokWord || isKeyword(v.text) {
		return p.errorf(typ, "missing value after %q at %d", typ.text, p.col(typ))
	}
	p.next()

	// Qualifiers first: their errors are about the words the user chose, not the value.
	for _, q := range quals {
		if q.is("src") || q.is("dst") {
			if pr.kind == kindProtoNum || pr.kind == kindLess || pr.kind == kindGreater {
				return p.errorf(q, "%q at %d does not go with %q", q.text, p.col(q), typ.text)
			}
			continue
		}
		ok := false
		for _, a := range allowedProtos[pr.kind] {
			ok = ok || a == pr.proto
		}
		if !ok {
			// "tcp host X" probably means "tcp and host X". The protocol comes first.
			from := typ
			if len(quals) > 1 {
				from = quals[1]
			}
			rest := p.src[from.pos : v.pos+len(v.text)]
			return p.errorf(q, "%q at %d does not go with %q: write %q", q.text, p.col(q), typ.text, q.text+" and "+rest)
		}
	}

	switch pr.kind {
	case kindHost, kindNet:
		var err error
		if pr.net, err = p.parseAddr(pr.kind, v); err != nil {
			return err
		}
		if m := p.peek(); pr.kind == kindNet && m.is("mask") {
			return p.maskError(m, pr.net.Addr())
		}
		is4 := pr.net.Addr().Is4()
		switch {
		case is4 && pr.proto == pqIP6:
			return p.errorf(v, `%q at %d is an IPv4 address, but "ip6" asks for IPv6`, v.text, p.col(v))
		case !is4 && (pr.proto == pqIP || pr.proto == pqARP || pr.proto == pqRARP):
			return p.errorf(v, "%q at %d is an IPv6 address, but %q asks for IPv4", v.text, p.col(v), pr.proto)
		}
	case kindPort:
		n, why := parseNum(v.text, 0xffff)
		if why != "" {
			if strings.Contains(v.text, "-") {
				why = fmt.Sprintf("for a range write \"portrange %s\"", v.text)
			}
			return p.errorf(v, "%q at %d is not a port number: %s", v.text, p.col(v), why)
		}
		pr.lo, pr.hi = n, n
	case kindPortRange:
		a, b, ok := strings.Cut(v.text, "-")
		lo, why := parseNum(a, 0xffff)
		hi, why2 := parseNum(b, 0xffff)
		if !ok || why != "" || why2 != "" {
			return p.errorf(v, "%q at %d is not a port range such as 8000-8080", v.text, p.col(v))
		}
		if lo > hi {
			lo, hi = hi, lo // as libpcap does
		}
		pr.lo, pr.hi = lo, hi
	case kindProtoNum:
		n, why := parseNum(v.text, 0xff)
		if why != "" {
			return p.errorf(v, "%q at %d is not a protocol number: %s", v.text, p.col(v), why)
		}
		pr.lo = n
	case kindLess, kindGreater:
		n, why := parseNum(v.text, 0xffffffff)
		if why != "" {
			return p.errorf(v, "%q at %d is not a length: %s", v.text, p.col(v), why)
		}
		pr.lo = n
	}

	if pr.kind == kindLess || pr.kind == kindGreater || pr.kind == kindProtoNum {
		p.lastQuals = ""
	} else {
		var words []string
		for _, q := range quals {
			words = append(words, q.text)
		}
		p.lastQuals = strings.Join(append(words, typ.text), " ")
	}
	return nil
}

// maskError refuses "net A mask M", suggesting the prefix it means.
func (p *parser) maskError(m token, a netip.Addr) error {
	p.next()
	if mask, err := netip.ParseAddr(p.peek().text); err == nil && mask.BitLen() == a.BitLen() {
		if ones, bits := net.IPMask(mask.AsSlice()).Size(); bits != 0 {
			if pf := netip.PrefixFrom(a, ones); pf.Masked() == pf {
				return p.errorf(m, "%q at %d is not supported: write %q", m.text, p.col(m), "net "+pf.String())
			}
		}
	}
	return p.errorf(m, "%q at %d is not supported: write the network as a prefix, such as \"net 10.0.0.0/8\"", m.text, p.col(m))
}

// parseNum parses a decimal number up to maxVal; the reason is empty when it succeeds.
func parseNum(s string, maxVal uint64) (uint32, string) {
	if s == "" || strings.Trim(s, "0123456789") != "" {
		return 0, "want a decimal number"
	}
	if len(s) > 1 && s[0] == '0' {
		return 0, "leading zero (tcpdump would read it as octal)"
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n > maxVal {
		return 0, fmt.Sprintf("out of range 0-%d", maxVal)
	}
	return uint32(n), ""
}

func (p *parser) parseAddr(kind primKind, v token) (netip.Prefix, error) {
	if kind == kindHost || !strings.Contains(v.text, "/") {
		a, err := netip.ParseAddr(v.text)
		if err != nil {
			if kind == kindHost && strings.Contains(v.text, "/") {
				return netip.Prefix{}, p.errorf(v, "%q at %d is not an address: for a prefix write \"net %s\"", v.text, p.col(v), v.text)
			}
			return netip.Prefix{}, p.errorf(v, "%q at %d is not an IPv4 or IPv6 address", v.text, p.col(v))
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	pf, err := netip.ParsePrefix(v.text)
	if err != nil {
		return netip.Prefix{}, p.errorf(v, "%q at %d is not a prefix such as 10.0.0.0/8 or fd00::/16", v.text, p.col(v))
	}
	if m := pf.Masked(); m != pf {
		return netip.Prefix{}, p.errorf(v, "%q at %d has bits set beyond the prefix length: write %q", v.text, p.col(v), m.String())
	}
	return pf, nil
}

// ---------------------------------------------------------------------------------------------
// Lowering: the syntax tree becomes conditions on loaded fields.

// cond is cAnd, cOr, cNot, cIf, cConst or cCmp.
type cond interface{}

type (
	cAnd   []cond
	cOr    []cond
	cNot   struct{ x cond }
	cIf    struct{ c, then, els cond }
	cConst bool
	// cCmp loads a field into A, masks it if mask is not 0, and compares it with val.
	cCmp struct {
		ld   load
		mask uint32
		op   bpf.JumpTest // JumpEqual, JumpGreaterThan, JumpGreaterOrEqual or JumpBitsSet
		val  uint32
	}
)

type loadMode uint8

const (
	ldAbs loadMode = iota // off from the frame's start
	ldInd                 // off from the end of the IPv4 header: X holds its length
	ldLen                 // the frame's length
)

type load struct {
	mode loadMode
	off  uint32
	size int
}

func abs(off uint32, size int) load { return load{ldAbs, off, size} }

func eq(ld load, v uint32) cond { return cCmp{ld: ld, op: bpf.JumpEqual, val: v} }

func and(xs ...cond) cond {
	var out cAnd
	for _, x := range xs {
		switch x := x.(type) {
		case cConst:
			if !x {
				return x
			}
		case cAnd:
			out = append(out, x...)
		default:
			out = append(out, x)
		}
	}
	switch len(out) {
	case 0:
		return cConst(true)
	case 1:
		return out[0]
	}
	return out
}

func or(xs ...cond) cond {
	var out cOr
	for _, x := range xs {
		switch x := x.(type) {
		case cConst:
			if x {
				return x
			}
		case cOr:
			out = append(out, x...)
		default:
			out = append(out, x)
		}
	}
	switch len(out) {
	case 0:
		return cConst(false)
	case 1:
		return out[0]
	}
	return out
}

func not(x cond) cond {
	switch x := x.(type) {
	case cConst:
		return !x
	case cNot:
		return x.x
	}
	return cNot{x}
}

func ifElse(c, then, els cond) cond {
	if k, ok := c.(cConst); ok {
		if k {
			return then
		}
		return els
	}
	if k, ok := els.(cConst); ok {
		if k {
			return or(not(c), then)
		}
		return and(c, then)
	}
	if k, ok := then.(cConst); ok {
		if k {
			return or(c, els)
		}
		return and(not(c), els)
	}
	return cIf{c, then, els}
}

// Fields beyond those in filter.go.
const (
	etherARP  = 0x0806
	etherRARP = 0x8035

	ipv4SrcOff = ethHdrLen + 12
	ipv4DstOff = ethHdrLen + 16
	arpSrcOff  = ethHdrLen + 14 // sender protocol address
	arpDstOff  = ethHdrLen + 24 // target protocol address
	ipv6SrcOff = ethHdrLen + 8
	ipv6DstOff = ethHdrLen + 24

	protoICMP     = 1
	protoTCP      = 6
	protoUDP      = 17
	protoIPv6Frag = 44
	protoICMPv6   = 58
	protoSCTP     = 132
)

var ipProtoNums = map[protoQual]uint32{pqTCP: protoTCP, pqUDP: protoUDP, pqSCTP: protoSCTP, pqICMP: protoICMP, pqICMP6: protoICMPv6}

func etherIs(t uint32) cond { return eq(abs(ethTypeOff, 2), t) }

// ip6Proto is libpcap's IPv6 protocol test: the fixed header's next header, or the one after
// a fragment header right behind it.
func ip6Proto(p uint32) cond {
	next := abs(ipv6NextHdrOff, 1)
	return or(eq(next, p), and(eq(next, protoIPv6Frag), eq(abs(ethHdrLen+ipv6HdrLen, 1), p)))
}

func ip4Proto(p uint32) cond { return eq(abs(ipv4ProtoOff, 1), p) }

func lower(n node) cond {
	switch n := n.(type) {
	case andExpr:
		xs := make([]cond, len(n))
		for i, x := range n {
			xs[i] = lower(x)
		}
		return and(xs...)
	case orExpr:
		xs := make([]cond, len(n))
		for i, x := range n {
			xs[i] = lower(x)
		}
		return or(xs...)
	case notExpr:
		return not(lower(n.x))
	case prim:
		return n.lower()
	}
	panic(fmt.Sprintf("capture: unknown filter node %T", n))
}

func (p prim) lower() cond {
	switch p.kind {
	case kindProto:
		switch p.proto {
		case pqIP:
			return etherIs(etherIPv4)
		case pqIP6:
			return etherIs(etherIPv6)
		case pqARP:
			return etherIs(etherARP)
		case pqRARP:
			return etherIs(etherRARP)
		case pqICMP:
			return and(etherIs(etherIPv4), ip4Proto(protoICMP))
		case pqICMP6:
			return and(etherIs(etherIPv6), ip6Proto(protoICMPv6))
		}
		n := ipProtoNums[p.proto]
		return ifElse(etherIs(etherIPv4), ip4Proto(n), and(etherIs(etherIPv6), ip6Proto(n)))
	case kindProtoNum:
		v4 := and(etherIs(etherIPv4), ip4Proto(p.lo))
		v6 := and(etherIs(etherIPv6), ip6Proto(p.lo))
		switch p.proto {
		case pqIP:
			return v4
		case pqIP6:
			return v6
		}
		return ifElse(etherIs(etherIPv4), ip4Proto(p.lo), v6)
	case kindHost, kindNet:
		return p.lowerAddr()
	case kindPort, kindPortRange:
		return p.lowerPort()
	case kindLess:
		return not(cCmp{ld: load{mode: ldLen}, op: bpf.JumpGreaterThan, val: p.lo})
	case kindGreater:
		return cCmp{ld: load{mode: ldLen}, op: bpf.JumpGreaterOrEqual, val: p.lo}
	}
	panic(fmt.Sprintf("capture: unknown primitive kind %d", p.kind))
}

// dirMatch applies the direction qualifier to a test at the source and destination offsets.
func (p prim) dirMatch(src, dst cond) cond {
	switch p.dir {
	case dirSrc:
		return src
	case dirDst:
		return dst
	}
	return or(src, dst)
}

func (p prim) lowerAddr() cond {
	match := func(srcOff, dstOff uint32) cond {
		return p.dirMatch(prefixMatch(srcOff, p.net), prefixMatch(dstOff, p.net))
	}
	if !p.net.Addr().Is4() {
		return and(etherIs(etherIPv6), match(ipv6SrcOff, ipv6DstOff))
	}
	ip := match(ipv4SrcOff, ipv4DstOff)
	arp := match(arpSrcOff, arpDstOff)
	switch p.proto {
	case pqIP:
		return and(etherIs(etherIPv4), ip)
	case pqARP:
		return and(etherIs(etherARP), arp)
	case pqRARP:
		return and(etherIs(etherRARP), arp)
	}
	return ifElse(etherIs(etherIPv4), ip, and(or(etherIs(etherARP), etherIs(etherRARP)), arp))
}

// prefixMatch compares the address at off with pf word by word, skipping words the prefix
// does not cover.
func prefixMatch(off uint32, pf netip.Prefix) cond {
	addr := pf.Addr().AsSlice()
	var words []cond
	for i := 0; i < len(addr)/4; i++ {
		bits := min(max(pf.Bits()-32*i, 0), 32)
		if bits == 0 {
			break
		}
		mask := uint32(0xffffffff) << (32 - bits)
		w := binary.BigEndian.Uint32(addr[4*i:])
		c := cCmp{ld: abs(off+uint32(4*i), 4), op: bpf.JumpEqual, val: w & mask}
		if mask != 0xffffffff {
			c.mask = mask
		}
		words = append(words, c)
	}
	return and(words...)
}

func (p prim) lowerPort() cond {
	protos := []uint32{protoSCTP, protoTCP, protoUDP} // libpcap's order
	if n, ok := ipProtoNums[p.proto]; ok {
		protos = []uint32{n}
	}
	var is6, is4 []cond
	for _, n := range protos {
		is6 = append(is6, eq(abs(ipv6NextHdrOff, 1), n))
		is4 = append(is4, ip4Proto(n))
	}
	inRange := func(ld load) cond {
		if p.lo == p.hi {
			return eq(ld, p.lo)
		}
		return and(cCmp{ld: ld, op: bpf.JumpGreaterOrEqual, val: p.lo}, not(cCmp{ld: ld, op: bpf.JumpGreaterThan, val: p.hi}))
	}
	v6 := and(or(is6...), p.dirMatch(inRange(abs(ethHdrLen+ipv6HdrLen, 2)), inRange(abs(ethHdrLen+ipv6HdrLen+2, 2))))
	v4 := and(or(is4...),
		// Only the first fragment carries the ports.
		not(cCmp{ld: abs(ipv4FragOff, 2), op: bpf.JumpBitsSet, val: ipv4FragOffset}),
		p.dirMatch(inRange(load{ldInd, ethHdrLen, 2}), inRange(load{ldInd, ethHdrLen + 2, 2})))
	return ifElse(etherIs(etherIPv6), v6, and(etherIs(etherIPv4), v4))
}

// ---------------------------------------------------------------------------------------------
// Code generation: jumping code over labels, then layout with 8-bit conditional jumps.

type label int

// acc is what register A holds: a field, masked if mask is not 0.
type acc struct {
	ld   load
	mask uint32
	ok   bool
}

// regs is what is known about the registers at a point of the program.
type regs struct {
	a acc
	x bool // X holds the IPv4 header length
}

func meet(a, b regs) regs {
	if a.a != b.a {
		a.a = acc{}
	}
	a.x = a.x && b.x
	return a
}

// slot is one instruction, or a jump still to be laid out.
type slot struct {
	ins    bpf.Instruction // a load, ALU operation or return; nil for jumps
	ja     bool            // unconditional jump to jt
	cond   bpf.JumpTest
	val    uint32
	jt, jf label
	// farT and farF are set by layout when the target is beyond a conditional jump's 8 bits:
	// the branch then goes through an unconditional jump placed right after.
	farT, farF bool
}

func (s slot) size() int {
	n := 1
	if s.farT {
		n++
	}
	if s.farF {
		n++
	}
	return n
}

type labelInfo struct {
	at      int  // index into code once placed
	in      regs // meet of the register states of the jumps to it
	reached bool
}

type gen struct {
	code   []slot
	labels []labelInfo
	cur    regs
	live   bool // the previous instruction falls through
}

func (g *gen) newLabel() label {
	g.labels = append(g.labels, labelInfo{at: -1})
	return label(len(g.labels) - 1)
}

func (g *gen) reach(l label) {
	li := &g.labels[l]
	if li.reached {
		li.in = meet(li.in, g.cur)
	} else {
		li.in, li.reached = g.cur, true
	}
}

// place puts l at the next instruction. Every jump to it is emitted by then: all jumps go
// forward, so the registers' state there is known.
func (g *gen) place(l label) {
	if g.live {
		g.reach(l)
	}
	li := &g.labels[l]
	li.at = len(g.code)
	g.cur, g.live = li.in, li.reached
}

func (g *gen) add(ins bpf.Instruction) {
	g.code = append(g.code, slot{ins: ins})
	g.live = true
}

func (g *gen) jump(l label) {
	g.reach(l)
	g.code = append(g.code, slot{ja: true, jt: l})
	g.live = false
}

func (g *gen) loadA(ld load, mask uint32) {
	want := acc{ld: ld, mask: mask, ok: true}
	if g.cur.a == want {
		return
	}
	switch ld.mode {
	case ldAbs:
		g.add(bpf.LoadAbsolute{Off: ld.off, Size: ld.size})
	case ldInd:
		if !g.cur.x {
			g.add(bpf.LoadMemShift{Off: ethHdrLen})
			g.cur.x = true
		}
		g.add(bpf.LoadIndirect{Off: ld.off, Size: ld.size})
	case ldLen:
		g.add(bpf.LoadExtension{Num: bpf.ExtLen})
	}
	if mask != 0 {
		g.add(bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: mask})
	}
	g.cur.a = want
}

// emit generates c so that it continues at t when c holds and at f when not.
func (g *gen) emit(c cond, t, f label) {
	switch c := c.(type) {
	case cConst:
		if c {
			g.jump(t)
		} else {
			g.jump(f)
		}
	case cCmp:
		g.loadA(c.ld, c.mask)
		if t == f {
			g.jump(t)
			return
		}
		g.code = append(g.code, slot{cond: c.op, val: c.val, jt: t, jf: f})
		g.reach(t)
		g.reach(f)
		g.live = false
	case cNot:
		g.emit(c.x, f, t)
	case cAnd:
		for _, x := range c[:len(c)-1] {
			next := g.newLabel()
			g.emit(x, next, f)
			g.place(next)
		}
		g.emit(c[len(c)-1], t, f)
	case cOr:
		for _, x := range c[:len(c)-1] {
			next := g.newLabel()
			g.emit(x, t, next)
			g.place(next)
		}
		g.emit(c[len(c)-1], t, f)
	case cIf:
		then, els := g.newLabel(), g.newLabel()
		g.emit(c.c, then, els)
		g.place(then)
		g.emit(c.then, t, f)
		g.place(els)
		g.emit(c.els, t, f)
	default:
		panic(fmt.Sprintf("capture: unknown condition %T", c))
	}
}

// layout resolves the labels. A conditional jump reaches 255 instructions ahead at most;
// farther targets go through an unconditional jump, which moves later code and may push
// other jumps out of reach, so it repeats until nothing changes.
func (g *gen) layout() []bpf.Instruction {
	pos := make([]int, len(g.code))
	at := func(l label) int { return pos[g.labels[l].at] }
	for {
		n := 0
		for i, s := range g.code {
			pos[i] = n
			n += s.size()
		}
		changed := false
		for i := range g.code {
			s := &g.code[i]
			if s.ins != nil || s.ja {
				continue
			}
			next := pos[i] + 1
			if !s.farT && at(s.jt)-next > 0xff {
				s.farT, changed = true, true
			}
			if !s.farF && at(s.jf)-next > 0xff {
				s.farF, changed = true, true
			}
		}
		if !changed {
			break
		}
	}
	var out []bpf.Instruction
	for i, s := range g.code {
		p := pos[i]
		switch {
		case s.ins != nil:
			out = append(out, s.ins)
		case s.ja:
			out = append(out, bpf.Jump{Skip: uint32(at(s.jt) - (p + 1))})
		default:
			jt, jf := at(s.jt)-(p+1), at(s.jf)-(p+1)
			if s.farT {
				jt = 0
			}
			if s.farF {
				jf = 0
				if s.farT {
					jf = 1
				}
			}
			out = append(out, bpf.JumpIf{Cond: s.cond, Val: s.val, SkipTrue: uint8(jt), SkipFalse: uint8(jf)})
			// Each trampoline sits right after the jump, at position len(out).
			if s.farT {
				out = append(out, bpf.Jump{Skip: uint32(at(s.jt) - (len(out) + 1))})
			}
			if s.farF {
				out = append(out, bpf.Jump{Skip: uint32(at(s.jf) - (len(out) + 1))})
			}
		}
	}
	return out
}

// compile turns a syntax tree into a program that accepts with snapLen.
func compile(root node, snapLen uint32) ([]bpf.Instruction, error) {
	g := &gen{live: true}
	accept, reject := g.newLabel(), g.newLabel()
	g.emit(lower(root), accept, reject)
	g.place(accept)
	g.add(bpf.RetConstant{Val: snapLen})
	g.place(reject)
	g.add(bpf.RetConstant{Val: 0})
	prog := g.layout()
	if len(prog) > maxInsns {
		return nil, fmt.Errorf("compiles to %d BPF instructions, more than the %d the kernel takes", len(prog), maxInsns)
	}
	return prog, nil
}

// Package dnsproxy is the nameserver of `kubectl trafficlab exec`'s command: it answers with the
// pod's resolver, by forwarding each question unchanged to the pod's nameservers through the tunnel,
// except for names the egress filter keeps on this machine, which this machine's resolver answers.
// Messages are parsed with golang.org/x/net/dns/dnsmessage; nothing DNS is parsed by hand.
package dnsproxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"k8s.io/klog/v2"

	"github.com/trafficlab/kubectl-trafficlab/pkg/rootless/egress"
)

const (
	// DefaultTimeout bounds one question: past it the client gets SERVFAIL instead of silence. It
	// stays under the 5 s a try lasts in glibc, musl and Go, so the answer comes while the client still
	// waits for it rather than after it has given up on that try.
	DefaultTimeout = 4 * time.Second

	// localTTL is the TTL of answers from this machine's resolver, which tells us none.
	localTTL = 10

	// tcpIdleTimeout closes a TCP client that sends nothing for this long (RFC 7766 asks servers to
	// time idle connections out, in seconds rather than minutes).
	tcpIdleTimeout = 30 * time.Second

	// maxInFlight bounds the questions being answered at once over UDP and per TCP connection; a
	// question past it is dropped (UDP, the client retries) or waits (TCP).
	maxInFlight = 256

	// minUDPSize is what a client without EDNS0 accepts over UDP (RFC 1035).
	minUDPSize = 512
)

// Dialer reaches the pod's nameservers through the tunnel. Its "udp" connections keep datagram
// boundaries, as a connected UDP socket does: one Write sends one datagram, one Read returns one.
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// HostResolver looks names up on this machine; *net.Resolver is one.
type HostResolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Server answers DNS over UDP and TCP. Its fields must not change once it serves.
type Server struct {
	// Dialer reaches the pod's nameservers.
	Dialer Dialer
	// Pod is the pod's resolv.conf: its nameservers are asked, its search list lets Filter recognize
	// a name the program wrote under the search domains its resolver appended.
	Pod ResolvConf
	// Filter picks the names answered on this machine and learns the addresses of named rules; nil
	// sends every question to the pod.
	Filter *egress.Filter
	// Host answers the names Filter keeps on this machine; nil is net.DefaultResolver.
	Host HostResolver
	// Timeout bounds one question; zero is DefaultTimeout.
	Timeout time.Duration
}

func (s *Server) timeout() time.Duration {
	if s.Timeout > 0 {
		return s.Timeout
	}
	return DefaultTimeout
}

// ServePacket answers the questions arriving on pc until ctx ends, then closes pc. It returns nil
// when ctx ended, or the error that stopped reading.
func (s *Server) ServePacket(ctx context.Context, pc net.PacketConn) error {
	stop := context.AfterFunc(ctx, func() { pc.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	sem := make(chan struct{}, maxInFlight)
	buf := make([]byte, 65535)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("reading DNS questions on %s: %w", pc.LocalAddr(), err)
		}
		select {
		case sem <- struct{}{}:
		default:
			klog.V(2).InfoS("dns: too many questions in flight, dropping one", "from", from)
			continue
		}
		query := append([]byte(nil), buf[:n]...)
		wg.Go(func() {
			defer func() { <-sem }()
			if resp := s.answer(ctx, query, false); resp != nil {
				_, _ = pc.WriteTo(resp, from)
			}
		})
	}
}

// ServeStream answers DNS over TCP (length-prefixed, pipelined, RFC 7766) on the connections
// accepted from ln until ctx ends, then closes ln and them.
func (s *Server) ServeStream(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accepting DNS connections on %s: %w", ln.Addr(), err)
		}
		wg.Go(func() { s.serveConn(ctx, c) })
	}
}

func (s *Server) serveConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	var wmu sync.Mutex
	sem := make(chan struct{}, maxInFlight)
	for {
		_ = c.SetReadDeadline(time.Now().Add(tcpIdleTimeout))
		query, err := readMsg(c)
		if err != nil {
			if !errors.Is(err, io.EOF) && ctx.Err() == nil {
				klog.V(4).InfoS("dns: tcp client gone", "from", c.RemoteAddr(), "err", err)
			}
			return
		}
		sem <- struct{}{}
		// Answers go out as they are ready, in any order: RFC 7766 lets pipelining clients match them by ID.
		wg.Go(func() {
			defer func() { <-sem }()
			resp := s.answer(ctx, query, true)
			if resp == nil {
				return
			}
			wmu.Lock()
			defer wmu.Unlock()
			if err := writeMsg(c, resp); err != nil {
				c.Close()
			}
		})
	}
}

func readMsg(r io.Reader) ([]byte, error) {
	var l [2]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return nil, err
	}
	msg := make([]byte, binary.BigEndian.Uint16(l[:]))
	if _, err := io.ReadFull(r, msg); err != nil {
		return nil, err
	}
	return msg, nil
}

func writeMsg(w io.Writer, msg []byte) error {
	if len(msg) > 0xffff {
		return errors.New("DNS message longer than 65535 bytes")
	}
	_, err := w.Write(binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(msg)), uint16(len(msg))))
	if err == nil {
		_, err = w.Write(msg)
	}
	return err
}

// query is what answer needs from a client's message.
type query struct {
	header   dnsmessage.Header
	question dnsmessage.Question
	// edns: the client sent an OPT record; udpSize is the most it takes over UDP.
	edns    bool
	udpSize int
}

// answer returns the response to one client message, or nil when there is nothing to answer to.
func (s *Server) answer(ctx context.Context, msg []byte, overTCP bool) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil || h.Response {
		return nil
	}
	q := query{header: h, udpSize: minUDPSize}
	if overTCP {
		q.udpSize = 0xffff
	}
	qs, err := p.AllQuestions()
	if err != nil || len(qs) != 1 {
		// RFC 9619: a query has exactly one question.
		return q.reply(dnsmessage.RCodeFormatError, nil)
	}
	q.question = qs[0]
	if h.OpCode != 0 {
		// NOTIFY, UPDATE and friends are the pod's nameserver's business.
		return s.forwarded(ctx, msg, q, overTCP, false)
	}
	if err := p.SkipAllAnswers(); err == nil {
		if err := p.SkipAllAuthorities(); err == nil {
			for {
				rh, err := p.AdditionalHeader()
				if err != nil {
					break
				}
				if rh.Type == dnsmessage.TypeOPT {
					q.edns = true
					if !overTCP {
						q.udpSize = max(minUDPSize, int(rh.Class))
					}
				}
				if err := p.SkipAdditional(); err != nil {
					break
				}
			}
		}
	}
	res := s.Filter.Resolve(q.question.Name.String(), s.Pod.Search)
	klog.V(4).InfoS("dns question", "name", q.question.Name.String(), "type", q.question.Type, "route", res.Route, "tcp", overTCP)
	if res.Route == egress.Local {
		return s.local(ctx, q, res)
	}
	return s.forwarded(ctx, msg, q, overTCP, res.Rule)
}

// forwarded asks the pod and, when a rule names the question, records the addresses answered.
func (s *Server) forwarded(ctx context.Context, msg []byte, q query, overTCP, record bool) []byte {
	resp, err := s.forward(ctx, msg, overTCP, q.udpSize)
	if err != nil {
		klog.V(2).InfoS("dns: the pod's nameservers did not answer", "name", q.question.Name.String(), "err", err)
		return q.reply(dnsmessage.RCodeServerFailure, nil)
	}
	if record {
		s.Filter.Record(q.question.Name.String(), s.Pod.Search, answerAddrs(resp))
	}
	return resp
}

// forward asks the pod's nameservers msg unchanged: over TCP for a TCP client, else over UDP and
// again over TCP when the UDP answer is truncated, keeping the full answer if it fits what the
// client takes over UDP (the pod's nameserver may truncate below the client's EDNS0 size), else
// the truncated one, so the client retries over TCP itself.
func (s *Server) forward(ctx context.Context, msg []byte, overTCP bool, udpSize int) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout())
	defer cancel()
	servers := s.Pod.addrs()
	if len(servers) == 0 {
		return nil, errors.New("the pod's resolv.conf names no nameserver")
	}
	id := binary.BigEndian.Uint16(msg)
	network := "udp"
	if overTCP {
		network = "tcp"
	}
	// Two rounds over the nameservers, each try with an equal share of the time: one lost datagram
	// on the pod's side must not use up the whole question.
	tries := 2 * len(servers)
	share := s.timeout() / time.Duration(tries)
	var errs []error
	for i := range tries {
		server := servers[i%len(servers)]
		resp, err := s.exchange(ctx, network, server, msg, id, share)
		if err != nil {
			errs = append(errs, err)
			if ctx.Err() != nil {
				break
			}
			continue
		}
		if network == "udp" && truncated(resp) {
			full, err := s.exchange(ctx, "tcp", server, msg, id, time.Until(deadline(ctx)))
			if err == nil && len(full) <= udpSize {
				return full, nil
			}
			if err != nil {
				klog.V(4).InfoS("dns: tcp retry of a truncated answer failed", "server", server, "err", err)
			}
		}
		if network == "udp" {
			if resp = fitUDP(resp, udpSize); resp == nil {
				return nil, fmt.Errorf("malformed answer from %s", server)
			}
		}
		return resp, nil
	}
	return nil, errors.Join(errs...)
}

func deadline(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
}

// exchange sends msg to server and waits up to limit for the answer with msg's ID.
func (s *Server) exchange(ctx context.Context, network, server string, msg []byte, id uint16, limit time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	c, err := s.Dialer.DialContext(ctx, network, server)
	if err != nil {
		return nil, fmt.Errorf("dial %s %s in the pod: %w", network, server, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	_ = c.SetDeadline(deadline(ctx))
	if network == "tcp" {
		if err := writeMsg(c, msg); err != nil {
			return nil, fmt.Errorf("ask %s over tcp: %w", server, ctxErr(ctx, err))
		}
	} else if _, err := c.Write(msg); err != nil {
		return nil, fmt.Errorf("ask %s over udp: %w", server, ctxErr(ctx, err))
	}
	var buf []byte
	if network == "udp" {
		buf = make([]byte, 65535)
	}
	for {
		var resp []byte
		if network == "tcp" {
			resp, err = readMsg(c)
		} else {
			var n int
			n, err = c.Read(buf)
			resp = buf[:n]
		}
		if err != nil {
			return nil, fmt.Errorf("answer from %s over %s: %w", server, network, ctxErr(ctx, err))
		}
		// Anything else on the socket (a late answer to nobody, garbage) is not ours; keep waiting.
		if len(resp) >= 12 && binary.BigEndian.Uint16(resp) == id && resp[2]&0x80 != 0 {
			return append([]byte(nil), resp...), nil
		}
	}
}

// ctxErr prefers the context's reason over the closed-connection error its AfterFunc causes.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// truncated reads the TC bit.
func truncated(msg []byte) bool { return len(msg) >= 3 && msg[2]&0x02 != 0 }

// fitUDP cuts an answer that exceeds what the client takes over UDP down to its header and question,
// with TC set, so the client asks again over TCP.
func fitUDP(msg []byte, size int) []byte {
	if len(msg) <= size {
		return msg
	}
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil {
		return nil
	}
	qs, err := p.AllQuestions()
	if err != nil {
		return nil
	}
	h.Truncated = true
	b := dnsmessage.NewBuilder(nil, h)
	_ = b.StartQuestions()
	for _, q := range qs {
		_ = b.Question(q)
	}
	out, err := b.Finish()
	if err != nil {
		return nil
	}
	return out
}

// answerAddrs are the A and AAAA records of an answer, whatever their owner (CNAME chains end in
// records owned by another name).
func answerAddrs(msg []byte) []netip.Addr {
	var p dnsmessage.Parser
	if _, err := p.Start(msg); err != nil {
		return nil
	}
	if err := p.SkipAllQuestions(); err != nil {
		return nil
	}
	var out []netip.Addr
	for {
		rh, err := p.AnswerHeader()
		if err != nil {
			return out
		}
		switch rh.Type {
		case dnsmessage.TypeA:
			r, err := p.AResource()
			if err != nil {
				return out
			}
			out = append(out, netip.AddrFrom4(r.A))
		case dnsmessage.TypeAAAA:
			r, err := p.AAAAResource()
			if err != nil {
				return out
			}
			out = append(out, netip.AddrFrom16(r.AAAA))
		default:
			if err := p.SkipAnswer(); err != nil {
				return out
			}
		}
	}
}

// local answers a question from this machine's resolver and records the addresses. The pod is not
// asked, under any search-domain variant: a same-named cluster service must not answer first.
func (s *Server) local(ctx context.Context, q query, res egress.Resolution) []byte {
	if q.question.Class != dnsmessage.ClassINET && q.question.Class != dnsmessage.ClassANY {
		return q.reply(dnsmessage.RCodeSuccess, nil)
	}
	host := s.Host
	if host == nil {
		host = net.DefaultResolver
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout())
	defer cancel()
	// Both families at once: an A question for a name with only AAAA records is NODATA, not NXDOMAIN.
	addrs, err := host.LookupNetIP(ctx, "ip", res.Name)
	if err != nil {
		var dnsErr *net.DNSError
		if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
			return q.reply(dnsmessage.RCodeNameError, nil)
		}
		klog.V(2).InfoS("dns: this machine's resolver failed", "name", res.Name, "err", err)
		return q.reply(dnsmessage.RCodeServerFailure, nil)
	}
	for i, a := range addrs {
		addrs[i] = a.Unmap()
	}
	s.Filter.Record(q.question.Name.String(), s.Pod.Search, addrs)
	var keep []netip.Addr
	for _, a := range addrs {
		switch {
		case a.Is4() && (q.question.Type == dnsmessage.TypeA || q.question.Type == dnsmessage.TypeALL),
			a.Is6() && (q.question.Type == dnsmessage.TypeAAAA || q.question.Type == dnsmessage.TypeALL):
			keep = append(keep, a)
		}
	}
	return q.reply(dnsmessage.RCodeSuccess, keep)
}

// reply builds our own response to q: an error, or addresses (from this machine) under the question's
// name, cut to what the client takes over UDP.
func (q query) reply(rcode dnsmessage.RCode, addrs []netip.Addr) []byte {
	h := dnsmessage.Header{
		ID:                 q.header.ID,
		Response:           true,
		OpCode:             q.header.OpCode,
		RecursionDesired:   q.header.RecursionDesired,
		RecursionAvailable: true,
		RCode:              rcode,
	}
	for {
		b := dnsmessage.NewBuilder(nil, h)
		b.EnableCompression()
		if err := q.build(&b, addrs); err != nil {
			return nil
		}
		out, err := b.Finish()
		if err != nil {
			return nil
		}
		if len(out) <= q.udpSize || h.Truncated {
			return out
		}
		h.Truncated, addrs = true, nil
	}
}

func (q query) build(b *dnsmessage.Builder, addrs []netip.Addr) error {
	if q.question.Name.Length > 0 {
		if err := b.StartQuestions(); err != nil {
			return err
		}
		if err := b.Question(q.question); err != nil {
			return err
		}
	}
	if err := b.StartAnswers(); err != nil {
		return err
	}
	rh := dnsmessage.ResourceHeader{Name: q.question.Name, Class: dnsmessage.ClassINET, TTL: localTTL}
	for _, a := range addrs {
		var err error
		if a.Is4() {
			err = b.AResource(rh, dnsmessage.AResource{A: a.As4()})
		} else {
			err = b.AAAAResource(rh, dnsmessage.AAAAResource{AAAA: a.As16()})
		}
		if err != nil {
			return err
		}
	}
	if !q.edns {
		return nil
	}
	// RFC 6891: a response to an EDNS0 query carries an OPT record too.
	if err := b.StartAdditionals(); err != nil {
		return err
	}
	var opt dnsmessage.ResourceHeader
	if err := opt.SetEDNS0(1232, dnsmessage.RCodeSuccess, false); err != nil {
		return err
	}
	return b.OPTResource(opt, dnsmessage.OPTResource{})
}

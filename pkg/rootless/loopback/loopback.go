// Package loopback makes this machine's loopback TCP servers reachable from exec's command as
// localhost, as pasta does: for each port listening here, a listener on the namespace's loopback
// forwards to it, and ports that start listening later are found by a rescan.
package loopback

import (
	"bufio"
	"context"
	"encoding/hex"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// rescanEvery is how often the host's loopback listeners are looked for, so that a server started on
// this machine after the command is reachable from it as localhost too.
const rescanEvery = 2 * time.Second

// Namespace opens listeners on the command's loopback (sandbox.Sandbox).
type Namespace interface {
	ListenLoopback(ctx context.Context, network string, port int) (net.Listener, error)
}

// Bridge holds the namespace's listeners for this machine's loopback ports.
type Bridge struct {
	ns   Namespace
	skip map[int]bool
	mu   sync.Mutex
	open map[int]net.Listener
}

// Start bridges the ports listening now before it returns, so that the command finds them from its
// start, then rescans until ctx ends. Ports in skip (those the command serves itself: --steal,
// --mirror LOCAL) are left to the command.
func Start(ctx context.Context, ns Namespace, skip []int) *Bridge {
	b := &Bridge{ns: ns, skip: map[int]bool{}, open: map[int]net.Listener{}}
	for _, p := range skip {
		b.skip[p] = true
	}
	b.scan(ctx)
	go b.run(ctx)
	return b
}

func (b *Bridge) run(ctx context.Context) {
	t := time.NewTicker(rescanEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			b.scan(ctx)
		}
	}
}

func (b *Bridge) scan(ctx context.Context) {
	for _, port := range HostPorts() {
		b.mu.Lock()
		_, have := b.open[port]
		b.mu.Unlock()
		if have || b.skip[port] {
			continue
		}
		ln, err := b.ns.ListenLoopback(ctx, "tcp", port)
		if err != nil {
			// The command listens there itself, or the namespace is gone: either way not ours.
			b.skip[port] = true
			continue
		}
		b.mu.Lock()
		b.open[port] = ln
		b.mu.Unlock()
		go b.serve(ln, port)
	}
}

func (b *Bridge) serve(ln net.Listener, port int) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			h, err := dialHost(port)
			if err != nil {
				c.Close()
				return
			}
			_ = wire.Join(c, h)
		}()
	}
}

// dialHost reaches the host's server on port, wherever on loopback it listens.
func dialHost(port int) (net.Conn, error) {
	p := strconv.Itoa(port)
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", p), 5*time.Second)
	if err == nil {
		return c, nil
	}
	return net.DialTimeout("tcp", net.JoinHostPort("::1", p), 5*time.Second)
}

// Close closes the namespace's listeners; connections already joined go on until they end.
func (b *Bridge) Close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, ln := range b.open {
		ln.Close()
	}
}

// HostPorts lists the TCP ports this machine listens on for loopback (or for every address), IPv4
// and IPv6, from /proc/net/tcp and tcp6; none where there is no /proc.
func HostPorts() []int {
	seen := map[int]bool{}
	var ports []int
	for _, file := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		for _, p := range listeningPorts(file) {
			if !seen[p] {
				seen[p] = true
				ports = append(ports, p)
			}
		}
	}
	return ports
}

// loopbackOrAny are /proc/net/tcp{,6}'s spellings of 127.0.0.1, 0.0.0.0, ::1, :: and ::ffff:127.0.0.1.
var loopbackOrAny = map[string]bool{
	"0100007F": true, "00000000": true,
	"00000000000000000000000001000000": true, "00000000000000000000000000000000": true,
	"0000000000000000FFFF00000100007F": true,
}

func listeningPorts(file string) []int {
	f, err := os.Open(file)
	if err != nil {
		return nil
	}
	defer f.Close()
	var ports []int
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		// sl local_address rem_address st ...; st 0A is LISTEN.
		if len(fields) < 4 || fields[3] != "0A" {
			continue
		}
		host, port, ok := strings.Cut(fields[1], ":")
		if !ok || !loopbackOrAny[host] {
			continue
		}
		b, err := hex.DecodeString(port)
		if err != nil || len(b) != 2 {
			continue
		}
		ports = append(ports, int(b[0])<<8|int(b[1]))
	}
	return ports
}

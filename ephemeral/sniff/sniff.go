// Package sniff runs captures in the agent: it opens AF_PACKET sockets in the pod's network
// namespace (NET_RAW only, which the runtime grants a root container by default) with the dump's
// filter compiled into the kernel, and streams what they read as pcapng.
package sniff

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/gopacket/gopacket"
	"golang.org/x/sys/unix"

	"github.com/trafficlab/kubectl-trafficlab/capture"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// flushEvery bounds how long a captured packet waits in the agent's buffer, so that a live view
// stays live when traffic is light.
const flushEvery = 100 * time.Millisecond

// drainFor is how long a dump keeps reading after it was asked to stop.
const drainFor = 250 * time.Millisecond

// Open starts the capture a dump spec asks for in the current network namespace, never including the
// loopback TCP ports in exclude (the agent's own data connections, wire.DumpSpec.CaptureExpr), on the
// interface wire.SniffInterface picks for the spec's mesh and ports.
func Open(spec wire.DumpSpec, exclude []int) (*capture.Capture, error) {
	e, err := expr(spec, exclude)
	if err != nil {
		return nil, err
	}
	// In a pod with a sidecar, the ports' eth0 copy is the mesh's mTLS and the lo copy the proxy's
	// plaintext connection to the app: wire.SniffInterface decides which to read.
	c, err := capture.Open(capture.Options{Interface: wire.SniffInterface(spec.Mesh, spec.Ports), SnapLen: spec.SnapLen, Expr: e})
	if err != nil {
		if errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("open a packet socket: %w (the agent needs NET_RAW; this container runtime does not grant it by default, so rerun with --add-net-raw): %w", err, wire.ErrForbidden)
		}
		return nil, fmt.Errorf("open the capture: %w", err)
	}
	return c, nil
}

// Exclude changes what a running capture opened by Open leaves out to the loopback TCP ports in
// exclude, spec's own filter kept: the agent calls it as sessions start and end.
func Exclude(c *capture.Capture, spec wire.DumpSpec, exclude []int) error {
	e, err := expr(spec, exclude)
	if err != nil {
		return err
	}
	return c.SetExpr(e)
}

// expr is the compiled form of spec.CaptureExpr(exclude); nil when it is empty.
func expr(spec wire.DumpSpec, exclude []int) (*capture.Expr, error) {
	text := spec.CaptureExpr(exclude)
	if text == "" {
		return nil, nil
	}
	e, err := capture.ParseExpr(text)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, wire.ErrBadRequest)
	}
	return &e, nil
}

// Dump writes c as pcapng to w until ctx ends or w fails, then the kernel's counts as a statistics
// block, and closes c.
func Dump(parent context.Context, c *capture.Capture, w io.Writer) (capture.Stats, error) {
	defer c.Close()
	pw, err := capture.NewWriter(w, capture.PCAPNG, c.SnapLen(), c.Interfaces())
	if err != nil {
		return capture.Stats{}, err
	}
	if err := pw.Flush(); err != nil {
		return capture.Stats{}, err
	}
	// The capture outlives ctx by drainFor: packets of the last exchange are often still queued on the
	// socket when the user presses Ctrl-C, and they belong in the file.
	ctx, cancel := context.WithCancel(context.WithoutCancel(parent))
	defer cancel()
	stopDrain := context.AfterFunc(parent, func() {
		t := time.NewTimer(drainFor)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
		}
		cancel()
	})
	defer stopDrain()
	pending := make(chan struct{}, 1)
	flushErr := make(chan error, 1)
	var mu sync.Mutex
	go func() {
		t := time.NewTicker(flushEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				select {
				case <-pending:
				default:
					continue
				}
				mu.Lock()
				err := pw.Flush()
				mu.Unlock()
				if err != nil {
					flushErr <- err
					cancel()
					return
				}
			}
		}
	}()
	err = c.Run(ctx, func(data []byte, ci gopacket.CaptureInfo) error {
		mu.Lock()
		defer mu.Unlock()
		if err := pw.WritePacket(ci, data); err != nil {
			return err
		}
		select {
		case pending <- struct{}{}:
		default:
		}
		return nil
	})
	select {
	case ferr := <-flushErr:
		err = ferr
	default:
	}
	stats, serr := c.Stats()
	if errors.Is(err, context.Canceled) || err == nil {
		mu.Lock()
		err = errors.Join(serr, pw.WriteStats(stats, time.Now()), pw.Flush())
		mu.Unlock()
	}
	return stats, err
}

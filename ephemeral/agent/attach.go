package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/attach"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/dial"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// runSession serves one plugin session on the exec stream.
func runSession(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("trafficlab-agent attach", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dialTimeout := fs.Duration("dial-timeout", dial.DefaultTimeout, "bound on one dial from the pod, name resolution included")
	debug := fs.Bool("debug", false, "log every connection, not only the session's life (the plugin asks for it at -v=5)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	return attach.Run(ctx, attach.Config{
		Version: agentVersion(),
		In:      stdin,
		Out:     stdout,
		Log:     slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level(*debug)})),
		Dialer:  &dial.Dialer{Timeout: *dialTimeout},
		Tunnel:  wire.DefaultMuxConfig(),
	})
}

// runRelay joins the exec stream to a port on the pod's loopback. It is the data path when the user
// may exec but not port-forward; measured about three times slower, so only a fallback.
func runRelay(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) != 1 {
		fmt.Fprintln(stderr, "usage: trafficlab-agent relay 127.0.0.1:PORT")
		return fmt.Errorf("%w: relay takes one address", errUsage)
	}
	host, _, err := net.SplitHostPort(args[0])
	if err != nil || !net.ParseIP(host).IsLoopback() {
		fmt.Fprintf(stderr, "relay address %q must be a loopback host:port\n", args[0])
		return fmt.Errorf("%w: relay address %q is not on loopback", errUsage, args[0])
	}
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := d.DialContext(dctx, "tcp", args[0])
	if err != nil {
		return fmt.Errorf("relay to %q: %w", args[0], err)
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	return wire.Join(c, stdio{r: stdin, w: stdout})
}

// stdio makes the exec stream's two halves one connection; closing the write half is all an exec
// stream can signal, and the plugin reads it as EOF.
type stdio struct {
	r io.Reader
	w io.Writer
}

func (s stdio) Read(p []byte) (int, error)  { return s.r.Read(p) }
func (s stdio) Write(p []byte) (int, error) { return s.w.Write(p) }
func (s stdio) CloseWrite() error {
	if c, ok := s.w.(io.Closer); ok {
		return c.Close()
	}
	return nil
}
func (s stdio) Close() error {
	err := s.CloseWrite()
	if c, ok := s.r.(io.Closer); ok {
		_ = c.Close()
	}
	return err
}

func level(debug bool) slog.Level {
	if debug {
		return slog.LevelDebug
	}
	return slog.LevelInfo
}

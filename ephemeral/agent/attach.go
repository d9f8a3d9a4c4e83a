package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/attach"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/dial"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// attachConfig is the command line of `trafficlab-agent attach`.
type attachConfig struct {
	name        string
	dialTimeout time.Duration
	debug       bool
}

// attachFlags parses attach's flags. The relay parses them to refuse a bad one on its own stderr; the
// main process parses the same arguments again, as the relay passed them on, to run the session.
func attachFlags(args []string, stderr io.Writer) (attachConfig, error) {
	var cfg attachConfig
	fs := flag.NewFlagSet("trafficlab-agent attach", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.name, "name", defaultName, "the agent container's name, which names the main process's session socket")
	fs.DurationVar(&cfg.dialTimeout, "dial-timeout", dial.DefaultTimeout, "bound on one dial from the pod, name resolution included")
	fs.BoolVar(&cfg.debug, "debug", false, "log every connection, not only the session's life (the plugin asks for it at -v=5)")
	if err := parseFlags(fs, args, stderr); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// serveSession is one session in the main process, on an attachment's connection; its log goes to the
// attachment's stderr, which the plugin reads.
func serveSession(ctx context.Context, a sessionIO) error {
	cfg, err := attachFlags(a.Args, a.Log)
	if err != nil {
		return err
	}
	return attach.Run(ctx, attach.Config{
		Version:        agentVersion(),
		In:             a.In,
		Out:            a.Out,
		Log:            slog.New(slog.NewTextHandler(a.Log, &slog.HandlerOptions{Level: level(cfg.debug)})),
		Dialer:         &dial.Dialer{Timeout: cfg.dialTimeout},
		Tunnel:         wire.DefaultMuxConfig(),
		Listening:      a.Listening,
		DataPorts:      a.DataPorts,
		WatchDataPorts: a.WatchDataPorts,
		Budget:         a.Budget,
		Steals:         a.Steals,
		Mesh:           processMeshReader().redirect,
		Register:       a.Register,
		Sessions:       a.Sessions,
		Hangup:         a.Hangup,
	})
}

// runAttach is `trafficlab-agent attach`, exec'd by the plugin: a relay between the exec stream and the
// main process, which runs the session. The session then belongs to PID 1 of the agent container, so
// the redirects it installs live exactly as long as the main process, and only a live attachment keeps
// the agent's idle clock from running. The relay passes its own stderr to the main process along with
// its flags, so the plugin reads the session's log as before. It ends when the main process closes the
// connection (the session is over); stdin's end is passed on as a half-close.
func runAttach(args []string, stdin io.Reader, stdout io.Writer, stderr *os.File) error {
	cfg, err := attachFlags(args, stderr)
	if err != nil {
		return err
	}
	c, err := dialMain(cfg.name)
	if err != nil {
		return err
	}
	defer c.Close()
	line, err := json.Marshal(header{Args: args})
	if err != nil {
		return err
	}
	if _, _, err := c.WriteMsgUnix(append(line, '\n'), unix.UnixRights(int(stderr.Fd())), nil); err != nil {
		return fmt.Errorf("attach to the agent's main process: %w", err)
	}
	go func() {
		if _, err := io.Copy(c, stdin); err == nil {
			_ = c.CloseWrite()
		}
	}()
	if _, err := io.Copy(stdout, c); err != nil {
		return fmt.Errorf("session: %w", err)
	}
	return nil
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

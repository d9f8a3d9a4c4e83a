package cmd

import (
	"flag"
	"io"
	"math"

	"github.com/go-logr/logr"
	"github.com/spf13/cobra"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/textlogger"
)

// libraryLogLevel is the -v at which klog's unconditional lines (Info, Warning, Error and their
// structured forms, called without V) reach the terminal. They come from client-go and the libraries
// under it, never from trafficlab, whose own klog lines are all V(2) and up: at the default -v the
// user sees trafficlab's output only. 4 is where kubectl starts to show its debugging detail.
const libraryLogLevel = 4

// addKlogVerbosity exposes klog's -v and nothing else of klog (kubectl users know -v=6 for request
// tracing; every other klog flag would only clutter the help), and routes klog's output to errOut
// through a sink that honours -v for every line: klog itself prints errors and warnings whatever -v
// says, which put client-go's "Unknown stream id" and the like between a session's progress lines.
func addKlogVerbosity(cmd *cobra.Command, errOut io.Writer) {
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	v := fs.Lookup("v")
	cmd.PersistentFlags().AddGoFlag(v)
	cmd.PersistentFlags().Lookup("v").Shorthand = "v"
	cmd.PersistentFlags().Lookup("v").Usage = "number for the log level verbosity"
	klog.SetLogger(newKlogLogger(errOut, v.Value.(flag.Getter)))
}

// newKlogLogger writes klog's lines in klog's format to w, each only when verbosity (klog's -v)
// reaches its level; a line without a level counts as libraryLogLevel.
func newKlogLogger(w io.Writer, verbosity flag.Getter) logr.Logger {
	// The text logger's own verbosity check is never consulted: levelSink decides.
	text := textlogger.NewLogger(textlogger.NewConfig(textlogger.Output(w), textlogger.Verbosity(math.MaxInt32)))
	// +1: levelSink's methods stand between the caller and the text logger.
	inner := text.GetSink().(logr.CallDepthLogSink).WithCallDepth(1)
	return logr.New(&levelSink{inner: inner, verbosity: verbosity})
}

// levelSink passes a line to inner when the current -v reaches its level. It reads -v on every line
// because the flag is parsed after the logger is set, and klog calls it with klog's own lock held, so
// it reads the flag's value instead of asking klog.
type levelSink struct {
	inner     logr.LogSink
	verbosity flag.Getter
}

func (s *levelSink) v() int {
	l, _ := s.verbosity.Get().(klog.Level)
	return int(l)
}

func (s *levelSink) Init(logr.RuntimeInfo) {}

func (s *levelSink) Enabled(level int) bool {
	if level == 0 {
		level = libraryLogLevel
	}
	return s.v() >= level
}

func (s *levelSink) Info(level int, msg string, kv ...any) {
	if s.Enabled(level) {
		s.inner.Info(level, msg, kv...)
	}
}

func (s *levelSink) Error(err error, msg string, kv ...any) {
	if s.v() >= libraryLogLevel {
		s.inner.Error(err, msg, kv...)
	}
}

func (s *levelSink) WithValues(kv ...any) logr.LogSink {
	return &levelSink{inner: s.inner.WithValues(kv...), verbosity: s.verbosity}
}

func (s *levelSink) WithName(name string) logr.LogSink {
	return &levelSink{inner: s.inner.WithName(name), verbosity: s.verbosity}
}

func (s *levelSink) WithCallDepth(depth int) logr.LogSink {
	return &levelSink{inner: s.inner.(logr.CallDepthLogSink).WithCallDepth(depth), verbosity: s.verbosity}
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"runtime/pprof"
	"time"
)

// profileQuery is what `trafficlab-agent profile` asks the main process for: a CPU profile over
// Seconds, or a heap profile now. The profile carries function names, sample counts and allocation
// sizes of the agent's own code, never traffic; it is taken only on this request, over the same
// socket and peer check as a session (a process exec'd into the agent container), so it opens no
// port and costs nothing until asked for (docs/security.md).
type profileQuery struct {
	Kind    string `json:"kind"` // "cpu" or "heap"
	Seconds int    `json:"seconds,omitempty"`
}

// maxProfileSeconds bounds a CPU profile: the profiler's signal-driven sampling costs the agent a
// little CPU for as long as it runs.
const maxProfileSeconds = 300

func (q profileQuery) validate() error {
	switch {
	case q.Kind != "cpu" && q.Kind != "heap":
		return fmt.Errorf("--kind %q: use cpu or heap", q.Kind)
	case q.Kind == "cpu" && (q.Seconds < 1 || q.Seconds > maxProfileSeconds):
		return fmt.Errorf("--seconds %d: use 1 to %d", q.Seconds, maxProfileSeconds)
	}
	return nil
}

// profile answers a profile query on c: one JSON line (queryAnswer, its Error set when no profile
// follows), then the profile in pprof's format until c closes.
func (s *server) profile(ctx context.Context, c *net.UnixConn, q profileQuery) {
	reply := func(a queryAnswer) bool {
		line, _ := json.Marshal(a)
		_, err := c.Write(append(line, '\n'))
		return err == nil
	}
	if err := q.validate(); err != nil {
		reply(queryAnswer{Error: err.Error()})
		return
	}
	var err error
	switch q.Kind {
	case "heap":
		if reply(queryAnswer{}) {
			err = pprof.Lookup("heap").WriteTo(c, 0)
		}
	case "cpu":
		// One CPU profile at a time per process: a second request is refused, not queued.
		if err = pprof.StartCPUProfile(c); err != nil {
			reply(queryAnswer{Error: fmt.Sprintf("cpu profile: %v", err)})
			return
		}
		s.log.Info("cpu profile started", "seconds", q.Seconds)
		// The answer line goes first; the profiler writes only at StopCPUProfile, after it.
		reply(queryAnswer{})
		// The agent ending cuts the profile short; the part taken so far is still written.
		t := time.NewTimer(time.Duration(q.Seconds) * time.Second)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
		pprof.StopCPUProfile()
	}
	if err != nil {
		s.log.Warn("profile", "kind", q.Kind, "err", err)
	}
}

// profileConfig is the command line of `trafficlab-agent profile`.
type profileConfig struct {
	name string
	q    profileQuery
}

func profileFlags(args []string, stderr io.Writer) (profileConfig, error) {
	cfg := profileConfig{q: profileQuery{Kind: "cpu", Seconds: 30}}
	fs := flag.NewFlagSet("trafficlab-agent profile", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.name, "name", defaultName, "the agent container's name, which names the main process's session socket")
	fs.StringVar(&cfg.q.Kind, "kind", cfg.q.Kind, "cpu: sample the main process for --seconds; heap: its heap now")
	fs.IntVar(&cfg.q.Seconds, "seconds", cfg.q.Seconds, "with --kind=cpu: how long to sample")
	if err := parseFlags(fs, args, stderr); err != nil {
		return cfg, err
	}
	if err := cfg.q.validate(); err != nil {
		fmt.Fprintf(stderr, "trafficlab-agent profile: %v\n", err)
		return cfg, errUsage
	}
	return cfg, nil
}

// runProfile is `trafficlab-agent profile`, exec'd by hand (docs/performance.md): it asks the main
// process for a profile and writes it, in pprof's format, to stdout, e.g.
// `kubectl exec POD -c AGENT -- trafficlab-agent profile --name=AGENT --seconds=30 > cpu.pprof`.
func runProfile(args []string, stdout, stderr io.Writer) error {
	cfg, err := profileFlags(args, stderr)
	if err != nil {
		return err
	}
	// The answer comes once the sampling is over.
	_, br, done, err := askMain(cfg.name, header{Profile: &cfg.q}, time.Duration(cfg.q.Seconds)*time.Second+time.Minute)
	if err != nil {
		return err
	}
	defer done()
	n, err := io.Copy(stdout, br)
	if err != nil {
		return fmt.Errorf("read the profile: %w", err)
	}
	if n == 0 {
		return errors.New("the main process sent an empty profile")
	}
	return nil
}

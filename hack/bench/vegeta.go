package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"time"
)

// vegetaReport is the part of `vegeta report -type=json` the bench uses. Latencies are nanoseconds.
type vegetaReport struct {
	Latencies struct {
		Mean int64 `json:"mean"`
		P50  int64 `json:"50th"`
		P99  int64 `json:"99th"`
		Max  int64 `json:"max"`
	} `json:"latencies"`
	Requests    uint64         `json:"requests"`
	Rate        float64        `json:"rate"`       // requests sent per second
	Throughput  float64        `json:"throughput"` // successful responses per second, including the wait for the last
	Success     float64        `json:"success"`    // ratio of 2xx/3xx responses
	StatusCodes map[string]int `json:"status_codes"`
	Errors      []string       `json:"errors"`

	clientCores float64 // vegeta's own CPU (attack and report) over the run, in cores
}

func (r vegetaReport) p50() time.Duration { return time.Duration(r.Latencies.P50) }
func (r vegetaReport) p99() time.Duration { return time.Duration(r.Latencies.P99) }
func (r vegetaReport) max() time.Duration { return time.Duration(r.Latencies.Max) }

// String is the one-line summary the bench logs after every attack.
func (r vegetaReport) String() string {
	s := fmt.Sprintf("%d requests at %.0f/s, success %.4f, p50 %s, p99 %s, max %s, throughput %.0f/s",
		r.Requests, r.Rate, r.Success, ms(r.p50()), ms(r.p99()), ms(r.max()), r.Throughput)
	if len(r.Errors) > 0 {
		s += fmt.Sprintf(", errors: %s", strings.Join(firstN(r.Errors, 3), "; "))
	}
	return s
}

func firstN(s []string, n int) []string {
	sorted := append([]string(nil), s...)
	sort.Strings(sorted)
	return sorted[:min(n, len(sorted))]
}

// attack runs `vegeta attack | vegeta report -type=json` against one GET target: the binary, not the
// library, so its dependencies stay out of the main module, and its results are what anyone running
// vegeta by hand would get. vegeta paces requests at the given rate whatever the latency (it adds
// workers rather than waiting for answers), so a slow path shows up as latency and errors instead of
// as fewer requests sent.
//
// conns caps the connections: without a cap, a run beyond what the path sustains opens a connection
// per late request, thousands of them, and the ports they leave in TIME_WAIT make the next runs fail
// to connect at all. Requests waiting for a connection still count from their scheduled start.
//
// vegeta is the command that runs vegeta: its path, possibly behind a wrapper such as chrt.
func attack(ctx context.Context, vegeta []string, url string, rate, conns int, d time.Duration) (vegetaReport, error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return vegetaReport{}, err
	}
	atk := exec.CommandContext(ctx, vegeta[0], slices.Concat(vegeta[1:], []string{"attack",
		fmt.Sprintf("-rate=%d/s", rate), "-duration=" + d.String(), "-keepalive=true", "-timeout=5s",
		fmt.Sprintf("-max-connections=%d", conns)})...)
	atk.Stdin = strings.NewReader("GET " + url + "\n")
	atk.Stdout = pw
	var atkErr, repErr strings.Builder
	atk.Stderr = &atkErr
	rep := exec.CommandContext(ctx, vegeta[0], slices.Concat(vegeta[1:], []string{"report", "-type=json"})...)
	rep.Stdin = pr
	rep.Stderr = &repErr
	start := time.Now()
	if err := atk.Start(); err != nil {
		pr.Close()
		pw.Close()
		return vegetaReport{}, err
	}
	// The children hold their own copies; the report ends at EOF only once every writer is closed.
	pw.Close()
	out, repRunErr := rep.Output()
	pr.Close()
	atkRunErr := atk.Wait()
	wall := time.Since(start)
	if atkRunErr != nil {
		return vegetaReport{}, fmt.Errorf("vegeta attack: %w: %s", atkRunErr, strings.TrimSpace(atkErr.String()))
	}
	if repRunErr != nil {
		return vegetaReport{}, fmt.Errorf("vegeta report: %w: %s", repRunErr, strings.TrimSpace(repErr.String()))
	}
	var r vegetaReport
	if err := json.Unmarshal(out, &r); err != nil {
		return vegetaReport{}, fmt.Errorf("vegeta report: %w: %.200s", err, out)
	}
	// Both processes are the client; their CPU is known only from their rusage, as they come and go.
	for _, ps := range []*os.ProcessState{atk.ProcessState, rep.ProcessState} {
		if ps != nil && wall > 0 {
			r.clientCores += (ps.UserTime() + ps.SystemTime()).Seconds() / wall.Seconds()
		}
	}
	if r.Requests == 0 {
		return r, errors.New("vegeta sent no requests")
	}
	return r, nil
}

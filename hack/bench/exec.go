package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// execClientArg makes the bench binary the client that `kubectl trafficlab exec` runs: inside the
// command's namespace it measures what a local program gets through exec.
const execClientArg = "exec-client"

// clientResult is a result as the exec client prints it.
type clientResult struct {
	RandomMiBps, JSONMiBps float64
	KeepP50, KeepP99       time.Duration
	NewP50, NewP99         time.Duration
}

// execClient measures base (http://HOST:PORT) like measure does through a forwarder and prints the
// result as JSON: args are base, bytes per download and requests per latency run.
func execClient(args []string) error {
	if len(args) != 3 {
		return fmt.Errorf("usage: bench %s BASE-URL BYTES REQUESTS", execClientArg)
	}
	size, err := strconv.ParseInt(args[1], 10, 64)
	if err != nil {
		return err
	}
	requests, err := strconv.Atoi(args[2])
	if err != nil {
		return err
	}
	ctx, base := context.Background(), args[0]
	if err := waitHTTP(ctx, base+"/healthz"); err != nil {
		return err
	}
	var r clientResult
	if r.RandomMiBps, err = download(ctx, fmt.Sprintf("%s/bytes?n=%d", base, size)); err != nil {
		return err
	}
	if r.JSONMiBps, err = download(ctx, fmt.Sprintf("%s/json?n=%d", base, size)); err != nil {
		return err
	}
	if r.KeepP50, r.KeepP99, err = latency(ctx, base+"/healthz", requests, true); err != nil {
		return err
	}
	if r.NewP50, r.NewP99, err = latency(ctx, base+"/healthz", requests, false); err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(r)
}

// execSuite compares an outgoing connection from a local program through exec (user namespace,
// user-space stack, tunnel, agent's dial of the pod IP) with the same requests through port-forward,
// in one run.
func execSuite(ctx context.Context, m *machine, ns string, size int64, requests int) (string, error) {
	ip, err := kubectlOutput(ctx, "-n", ns, "get", "pod", "echo", "-o", "jsonpath={.status.podIP}")
	if err != nil {
		return "", err
	}
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	kubectls := kubectlForwarders(ns)
	var results []result
	for _, f := range append(kubectls[:], forwarder{name: "trafficlab port-forward", args: []string{"trafficlab", "port-forward", "-n", ns, "-q", "pod/echo"}}) {
		if err := m.waitQuiet(ctx); err != nil {
			return "", err
		}
		r, err := measure(ctx, f, size, requests)
		if err != nil {
			return "", fmt.Errorf("%s: %w", f.name, err)
		}
		results = append(results, r)
	}
	if err := m.waitQuiet(ctx); err != nil {
		return "", err
	}
	base := "http://" + net.JoinHostPort(strings.TrimSpace(ip), "8080")
	cmd := exec.CommandContext(ctx, "kubectl", "trafficlab", "exec", "-n", ns, "-q", "pod/echo", "--",
		self, execClientArg, base, strconv.FormatInt(size, 10), strconv.Itoa(requests))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("trafficlab exec: %w", err)
	}
	var cr clientResult
	if err := json.Unmarshal(out.Bytes(), &cr); err != nil {
		return "", fmt.Errorf("trafficlab exec client: %w: %.200s", err, out.String())
	}
	results = append(results, result{
		name: "trafficlab exec (pod IP from the command's namespace)", randomMiBps: cr.RandomMiBps, jsonMiBps: cr.JSONMiBps,
		keepP50: cr.KeepP50, keepP99: cr.KeepP99, newP50: cr.NewP50, newP99: cr.NewP99,
	})
	for _, r := range results {
		fmt.Fprintf(os.Stderr, "%s: random %.0f MiB/s, json %.0f MiB/s, keep-alive p50 %v p99 %v, new-conn p50 %v p99 %v\n",
			r.name, r.randomMiBps, r.jsonMiBps, r.keepP50, r.keepP99, r.newP50, r.newP99)
	}
	return "\n### Outgoing: exec vs port-forward\n" + render(results, size, requests), nil
}

package sessions

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/inject"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/target"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/transport"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// agentRef is one running agent container.
type agentRef struct {
	Namespace, Pod, Agent string
}

func (a agentRef) String() string {
	return fmt.Sprintf("agent %s in pod %s/%s", a.Agent, a.Namespace, a.Pod)
}

// asker is how the command reaches an agent: `trafficlab-agent sessions` exec'd into it, with args.
type asker interface {
	ask(ctx context.Context, a agentRef, args ...string) ([]byte, error)
}

// execAsker runs `trafficlab-agent sessions` in the agent container over pods/exec.
type execAsker struct {
	exec transport.Executor
}

// maxAnswer bounds what one agent may print; wire.ParseAgentSessions refuses more than that anyway.
const maxAnswer = 2 << 20

func (e *execAsker) ask(ctx context.Context, a agentRef, args ...string) ([]byte, error) {
	var out limitedBuffer
	out.max = maxAnswer
	var errOut limitedBuffer
	errOut.max = 4 << 10
	cmd := append([]string{inject.AgentBinary, "sessions", "--name=" + a.Agent}, args...)
	err := e.exec.Exec(ctx, transport.ExecRequest{Namespace: a.Namespace, Pod: a.Pod, Container: a.Agent,
		Command: cmd, Stdout: &out, Stderr: &errOut})
	if err != nil {
		// The agent's own last words say more than the exec's exit status.
		line := lastLine(errOut.String())
		if strings.HasPrefix(line, `unexpected arguments: ["sessions"`) {
			// An agent from before `sessions` takes it for its main process's arguments and refuses them.
			return nil, fmt.Errorf("the agent is older than `kubectl trafficlab sessions` (%s)", line)
		}
		if line != "" {
			return nil, fmt.Errorf("%s", strings.TrimPrefix(line, "trafficlab-agent: "))
		}
		return nil, err
	}
	return out.Bytes(), nil
}

// limitedBuffer keeps the first max bytes and drops the rest, so an agent cannot fill our memory.
type limitedBuffer struct {
	bytes.Buffer
	max int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.max + 1 - b.Len(); room > 0 {
		b.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// agents are the running agents of pods, in the pods' order.
func agents(pods []corev1.Pod) []agentRef {
	var refs []agentRef
	for i := range pods {
		if pods[i].Status.Phase != corev1.PodRunning {
			continue
		}
		for _, name := range inject.RunningAgents(&pods[i]) {
			refs = append(refs, agentRef{Namespace: pods[i].Namespace, Pod: pods[i].Name, Agent: name})
		}
	}
	return refs
}

// answer is one agent's reply to the listing.
type answer struct {
	agentRef
	agent wire.AgentSessions
	err   error
}

// maxParallel bounds the exec streams open at once: each is a connection through the API server and
// the kubelet.
const maxParallel = 16

// askAll asks every agent in parallel and returns their answers in the agents' order.
func askAll(ctx context.Context, ask asker, refs []agentRef) []answer {
	answers := make([]answer, len(refs))
	sem := make(chan struct{}, maxParallel)
	var wg sync.WaitGroup
	for i, ref := range refs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			answers[i].agentRef = ref
			b, err := ask.ask(ctx, ref)
			if err == nil {
				answers[i].agent, err = wire.ParseAgentSessions(b)
			}
			answers[i].err = err
		}()
	}
	wg.Wait()
	return answers
}

// found is what a listing found: the rows, and the agents that did not answer.
type found struct {
	sessions []Session
	failed   []answer
}

// collect lists the pods, asks their agents, and turns the answers into rows.
func collect(ctx context.Context, client kubernetes.Interface, namespace, resource string, ask asker) (found, error) {
	pods, err := target.Pods(ctx, client, namespace, resource)
	if err != nil {
		return found{}, err
	}
	var f found
	for _, a := range askAll(ctx, ask, agents(pods)) {
		if a.err != nil {
			f.failed = append(f.failed, a)
			continue
		}
		f.sessions = append(f.sessions, rows(a.agentRef, a.agent)...)
	}
	return f, nil
}

// reportFailed names each agent that did not answer, one line each, and fails if there was any.
func reportFailed(errOut io.Writer, failed []answer) error {
	for _, a := range failed {
		fmt.Fprintf(errOut, "warning: %s did not answer: %v\n", a.agentRef, a.err)
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d %s did not answer (see above)", len(failed), plural(len(failed), "agent", "agents"))
	}
	return nil
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// rows are an agent's sessions as the command shows them, or one idle row for an agent with none.
func rows(ref agentRef, a wire.AgentSessions) []Session {
	if len(a.Sessions) == 0 {
		return []Session{{Namespace: ref.Namespace, Pod: ref.Pod, Agent: ref.Agent, AgentVersion: a.Version,
			State: StateIdle, ExitsAt: a.ExitsAt}}
	}
	out := make([]Session, 0, len(a.Sessions))
	for _, s := range a.Sessions {
		out = append(out, Session{Namespace: ref.Namespace, Pod: ref.Pod, Agent: ref.Agent, AgentVersion: a.Version,
			State: StateActive, ID: s.ID, User: s.User, Host: s.Host, Verbs: slices.Clone(s.Verbs),
			Ports: slices.Clone(s.Ports), Filters: slices.Clone(s.Filters), Since: s.Since.UTC(),
			Bytes: s.Bytes, Connections: s.Connections, Requests: s.Requests})
	}
	return out
}

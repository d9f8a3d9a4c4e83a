package sessions

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"sigs.k8s.io/yaml"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/target"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/transport"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

var now = time.Date(2026, 12, 7, 18, 30, 0, 0, time.UTC)

func testItems() []Session {
	exits := now.Add(4 * time.Minute)
	return []Session{
		{Namespace: "dev", Pod: "api-1", Agent: "trafficlab-abcde", State: StateActive, ID: "0123456789ab", User: "alice",
			Host: "alice-laptop", Verbs: []string{"steal"}, Ports: []int{8080}, Filters: []string{"header=^X-Dev: alice$"},
			Since: now.Add(-90 * time.Second), Bytes: 4096, Connections: 3, Requests: 2},
		{Namespace: "dev", Pod: "api-1", Agent: "trafficlab-abcde", State: StateActive, ID: "ba9876543210", User: "bob\x1b[2J",
			Host: "build-7", Verbs: []string{"dial"}, Since: now.Add(-3 * time.Hour)},
		{Namespace: "prod", Pod: "web-0", Agent: "trafficlab-fghij", State: StateIdle, ExitsAt: &exits},
	}
}

// The table is kubectl's: upper-case headers, tab-aligned, wide columns only with -o wide, NAMESPACE
// only with -A, ages as kubectl prints them, and what an agent reported escaped.
func TestTable(t *testing.T) {
	for _, tt := range []struct {
		format string
		all    bool
		want   string
	}{
		{"", false, `
POD     AGENT              SESSION        USER         MACHINE        VERB                PORTS    FILTERS                 SINCE
api-1   trafficlab-abcde   0123456789ab   alice        alice-laptop   steal               8080     header=^X-Dev: alice$   90s
api-1   trafficlab-abcde   ba9876543210   bob\x1b[2J   build-7        dial                <none>   <none>                  3h
web-0   trafficlab-fghij   <none>                                     idle, exits in 4m                                    
`},
		{"wide", true, `
NAMESPACE   POD     AGENT              SESSION        USER         MACHINE        VERB                PORTS    FILTERS                 SINCE   BYTES   REQUESTS   CONNECTIONS
dev         api-1   trafficlab-abcde   0123456789ab   alice        alice-laptop   steal               8080     header=^X-Dev: alice$   90s     4096    2          3
dev         api-1   trafficlab-abcde   ba9876543210   bob\x1b[2J   build-7        dial                <none>   <none>                  3h      0       0          0
prod        web-0   trafficlab-fghij   <none>                                     idle, exits in 4m                                            0       0          0
`},
	} {
		var out bytes.Buffer
		if err := write(&out, tt.format, tt.all, now, testItems()); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(strings.TrimPrefix(tt.want, "\n"), out.String()); diff != "" {
			t.Errorf("-o %q, -A %v (-want +got):\n%s", tt.format, tt.all, diff)
		}
	}
}

// -o json and yaml print a versioned SessionList that reads back as what was listed.
func TestListOutput(t *testing.T) {
	for _, format := range []string{"json", "yaml"} {
		var out bytes.Buffer
		if err := write(&out, format, false, now, testItems()); err != nil {
			t.Fatal(err)
		}
		var got SessionList
		if err := yaml.Unmarshal(out.Bytes(), &got); err != nil {
			t.Fatalf("-o %s: %v\n%s", format, err, out.String())
		}
		want := SessionList{TypeMeta: metav1.TypeMeta{APIVersion: "trafficlab.dev/v1alpha1", Kind: "SessionList"}, Items: testItems()}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("-o %s read back (-want +got):\n%s", format, diff)
		}
	}
	var out bytes.Buffer
	if err := write(&out, "json", false, now, nil); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), `"items": []`) {
		t.Errorf("no session as json: %s, want an empty items list", out.String())
	}
}

// answers is an agent's answer per agent container, as `trafficlab-agent sessions` prints it; asks
// records what was asked of which agent.
type answers struct {
	by   map[string]string // agent name -> stdout, or "!" + error
	mu   sync.Mutex
	asks []string
}

func (a *answers) ask(_ context.Context, ref agentRef, args ...string) ([]byte, error) {
	a.mu.Lock()
	a.asks = append(a.asks, strings.TrimSpace(ref.Pod+" "+ref.Agent+" "+strings.Join(args, " ")))
	a.mu.Unlock()
	out := a.by[ref.Agent]
	if e, ok := strings.CutPrefix(out, "!"); ok {
		return nil, errors.New(e)
	}
	return []byte(out), nil
}

func agentPod(name string, agents map[string]bool) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "dev", Name: name}, Status: corev1.PodStatus{Phase: corev1.PodRunning}}
	for _, a := range []string{"trafficlab-aaaaa", "trafficlab-bbbbb", "debugger-ccccc"} {
		running, ok := agents[a]
		if !ok {
			continue
		}
		p.Spec.EphemeralContainers = append(p.Spec.EphemeralContainers, corev1.EphemeralContainer{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: a}})
		st := corev1.ContainerStatus{Name: a}
		if running {
			st.State.Running = &corev1.ContainerStateRunning{}
		} else {
			st.State.Terminated = &corev1.ContainerStateTerminated{}
		}
		p.Status.EphemeralContainerStatuses = append(p.Status.EphemeralContainerStatuses, st)
	}
	return p
}

func answerJSON(t *testing.T, a wire.AgentSessions) string {
	t.Helper()
	b, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Only running agent containers (named by inject's prefix) are asked; each answer becomes rows, an
// idle agent one row; an agent that fails is named and fails the command after the others printed.
func TestRunAsksRunningAgents(t *testing.T) {
	since := now.Add(-time.Minute)
	exits := now.Add(time.Minute)
	client := fake.NewClientset(
		agentPod("api-1", map[string]bool{"trafficlab-aaaaa": true, "trafficlab-bbbbb": false, "debugger-ccccc": true}),
		agentPod("api-2", map[string]bool{"trafficlab-bbbbb": true}),
		agentPod("api-3", map[string]bool{"trafficlab-aaaaa": true}),
		agentPod("plain", nil),
	)
	allowAll(client)
	ans := &answers{by: map[string]string{
		"trafficlab-aaaaa": answerJSON(t, wire.AgentSessions{Version: "v1", Sessions: []wire.SessionInfo{{ID: "0123456789ab", User: "alice", Host: "h", Verbs: []string{"steal"}, Ports: []int{80}, Since: since}}}),
		"trafficlab-bbbbb": answerJSON(t, wire.AgentSessions{Version: "v1", ExitsAt: &exits, Sessions: []wire.SessionInfo{}}),
	}}
	var out, errOut bytes.Buffer
	o := &Options{IOStreams: genericiooptions.IOStreams{Out: &out, ErrOut: &errOut}, Transport: "auto",
		namespace: "dev", kube: target.Kube{Client: client}, ask: ans, now: func() time.Time { return now }, Output: "json"}
	if err := o.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	var got SessionList
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	want := []Session{
		{Namespace: "dev", Pod: "api-1", Agent: "trafficlab-aaaaa", AgentVersion: "v1", State: StateActive, ID: "0123456789ab", User: "alice", Host: "h", Verbs: []string{"steal"}, Ports: []int{80}, Since: since},
		{Namespace: "dev", Pod: "api-2", Agent: "trafficlab-bbbbb", AgentVersion: "v1", State: StateIdle, ExitsAt: &exits},
		{Namespace: "dev", Pod: "api-3", Agent: "trafficlab-aaaaa", AgentVersion: "v1", State: StateActive, ID: "0123456789ab", User: "alice", Host: "h", Verbs: []string{"steal"}, Ports: []int{80}, Since: since},
	}
	if diff := cmp.Diff(want, got.Items); diff != "" {
		t.Errorf("listed (-want +got):\n%s", diff)
	}
	if len(ans.asks) != 3 {
		t.Errorf("asked %q, want the three running agents only", ans.asks)
	}

	ans.by["trafficlab-bbbbb"] = "!exec: container not found"
	ans.by["trafficlab-aaaaa"] = `{"sessions":[{"id":"x"}]}`
	out.Reset()
	o.Output = ""
	err := o.Run(context.Background())
	if err == nil || err.Error() != "3 agents did not answer (see above)" {
		t.Errorf("Run with failing agents = %v, want the count", err)
	}
	for _, w := range []string{
		"warning: agent trafficlab-bbbbb in pod dev/api-2 did not answer: exec: container not found\n",
		`warning: agent trafficlab-aaaaa in pod dev/api-1 did not answer: session id "x": malformed message` + "\n",
	} {
		if !strings.Contains(errOut.String(), w) {
			t.Errorf("stderr %q lacks %q", errOut.String(), w)
		}
	}
}

// allowAll answers every SelfSubjectAccessReview with allowed.
func allowAll(client *fake.Clientset) {
	client.PrependReactor("create", "selfsubjectaccessreviews", allowReview(func(string) bool { return true }))
}

// End finds the session among the agents and asks only its agent to end it, on behalf of this user.
func TestEnd(t *testing.T) {
	client := fake.NewClientset(agentPod("api-1", map[string]bool{"trafficlab-aaaaa": true}), agentPod("api-2", map[string]bool{"trafficlab-bbbbb": true}))
	allowAll(client)
	ans := &answers{by: map[string]string{
		"trafficlab-aaaaa": answerJSON(t, wire.AgentSessions{Sessions: []wire.SessionInfo{{ID: "0123456789ab", User: "alice", Host: "h"}}}),
		"trafficlab-bbbbb": answerJSON(t, wire.AgentSessions{Sessions: []wire.SessionInfo{{ID: "ba9876543210", User: "bob", Host: "b"}}}),
	}}
	var out, errOut bytes.Buffer
	o := &EndOptions{Options: Options{IOStreams: genericiooptions.IOStreams{Out: &out, ErrOut: &errOut}, Transport: "auto",
		namespace: "dev", kube: target.Kube{Client: client}, ask: ans, now: time.Now},
		ID: "ba9876543210", who: func(context.Context) target.Identity { return target.Identity{User: "carol", Host: "desk"} }}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := o.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, want := ans.asks[len(ans.asks)-1], "api-2 trafficlab-bbbbb --end=ba9876543210 --by-user=carol --by-host=desk"; got != want {
		t.Errorf("last ask %q, want %q", got, want)
	}
	if got, want := out.String(), "ended session ba9876543210 of bob (from b) in pod dev/api-2\n"; got != want {
		t.Errorf("stdout %q, want %q", got, want)
	}
	o.ID = "ffffffffffff"
	if err := o.Run(context.Background()); err == nil || err.Error() != `no session "ffffffffffff" in namespace dev` {
		t.Errorf("unknown session: %v", err)
	}
	o.ID = "alice"
	if err := o.Validate(); err == nil || !strings.Contains(err.Error(), `session ID "alice" is not one`) {
		t.Errorf("Validate of a bad id: %v", err)
	}
}

// Without exec on the pods, nothing is asked and the one line says what to add.
func TestRunPreflight(t *testing.T) {
	client := fake.NewClientset(agentPod("api-1", map[string]bool{"trafficlab-aaaaa": true}))
	client.PrependReactor("create", "selfsubjectaccessreviews", allowReview(func(key string) bool { return key == "list pods" }))
	ans := &answers{}
	o := &Options{IOStreams: genericiooptions.NewTestIOStreamsDiscard(), Transport: "auto", namespace: "dev",
		kube: target.Kube{Client: client}, ask: ans, now: time.Now}
	err := o.Run(context.Background())
	want := `missing RBAC permission: apiGroups: [""], resources: ["pods/exec"], verbs: ["create", "get"] in namespace "dev"`
	if err == nil || err.Error() != want || len(ans.asks) != 0 {
		t.Errorf("Run without exec = %v after asking %q, want %q and nothing asked", err, ans.asks, want)
	}
}

func TestValidate(t *testing.T) {
	for _, tt := range []struct {
		o    Options
		want string
	}{
		{Options{Output: "name", Transport: "auto"}, `--output must be wide, json or yaml, not "name"`},
		{Options{Resource: "deploy/api", AllNamespaces: true, Transport: "auto"}, `give TYPE/NAME "deploy/api" or --all-namespaces, not both`},
		{Options{Transport: "carrier-pigeon"}, "--transport"},
	} {
		if err := tt.o.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Validate(%+v) = %v, want %q", tt.o, err, tt.want)
		}
	}
	if err := (&Options{Output: "wide", Transport: "auto"}).Validate(); err != nil {
		t.Errorf("Validate of -o wide: %v", err)
	}
}

// allowReview answers SelfSubjectAccessReviews: allowed when allow("verb resource[/sub]").
func allowReview(allow func(key string) bool) k8stesting.ReactionFunc {
	return func(a k8stesting.Action) (bool, runtime.Object, error) {
		review := a.(k8stesting.CreateAction).GetObject().(*authorizationv1.SelfSubjectAccessReview).DeepCopy()
		ra := review.Spec.ResourceAttributes
		key := ra.Verb + " " + ra.Resource
		if ra.Subresource != "" {
			key += "/" + ra.Subresource
		}
		review.Status.Allowed = allow(key)
		return true, review, nil
	}
}

// execFunc is a transport.Executor that answers every exec with stdout, stderr and err.
type execFunc func(req transport.ExecRequest) error

func (f execFunc) Exec(_ context.Context, req transport.ExecRequest) error { return f(req) }

// The exec'd command is the agent's sessions subcommand in the agent's own container; its stderr's
// last line is the error, and an agent from before the subcommand is named as such.
func TestExecAsker(t *testing.T) {
	ref := agentRef{Namespace: "dev", Pod: "api-1", Agent: "trafficlab-aaaaa"}
	var got transport.ExecRequest
	a := &execAsker{exec: execFunc(func(req transport.ExecRequest) error {
		got = req
		_, _ = req.Stdout.Write([]byte(`{"sessions":[]}` + "\n"))
		return nil
	})}
	out, err := a.ask(context.Background(), ref, "--end=0123456789ab")
	if err != nil || string(out) != `{"sessions":[]}`+"\n" {
		t.Fatalf("ask = %q, %v", out, err)
	}
	if diff := cmp.Diff([]string{"/trafficlab-agent", "sessions", "--name=trafficlab-aaaaa", "--end=0123456789ab"}, got.Command); diff != "" || got.Container != ref.Agent || got.Pod != ref.Pod || got.Stdin != nil {
		t.Errorf("exec'd %+v (-want +got command):\n%s", got, diff)
	}
	for stderr, want := range map[string]string{
		"trafficlab-agent: no session \"0123456789ab\" in this agent\n":       `no session "0123456789ab" in this agent`,
		`unexpected arguments: ["sessions" "--name=trafficlab-aaaaa"]` + "\n": "the agent is older than `kubectl trafficlab sessions`",
		"": "command terminated with exit code 1",
	} {
		a.exec = execFunc(func(req transport.ExecRequest) error {
			_, _ = req.Stderr.Write([]byte(stderr))
			return errors.New("command terminated with exit code 1")
		})
		if _, err := a.ask(context.Background(), ref); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("with stderr %q: %v, want %q", stderr, err, want)
		}
	}
}

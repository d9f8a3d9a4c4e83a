package doctor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/version"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	fakediscovery "k8s.io/client-go/discovery/fake"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/trafficlab/kubectl-trafficlab/internal/cmdtest"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/inject"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/session"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/target"
	"github.com/trafficlab/kubectl-trafficlab/pkg/cli/exitcode"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

const testImage = "example.test/trafficlab-agent:v1"

// cluster is what the fake API server holds and refuses. Its patch reactor judges the agent container
// the way PodSecurity admission does for the fields the agent sets (capabilities.add against the
// baseline list, root and capabilities for restricted), and insists on dryRun=All.
type cluster struct {
	level string
	// denied are "verb resource[/sub]" refused by the authorizer and by access reviews.
	denied           []string
	nodesForbidden   bool
	nsForbidden      bool
	hooksForbidden   bool
	webhookNoDryRun  bool
	noEphemeral      bool
	runtime          string // containerd://1.7.24 unless set
	kernel           string // 6.8.0-45-generic unless set
	windowsNodeInfo  bool   // the node's status says windows, its label does not
	windowsNodeLabel bool
	podAnnotations   map[string]string
	istioSidecar     bool
	istioAmbient     bool
	// appNotRestricted: the pod's own container does not meet restricted (PodSecurity judges the
	// whole pod when a container is added).
	appNotRestricted  bool
	realPatches       *int // counts patches sent without dryRun=All
	patchedContainers *[]corev1.EphemeralContainer
}

func (c cluster) isDenied(verb, resource string) bool {
	return slices.Contains(c.denied, verb+" "+resource)
}

func forbidden(resource, msg string) error {
	return apierrors.NewForbidden(schema.GroupResource{Resource: resource}, "", errors.New(msg))
}

func (c cluster) client(t *testing.T) *fake.Clientset {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{}}}
	if c.level != "" {
		ns.Labels[inject.PodSecurityEnforceLabel] = c.level
	}
	rt, kernel := c.runtime, c.kernel
	if rt == "" {
		rt = "containerd://1.7.24"
	}
	if kernel == "" {
		kernel = "6.8.0-45-generic"
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1", Labels: map[string]string{corev1.LabelOSStable: "linux"}},
		Status: corev1.NodeStatus{NodeInfo: corev1.NodeSystemInfo{OperatingSystem: "linux", Architecture: "amd64", KernelVersion: kernel, ContainerRuntimeVersion: rt}}}
	if c.windowsNodeInfo {
		node.Status.NodeInfo.OperatingSystem = "windows"
		delete(node.Labels, corev1.LabelOSStable)
	}
	if c.windowsNodeLabel {
		node.Labels[corev1.LabelOSStable] = "windows"
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "shop", Annotations: c.podAnnotations},
		Spec:       corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{Name: "app", Image: "nginx"}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{
			{Name: "app", Ready: true, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}},
		}},
	}
	if c.istioSidecar {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: "istio-proxy", Image: "istio/proxyv2"})
	}
	if c.istioAmbient {
		pod.Annotations = map[string]string{"ambient.istio.io/redirection": "enabled"}
	}
	objs := []runtime.Object{ns, node, pod}
	if c.webhookNoDryRun {
		unknown := admissionregistrationv1.SideEffectClassUnknown
		objs = append(objs, &admissionregistrationv1.ValidatingWebhookConfiguration{
			ObjectMeta: metav1.ObjectMeta{Name: "audit"},
			Webhooks: []admissionregistrationv1.ValidatingWebhook{{Name: "log.audit.example", SideEffects: &unknown, Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.OperationAll},
				Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods/*"}},
			}}}},
		})
	}
	client := fake.NewClientset(objs...)
	v1 := &metav1.APIResourceList{GroupVersion: "v1", APIResources: []metav1.APIResource{{Name: "pods"}, {Name: "pods/exec"}, {Name: "pods/portforward"}}}
	if !c.noEphemeral {
		v1.APIResources = append(v1.APIResources, metav1.APIResource{Name: "pods/ephemeralcontainers"})
	}
	client.Resources = []*metav1.APIResourceList{v1}
	client.Discovery().(*fakediscovery.FakeDiscovery).FakedServerVersion = &version.Info{GitVersion: "v1.33.1"}

	client.PrependReactor("create", "selfsubjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		review := a.(k8stesting.CreateAction).GetObject().(*authorizationv1.SelfSubjectAccessReview).DeepCopy()
		ra := review.Spec.ResourceAttributes
		res := ra.Resource
		if ra.Subresource != "" {
			res += "/" + ra.Subresource
		}
		review.Status.Allowed = !c.isDenied(ra.Verb, res)
		return true, review, nil
	})
	client.PrependReactor("get", "nodes", func(k8stesting.Action) (bool, runtime.Object, error) {
		if c.nodesForbidden {
			return true, nil, forbidden("nodes", `User "dev" cannot get resource "nodes" in API group "" at the cluster scope`)
		}
		return false, nil, nil
	})
	client.PrependReactor("get", "namespaces", func(k8stesting.Action) (bool, runtime.Object, error) {
		if c.nsForbidden {
			return true, nil, forbidden("namespaces", `User "dev" cannot get resource "namespaces" in API group "" at the cluster scope`)
		}
		return false, nil, nil
	})
	for _, res := range []string{"validatingwebhookconfigurations", "mutatingwebhookconfigurations"} {
		client.PrependReactor("list", res, func(a k8stesting.Action) (bool, runtime.Object, error) {
			if c.hooksForbidden {
				return true, nil, forbidden(res, `User "dev" cannot list resource "`+res+`" in API group "admissionregistration.k8s.io" at the cluster scope`)
			}
			return false, nil, nil
		})
	}
	client.PrependReactor("patch", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		p := a.(k8stesting.PatchActionImpl)
		if p.GetSubresource() != "ephemeralcontainers" {
			t.Errorf("patch of pods/%s, want only pods/ephemeralcontainers", p.GetSubresource())
			return true, nil, errors.New("unexpected patch")
		}
		if !slices.Equal(p.PatchOptions.DryRun, []string{metav1.DryRunAll}) {
			if c.realPatches != nil {
				*c.realPatches++
			}
			t.Errorf("patch with dryRun %v: doctor must never change the pod", p.PatchOptions.DryRun)
		}
		var body struct {
			Spec struct {
				EphemeralContainers []corev1.EphemeralContainer `json:"ephemeralContainers"`
			} `json:"spec"`
		}
		if err := json.Unmarshal(p.GetPatch(), &body); err != nil || len(body.Spec.EphemeralContainers) != 1 {
			t.Errorf("patch %s does not add one ephemeral container (%v)", p.GetPatch(), err)
			return true, nil, errors.New("bad patch")
		}
		agent := body.Spec.EphemeralContainers[0]
		if c.patchedContainers != nil {
			*c.patchedContainers = append(*c.patchedContainers, agent)
		}
		if c.isDenied("patch", "pods/ephemeralcontainers") {
			return true, nil, forbidden("pods/ephemeralcontainers", `User "dev" cannot patch resource "pods/ephemeralcontainers" in API group "" in the namespace "shop"`)
		}
		if c.webhookNoDryRun {
			return true, nil, apierrors.NewBadRequest(`admission webhook "log.audit.example" does not support dry run`)
		}
		if c.appNotRestricted && c.level == "restricted" {
			return true, nil, forbidden("pods", `violates PodSecurity "restricted:latest": runAsNonRoot != true (pod or container "app" must set securityContext.runAsNonRoot=true)`)
		}
		if why := podSecurity(c.level, agent); why != "" {
			return true, nil, forbidden("pods", fmt.Sprintf(`violates PodSecurity "%s:latest": %s`, c.level, why))
		}
		return true, pod, nil
	})
	return client
}

// podSecurity is PodSecurity's judgement of the fields the agent sets.
func podSecurity(level string, c corev1.EphemeralContainer) string {
	sc := c.SecurityContext
	baselineAdds := []corev1.Capability{"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
	switch level {
	case "baseline":
		for _, cp := range sc.Capabilities.Add {
			if !slices.Contains(baselineAdds, cp) {
				return fmt.Sprintf("non-default capabilities (container %q must not include %q in securityContext.capabilities.add)", c.Name, cp)
			}
		}
	case "restricted":
		for _, cp := range sc.Capabilities.Add {
			if cp != "NET_BIND_SERVICE" {
				return fmt.Sprintf("unrestricted capabilities (container %q must not include %q in securityContext.capabilities.add)", c.Name, cp)
			}
		}
		if sc.RunAsUser != nil && *sc.RunAsUser == 0 {
			return fmt.Sprintf("runAsUser=0 (container %q must not set runAsUser=0)", c.Name)
		}
		if !slices.Contains(sc.Capabilities.Drop, "ALL") {
			return fmt.Sprintf("unrestricted capabilities (container %q must set securityContext.capabilities.drop=[\"ALL\"])", c.Name)
		}
	}
	return ""
}

func agentOptions() session.Options {
	o := session.NewOptions()
	o.AgentImage, o.AgentImageSource = testImage, "--agent-image"
	return o
}

func diagnose(t *testing.T, c cluster, resource string) *Report {
	t.Helper()
	in := Input{Namespace: "shop", Target: target.Options{Resource: resource}, Agent: agentOptions()}
	rep, err := Diagnose(context.Background(), c.client(t), in, nil)
	if err != nil {
		t.Fatalf("Diagnose: %v", err)
	}
	return rep
}

func statuses(lines []Line) map[string]Status {
	m := map[string]Status{}
	for _, l := range lines {
		m[l.Name] = l.Status
	}
	return m
}

func find(t *testing.T, lines []Line, name string) Line {
	t.Helper()
	for _, l := range lines {
		if l.Name == name {
			return l
		}
	}
	t.Fatalf("no line %q in %+v", name, lines)
	return Line{}
}

func allVerbs(s Status) map[string]Status {
	return map[string]Status{"steal": s, "mirror-redirect": s, "mirror-sniff": s, "dump": s, "port-forward": s, "exec": s}
}

func TestDiagnoseVerbs(t *testing.T) {
	const (
		ok      = StatusOK
		fail    = StatusFail
		warn    = StatusWarn
		unknown = StatusUnknown
	)
	tests := []struct {
		name      string
		cluster   cluster
		resource  string
		wantVerbs map[string]Status
		wantCode  int
		// wantIn are substrings of "name: message (how) fix" of the lines named.
		wantIn map[string][]string
	}{
		{
			name: "privileged namespace: every verb", cluster: cluster{level: "privileged"}, resource: "pod/web-1",
			wantVerbs: allVerbs(ok), wantCode: ExitUsable,
			wantIn: map[string][]string{
				"steal":        {`server dry run accepted the agent container (NET_ADMIN) in pod "shop/web-1"`},
				"port-forward": {"(no capability, non-root)"},
				"kernel":       {"6.8.0-45-generic (5.12+)"},
				"runtime":      {"containerd 1.7.24, which gives containers NET_RAW by default"},
			},
		},
		{
			name: "baseline: NET_ADMIN refused, NET_RAW kept from the runtime admitted", cluster: cluster{level: "baseline"}, resource: "pod/web-1",
			wantVerbs: map[string]Status{"steal": fail, "mirror-redirect": fail, "mirror-sniff": ok, "dump": ok, "port-forward": ok, "exec": ok},
			wantCode:  ExitUnusable,
			wantIn: map[string][]string{
				"steal":       {`violates PodSecurity "baseline:latest": non-default capabilities (the agent container must not include "NET_ADMIN"`, `level that admits it on namespace "shop"`},
				"dump":        {"NET_RAW kept from the runtime's default", "--add-net-raw (for runtimes without NET_RAW by default) is refused here"},
				"podsecurity": {`enforces PodSecurity "baseline", which admits the agent of: mirror-sniff, dump, port-forward, exec`},
			},
		},
		{
			name: "restricted: only the verbs without capability", cluster: cluster{level: "restricted"}, resource: "pod/web-1",
			wantVerbs: map[string]Status{"steal": fail, "mirror-redirect": fail, "mirror-sniff": fail, "dump": fail, "port-forward": ok, "exec": ok},
			wantCode:  ExitUnusable,
			wantIn:    map[string][]string{"dump": {`PodSecurity "restricted:latest"`, "runAsUser=0 (the agent container must not set runAsUser=0)"}},
		},
		{
			name: "restricted, and the app itself is not: no agent at all", cluster: cluster{level: "restricted", appNotRestricted: true}, resource: "pod/web-1",
			wantVerbs: allVerbs(fail), wantCode: ExitUnusable,
			wantIn: map[string][]string{"exec": {`container "app" must set securityContext.runAsNonRoot=true`, "the pod's own containers violate the level", "target a pod that meets the namespace's level"}},
		},
		{
			name: "no pods/portforward: every verb, data over exec", cluster: cluster{level: "privileged", denied: []string{"create pods/portforward", "get pods/portforward"}}, resource: "pod/web-1",
			wantVerbs: allVerbs(warn), wantCode: ExitUsable,
			wantIn: map[string][]string{
				"rbac-port-forward": {"data over exec", `add this rule to a Role bound to you in namespace "shop": {apiGroups: [""], resources: ["pods/portforward"], verbs: ["create", "get"]}`},
				"steal":             {"(data over exec, slower: pods/portforward is forbidden)", `resources: ["pods/portforward"]`},
			},
		},
		{
			name: "no pods/exec: nothing", cluster: cluster{level: "privileged", denied: []string{"create pods/exec", "get pods/exec"}}, resource: "pod/web-1",
			wantVerbs: allVerbs(fail), wantCode: ExitUnusable,
			wantIn: map[string][]string{"exec": {`resources: ["pods/exec"], verbs: ["create", "get"]`}},
		},
		{
			name: "patch forbidden: the access review and the dry run say so", cluster: cluster{level: "privileged", denied: []string{"patch pods/ephemeralcontainers"}}, resource: "pod/web-1",
			wantVerbs: allVerbs(fail), wantCode: ExitUnusable,
			wantIn: map[string][]string{
				"rbac-agent": {`{apiGroups: [""], resources: ["pods/ephemeralcontainers"], verbs: ["patch"]}`},
				"dump":       {`add this rule to a Role bound to you in namespace "shop"`},
			},
		},
		{
			name: "a webhook without dry run: unknown", cluster: cluster{level: "privileged", webhookNoDryRun: true}, resource: "pod/web-1",
			wantVerbs: allVerbs(unknown), wantCode: ExitUnknown,
			wantIn: map[string][]string{
				"webhooks": {"audit/log.audit.example see the agent's patch but have side effects on dry run"},
				"steal":    {`admission webhook "log.audit.example" does not support dry run`},
			},
		},
		{
			name: "webhooks, nodes and the namespace unreadable: the dry run still answers", cluster: cluster{level: "privileged", nodesForbidden: true, nsForbidden: true, hooksForbidden: true}, resource: "pod/web-1",
			wantVerbs: allVerbs(ok), wantCode: ExitUsable,
			wantIn: map[string][]string{
				"kernel":      {`cannot read node "node-1" (forbidden)`},
				"runtime":     {`cannot read node "node-1" (forbidden)`, "--add-net-raw"},
				"node":        {"operating system is not known"},
				"webhooks":    {"cannot list admission webhook configurations (forbidden)"},
				"podsecurity": {`cannot read namespace "shop" (forbidden)`},
			},
		},
		{
			name: "Windows node by its status", cluster: cluster{level: "privileged", windowsNodeInfo: true}, resource: "pod/web-1",
			wantVerbs: allVerbs(fail), wantCode: ExitUnusable,
			wantIn: map[string][]string{"node": {`runs on Windows node "node-1"; the agent runs on Linux only`}, "exec": {"Windows node"}},
		},
		{
			name: "Windows node by its label: refused as the verbs refuse it", cluster: cluster{level: "privileged", windowsNodeLabel: true}, resource: "pod/web-1",
			wantVerbs: allVerbs(fail), wantCode: ExitUnusable,
			wantIn: map[string][]string{"pod": {`runs on Windows node "node-1"`}},
		},
		{
			name: "Istio sidecar: the redirecting verbs come after it", cluster: cluster{level: "privileged", istioSidecar: true}, resource: "pod/web-1",
			wantVerbs: allVerbs(ok), wantCode: ExitUsable,
			wantIn: map[string][]string{"mesh": {`Istio's sidecar mode (container "istio-proxy")`, "after it"}},
		},
		{
			name: "Istio ambient: the redirecting verbs refused", cluster: cluster{level: "privileged", istioAmbient: true}, resource: "pod/web-1",
			wantVerbs: map[string]Status{"steal": fail, "mirror-redirect": fail, "mirror-sniff": ok, "dump": ok, "port-forward": ok, "exec": ok},
			wantCode:  ExitUnusable,
			wantIn: map[string][]string{
				"mesh":  {"Istio's ambient mode", "are refused in this pod"},
				"steal": {`is in Istio's ambient mode`, "steal is refused there"},
			},
		},
		{
			name: "CRI-O: the sniffing verbs with --add-net-raw", cluster: cluster{level: "privileged", runtime: "cri-o://1.30.2"}, resource: "pod/web-1",
			wantVerbs: allVerbs(ok), wantCode: ExitUsable,
			wantIn: map[string][]string{"dump": {"NET_RAW added by --add-net-raw", "(with --add-net-raw)"}, "runtime": {"CRI-O 1.30.2, which gives no NET_RAW by default"}},
		},
		{
			name: "CRI-O in baseline: no sniffing", cluster: cluster{level: "baseline", runtime: "cri-o://1.30.2"}, resource: "pod/web-1",
			wantVerbs: map[string]Status{"steal": fail, "mirror-redirect": fail, "mirror-sniff": fail, "dump": fail, "port-forward": ok, "exec": ok},
			wantCode:  ExitUnusable,
		},
		{
			name: "old kernel: a hint, not a failure", cluster: cluster{level: "privileged", kernel: "5.10.0-28-amd64"}, resource: "pod/web-1",
			wantVerbs: allVerbs(ok), wantCode: ExitUsable,
			wantIn: map[string][]string{"kernel": {"older than 5.12", "TPROXY fallback"}},
		},
		{
			name: "no ephemeral containers", cluster: cluster{level: "privileged", noEphemeral: true}, resource: "pod/web-1",
			wantVerbs: allVerbs(fail), wantCode: ExitUnusable,
			wantIn: map[string][]string{"ephemeral-containers": {"not supported by this cluster"}},
		},
		{
			name: "no target, baseline: the certain failures, the rest unknown", cluster: cluster{level: "baseline"},
			wantVerbs: map[string]Status{"steal": fail, "mirror-redirect": fail, "mirror-sniff": unknown, "dump": unknown, "port-forward": unknown, "exec": unknown},
			wantCode:  ExitUnusable,
			wantIn: map[string][]string{
				"pod":  {"need a target pod"},
				"dump": {`PodSecurity "baseline" admits the agent container (NET_RAW kept from the runtime's default)`, "doctor pod/NAME"},
			},
		},
		{
			name: "no target, no label: unknown", cluster: cluster{},
			wantVerbs: allVerbs(unknown), wantCode: ExitUnknown,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep := diagnose(t, tt.cluster, tt.resource)
			if diff := cmp.Diff(tt.wantVerbs, statuses(rep.Verbs)); diff != "" {
				t.Errorf("verbs (-want +got):\n%s\n%+v", diff, rep)
			}
			if rep.ExitCode != tt.wantCode {
				t.Errorf("exit code %d, want %d", rep.ExitCode, tt.wantCode)
			}
			all := append(append([]Line(nil), rep.Checks...), rep.Verbs...)
			for name, subs := range tt.wantIn {
				l := find(t, all, name)
				text := l.Message + " (" + l.How + ") " + l.Fix
				for _, s := range subs {
					if !strings.Contains(text, s) {
						t.Errorf("%s: %q does not contain %q", name, text, s)
					}
				}
			}
		})
	}
}

// The dry run sends the container a verb would add: BuildAgentContainer from the session's own
// AgentSpec, so with the verbs' image, security context and idle timeout.
func TestDryRunSendsTheVerbsContainer(t *testing.T) {
	var sent []corev1.EphemeralContainer
	reals := 0
	c := cluster{level: "privileged", patchedContainers: &sent, realPatches: &reals}
	diagnose(t, c, "pod/web-1")
	if reals != 0 {
		t.Fatalf("%d patches without dryRun=All", reals)
	}
	if len(sent) != 4 {
		t.Fatalf("%d dry runs, want 4 (no capability, NET_RAW kept, NET_RAW added, NET_ADMIN)", len(sent))
	}
	o := agentOptions()
	pod := &corev1.Pod{}
	for i, v := range []variant{{}, {caps: inject.NetRaw}, {caps: inject.NetRaw, addNetRaw: true}, {caps: inject.NetAdmin}} {
		spec, err := o.AgentSpec(v.caps, v.addNetRaw)
		if err != nil {
			t.Fatal(err)
		}
		spec.NameSuffix = func(int) string { return "fixed" }
		want := inject.BuildAgentContainer(pod, spec)
		got := sent[i]
		got.Name = want.Name
		got.Args[0] = want.Args[0]
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("dry run %d (%s) sent another container (-want +got):\n%s", i, v, diff)
		}
	}
}

// The JSON field names are what scripts read: the golden file pins them.
func TestJSONGolden(t *testing.T) {
	var out, errOut bytes.Buffer
	o := NewOptions(genericiooptions.IOStreams{Out: &out, ErrOut: &errOut}, nil)
	o.Agent = agentOptions()
	o.Output = "json"
	o.Target = target.Options{Namespace: "shop", Resource: "pod/web-1"}
	o.client = cluster{level: "baseline", nodesForbidden: true}.client(t)
	err := o.Run(context.Background())
	var exit *exitcode.Error
	if !errors.As(err, &exit) || exit.Code != ExitUnusable {
		t.Fatalf("Run: %v, want exit code %d", err, ExitUnusable)
	}
	if !strings.Contains(errOut.String(), "] dry run: adding an agent (NET_ADMIN) to pod shop/web-1\n") {
		t.Errorf("progress lines:\n%s", errOut.String())
	}
	const golden = "testdata/baseline.json"
	if *update {
		if err := os.WriteFile(golden, out.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(want), out.String()); diff != "" {
		t.Errorf("JSON (-want +got):\n%s", diff)
	}
}

func TestText(t *testing.T) {
	rep := &Report{
		Checks: []Line{{Name: "rbac-port-forward", Status: StatusWarn, Message: "pods/portforward is forbidden", Fix: "add this rule"}},
		Verbs: []Line{
			{Name: "steal", Status: StatusFail, Message: "refused"},
			{Name: "dump", Status: StatusWarn, Message: "accepted", How: "data over exec"},
			{Name: "exec", Status: StatusUnknown, Message: "cannot tell"},
		},
	}
	var b bytes.Buffer
	if err := rep.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	want := "" +
		"WARN     rbac-port-forward    pods/portforward is forbidden; add this rule\n" +
		"FAIL     steal                refused\n" +
		"WARN     dump                 accepted (data over exec)\n" +
		"UNKNOWN  exec                 cannot tell\n" +
		"usable: dump; unusable: steal; unknown: exec\n"
	if diff := cmp.Diff(want, b.String()); diff != "" {
		t.Errorf("text (-want +got):\n%s", diff)
	}
}

func TestSeesEphemeralPatch(t *testing.T) {
	rule := func(ops []admissionregistrationv1.OperationType, groups, resources []string) []admissionregistrationv1.RuleWithOperations {
		return []admissionregistrationv1.RuleWithOperations{{Operations: ops, Rule: admissionregistrationv1.Rule{APIGroups: groups, APIVersions: []string{"*"}, Resources: resources}}}
	}
	update, create := []admissionregistrationv1.OperationType{"UPDATE"}, []admissionregistrationv1.OperationType{"CREATE"}
	core := []string{""}
	tests := []struct {
		name  string
		rules []admissionregistrationv1.RuleWithOperations
		want  bool
	}{
		{"the subresource", rule(update, core, []string{"pods/ephemeralcontainers"}), true},
		{"pods/*", rule(update, core, []string{"pods/*"}), true},
		{"*/*", rule([]admissionregistrationv1.OperationType{"*"}, []string{"*"}, []string{"*/*"}), true},
		{"pods alone is not the subresource", rule(update, core, []string{"pods"}), false},
		{"* alone is no subresource", rule(update, core, []string{"*"}), false},
		{"create only", rule(create, core, []string{"pods/ephemeralcontainers"}), false},
		{"another group", rule(update, []string{"apps"}, []string{"*/*"}), false},
	}
	for _, tt := range tests {
		if got := seesEphemeralPatch(tt.rules); got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestParseKernelVersion(t *testing.T) {
	tests := []struct {
		in           string
		major, minor int
		ok           bool
	}{
		{"5.15.0-91-generic", 5, 15, true},
		{"6.8.0-1015-aws", 6, 8, true},
		{"4.19.112+", 4, 19, true},
		{"5.12", 5, 12, true},
		{"6", 0, 0, false},
		{"", 0, 0, false},
		{"a.b", 0, 0, false},
		{"-1.5", 0, 0, false},
		{"5.-3", 0, 0, false},
	}
	for _, tt := range tests {
		major, minor, ok := parseKernelVersion(tt.in)
		if major != tt.major || minor != tt.minor || ok != tt.ok {
			t.Errorf("parseKernelVersion(%q) = %d, %d, %v; want %d, %d, %v", tt.in, major, minor, ok, tt.major, tt.minor, tt.ok)
		}
	}
}

func FuzzParseKernelVersion(f *testing.F) {
	for _, s := range []string{"5.15.0-91-generic", "6.8.0", "4.19.112+", "", "5.", ".5", "99999.1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		major, minor, ok := parseKernelVersion(s)
		if !ok {
			if major != 0 || minor != 0 {
				t.Errorf("%q: not ok but %d.%d", s, major, minor)
			}
			return
		}
		if s[0] < '0' || s[0] > '9' || major > 9999 || minor > 9999 {
			t.Errorf("%q read as %d.%d", s, major, minor)
		}
		if ma, mi, ok := parseKernelVersion(fmt.Sprintf("%d.%d", major, minor)); !ok || ma != major || mi != minor {
			t.Errorf("%q read as %d.%d, which reads back as %d.%d, %v", s, major, minor, ma, mi, ok)
		}
	})
}

func TestCommandLine(t *testing.T) {
	tests := []struct {
		args    []string
		wantErr string
	}{
		{args: []string{"pod/web"}},
		{args: nil},
		{args: []string{"-l", "app=web"}},
		{args: []string{"pod/web", "pod/api"}, wantErr: `doctor takes at most one TYPE/NAME, got ["pod/web" "pod/api"]`},
		{args: []string{"pod/web", "-l", "app=web"}, wantErr: `give TYPE/NAME "pod/web" or --selector "app=web", not both`},
		{args: []string{"-o", "yaml"}, wantErr: `--output must be json or empty, not "yaml"`},
		{args: []string{"-c", "app"}, wantErr: "--container needs TYPE/NAME or --selector"},
		{args: []string{"pod/web", "--image-pull-policy", "Sometimes"}, wantErr: `--image-pull-policy must be Always, IfNotPresent or Never, not "Sometimes"`},
		{args: []string{"pod/web", "--agent-registry", "registry.example.com/mirror"}},
		{args: []string{"pod/web", "--agent-registry", "registry.example.com/mirror", "--agent-image", "example.test/agent:v1"}, wantErr: "--agent-image and --agent-registry cannot be used together: --agent-registry moves the released image to another registry, --agent-image names the image itself"},
		{args: []string{"pod/web", "--agent-image", "example.test/agent:v1:v2"}, wantErr: `--agent-image "example.test/agent:v1:v2" is not a valid image reference: invalid reference format`},
	}
	for _, tt := range tests {
		o := NewOptions(genericiooptions.NewTestIOStreamsDiscard(), cmdtest.ConfigFlags(t))
		err := cmdtest.Parse(newCmd(o), o.Complete, o.Validate, tt.args...)
		got := ""
		if err != nil {
			got = err.Error()
		}
		if got != tt.wantErr {
			t.Errorf("%q: error %q, want %q", tt.args, got, tt.wantErr)
		}
		if err == nil && o.Target.Namespace != "shop" {
			t.Errorf("%q: namespace %q, want the kubeconfig's", tt.args, o.Target.Namespace)
		}
	}
}

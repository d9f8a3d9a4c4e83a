package doctor

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/inject"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/mesh"
	agentmirror "github.com/trafficlab/kubectl-trafficlab/pkg/agent/mirror"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/session"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/steal"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/target"
	"github.com/trafficlab/kubectl-trafficlab/pkg/cli/progress"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// Input is what doctor looks at.
type Input struct {
	Namespace string
	// Target names the pod; with neither Resource nor Selector set only the namespace is checked.
	Target target.Options
	// Agent gives the agent image and pull policy the dry runs send, as the verbs would.
	Agent session.Options
}

func (in Input) hasTarget() bool { return in.Target.Resource != "" || in.Target.Selector != "" }

// variant is one agent container a verb may add: its capabilities, and NET_RAW added rather than kept
// from the runtime's default (--add-net-raw).
type variant struct {
	caps      inject.Capabilities
	addNetRaw bool
}

func (v variant) String() string {
	switch {
	case v.caps == 0:
		return "no capability, non-root"
	case v.caps == inject.NetRaw && !v.addNetRaw:
		return "NET_RAW kept from the runtime's default"
	case v.caps == inject.NetRaw:
		return "NET_RAW added by --add-net-raw"
	}
	return v.caps.String()
}

// verb is one verb as doctor judges it, with the capabilities the verb itself asks for.
type verb struct {
	name    string
	variant variant
	// redirects: the verb redirects the pod's incoming traffic and is refused in a meshed pod.
	redirects bool
	// sniffs: the verb keeps the runtime's NET_RAW unless --add-net-raw.
	sniffs bool
}

func verbs() []verb {
	return []verb{
		{name: "steal", variant: variant{caps: steal.Capabilities}, redirects: true},
		{name: "mirror-redirect", variant: variant{caps: (&agentmirror.Options{Mode: wire.MirrorRedirect}).Capabilities()}, redirects: true},
		{name: "mirror-sniff", variant: variant{caps: (&agentmirror.Options{Mode: wire.MirrorSniff}).Capabilities()}, sniffs: true},
		{name: "dump", variant: variant{caps: inject.NetRaw}, sniffs: true},
		{name: "port-forward"},
		{name: "exec"},
	}
}

// diagnosis gathers what the checks found, for the verbs' verdicts.
type diagnosis struct {
	client kubernetes.Interface
	in     Input
	p      *progress.Printer
	rep    Report

	// blockers fail every verb (no ephemeral containers, RBAC for the agent or exec, a refused pod).
	blockers []Line
	// doubts make every verb that would work unknown (an access review that did not answer).
	doubts []string
	// pfFix is set when pods/portforward is forbidden: data then goes over exec.
	pfFix string
	// level is the namespace's PodSecurity enforce label, when it could be read and is set.
	level string
	pod   *corev1.Pod
	mesh  mesh.Mesh
	// noRawDefault: the node's runtime is known to give no NET_RAW by default (CRI-O).
	noRawDefault bool
	dryRuns      map[variant]Line
}

// Diagnose runs every check doctor knows, reading only. It fails only when the server cannot be asked
// at all or the target cannot be found; everything else is a line of the report.
func Diagnose(ctx context.Context, client kubernetes.Interface, in Input, p *progress.Printer) (*Report, error) {
	d := &diagnosis{client: client, in: in, p: p, rep: Report{Namespace: in.Namespace, Checks: []Line{}, Verbs: []Line{}}, dryRuns: map[variant]Line{}}
	if err := d.server(); err != nil {
		return nil, err
	}
	if err := d.agentImage(); err != nil {
		return nil, err
	}
	var refused *target.PodRefusedError
	var tgt *target.Target
	if in.hasTarget() {
		var err error
		if tgt, err = d.resolve(ctx); errors.As(err, &refused) {
			tgt = nil
		} else if err != nil {
			return nil, err
		}
	}
	d.rbac(ctx)
	d.podSecurity(ctx)
	d.webhooks(ctx)
	switch {
	case refused != nil:
		d.block(Line{Name: "pod", Status: StatusFail, Message: refused.Error()})
	case tgt != nil:
		d.inspect(ctx, tgt)
	default:
		d.add(Line{Name: "pod", Status: StatusSkip, Message: "no TYPE/NAME given: the server's dry run of each verb's agent, the node's kernel, runtime and operating system and a service mesh need a target pod (kubectl trafficlab doctor pod/NAME)"})
	}
	for _, v := range verbs() {
		d.rep.Verbs = append(d.rep.Verbs, d.verdict(v))
	}
	d.rep.ExitCode = exitCode(d.rep.Verbs)
	return &d.rep, nil
}

func (d *diagnosis) add(l Line) { d.rep.Checks = append(d.rep.Checks, l) }

func (d *diagnosis) block(l Line) {
	d.add(l)
	d.blockers = append(d.blockers, l)
}

// server asks for the version and whether ephemeral containers are served; a server that does not
// answer ends doctor with its error, since nothing else could be checked.
func (d *diagnosis) server() error {
	d.p.Stepf("asking the API server for its version")
	v, err := d.client.Discovery().ServerVersion()
	if err != nil {
		return fmt.Errorf("asking the API server for its version: %w", err)
	}
	d.add(Line{Name: "server", Status: StatusOK, Message: "Kubernetes " + v.GitVersion})
	switch served, known := target.EphemeralContainersServed(d.client); {
	case !known:
		d.add(Line{Name: "ephemeral-containers", Status: StatusUnknown, Message: "discovery did not list the core API's resources; the dry run tells"})
	case !served:
		d.block(Line{Name: "ephemeral-containers", Status: StatusFail, Message: string(inject.ErrEphemeralContainersUnsupported), Fix: "upgrade the cluster"})
	default:
		d.add(Line{Name: "ephemeral-containers", Status: StatusOK, Message: "pods/ephemeralcontainers is served"})
	}
	return nil
}

// agentImage reports the image the dry runs send and the verbs would add, where it came from, and
// whether it is pinned by digest.
func (d *diagnosis) agentImage() error {
	image, err := d.in.Agent.Image()
	if err != nil {
		return err
	}
	pinned := "pinned by digest"
	if !image.Pinned {
		pinned = "not pinned: the tag alone names it"
	}
	d.add(Line{Name: "agent-image", Status: StatusOK, Message: fmt.Sprintf("%s (%s; %s)", image.Ref, image.Source, pinned)})
	return nil
}

// rbac runs the verbs' own preflight (SelfSubjectAccessReviews) in three parts, because a missing
// pods/portforward only moves data to exec while the others stop every verb.
func (d *diagnosis) rbac(ctx context.Context) {
	d.p.Stepf("checking RBAC in namespace %s", d.in.Namespace)
	podName := "" // without a target, namespace-wide
	if d.pod != nil {
		podName = d.pod.Name
	}
	parts := []struct {
		name  string
		needs target.Needs
		what  string
	}{
		{"rbac-agent", target.Needs{Inject: true}, "may add the agent (patch pods/ephemeralcontainers) and follow its start (list and watch pods)"},
		{"rbac-exec", target.Needs{Exec: true}, "may exec into the agent (pods/exec, the control stream)"},
		{"rbac-port-forward", target.Needs{PortForward: true}, "may port-forward to the agent (pods/portforward, the data connections)"},
	}
	for _, part := range parts {
		err := target.Preflight(ctx, d.client, d.in.Namespace, podName, part.needs)
		var missing *inject.MissingPermissionError
		switch {
		case err == nil:
			d.add(Line{Name: part.name, Status: StatusOK, Message: part.what})
		case errors.As(err, &missing):
			fix := roleFix(missing)
			if part.name == "rbac-port-forward" {
				d.pfFix = fix
				d.add(Line{Name: part.name, Status: StatusWarn, Message: "pods/portforward is forbidden: the verbs carry their data over exec instead (slower)", Fix: fix})
				continue
			}
			d.block(Line{Name: part.name, Status: StatusFail, Message: "forbidden: " + missing.Error(), Fix: fix})
		case errors.Is(err, inject.ErrEphemeralContainersUnsupported):
			// Reported once, by server.
		default:
			d.add(Line{Name: part.name, Status: StatusUnknown, Message: err.Error()})
			d.doubts = append(d.doubts, part.name+" could not be checked")
		}
	}
}

// roleFix is the Role rule to add, in the shape docs/security.md shows it.
func roleFix(m *inject.MissingPermissionError) string {
	rules := make([]string, len(m.Rules))
	for i, r := range m.Rules {
		rules[i] = "{" + r.String() + "}"
	}
	noun := "this rule"
	if len(rules) > 1 {
		noun = "these rules"
	}
	return fmt.Sprintf("add %s to a Role bound to you in namespace %q: %s", noun, m.Namespace, strings.Join(rules, ", "))
}

// podSecurity reads the namespace's enforce label. It explains the dry runs' answers; without a target
// it is all there is to predict them.
func (d *diagnosis) podSecurity(ctx context.Context) {
	ns, err := d.client.CoreV1().Namespaces().Get(ctx, d.in.Namespace, metav1.GetOptions{})
	if err != nil {
		d.add(Line{Name: "podsecurity", Status: StatusUnknown, Message: fmt.Sprintf("cannot read namespace %q (%s): its PodSecurity level is not known here, the dry run applies it", d.in.Namespace, short(err))})
		return
	}
	d.level = ns.Labels[inject.PodSecurityEnforceLabel]
	if d.level == "" {
		d.add(Line{Name: "podsecurity", Status: StatusHint, Message: fmt.Sprintf("namespace %q has no %s label: the cluster's default level applies, which the API does not show; the dry run applies it", d.in.Namespace, inject.PodSecurityEnforceLabel)})
		return
	}
	var admitted []string
	for _, v := range verbs() {
		if ok, known := levelAdmits(d.level, v.variant); ok && known {
			admitted = append(admitted, v.name)
		}
	}
	d.add(Line{Name: "podsecurity", Status: StatusHint, Message: fmt.Sprintf("namespace %q enforces PodSecurity %q, which admits the agent of: %s", d.in.Namespace, d.level, orNone(admitted))})
}

// levelAdmits is docs/security.md's table: restricted admits only an agent without capabilities,
// baseline also one that keeps NET_RAW by dropping the others (it forbids adding NET_RAW), privileged
// every agent.
func levelAdmits(level string, v variant) (admits, known bool) {
	switch level {
	case "restricted":
		return v.caps == 0, true
	case "baseline":
		return v.caps == 0 || v.caps == inject.NetRaw && !v.addNetRaw, true
	case "privileged":
		return true, true
	}
	return false, false
}

// webhooks lists the admission webhooks that see the agent's patch. The dry run runs those that
// declare no side effects on dry run; any other makes the server refuse the dry run.
func (d *diagnosis) webhooks(ctx context.Context) {
	d.p.Stepf("listing admission webhooks")
	var seen, noDryRun []string
	note := func(cfg, name string, rules []admissionregistrationv1.RuleWithOperations, se *admissionregistrationv1.SideEffectClass) {
		if !seesEphemeralPatch(rules) {
			return
		}
		seen = append(seen, cfg+"/"+name)
		if se == nil || (*se != admissionregistrationv1.SideEffectClassNone && *se != admissionregistrationv1.SideEffectClassNoneOnDryRun) {
			noDryRun = append(noDryRun, cfg+"/"+name)
		}
	}
	v, err := d.client.AdmissionregistrationV1().ValidatingWebhookConfigurations().List(ctx, metav1.ListOptions{})
	if err == nil {
		for _, c := range v.Items {
			for _, w := range c.Webhooks {
				note(c.Name, w.Name, w.Rules, w.SideEffects)
			}
		}
		var m *admissionregistrationv1.MutatingWebhookConfigurationList
		m, err = d.client.AdmissionregistrationV1().MutatingWebhookConfigurations().List(ctx, metav1.ListOptions{})
		if err == nil {
			for _, c := range m.Items {
				for _, w := range c.Webhooks {
					note(c.Name, w.Name, w.Rules, w.SideEffects)
				}
			}
		}
	}
	switch {
	case err != nil:
		d.add(Line{Name: "webhooks", Status: StatusUnknown, Message: fmt.Sprintf("cannot list admission webhook configurations (%s); the dry run runs every webhook that supports dry run and is refused by one that does not", short(err))})
	case len(noDryRun) > 0:
		d.add(Line{Name: "webhooks", Status: StatusUnknown, Message: fmt.Sprintf("webhooks %s see the agent's patch but have side effects on dry run (sideEffects neither None nor NoneOnDryRun): the server cannot dry-run the patch past them", strings.Join(noDryRun, ", "))})
	case len(seen) > 0:
		d.add(Line{Name: "webhooks", Status: StatusOK, Message: fmt.Sprintf("webhooks %s see the agent's patch and support dry run: the dry run asks them", strings.Join(seen, ", "))})
	default:
		d.add(Line{Name: "webhooks", Status: StatusOK, Message: "no admission webhook sees pods/ephemeralcontainers"})
	}
}

// seesEphemeralPatch reports whether webhook rules match an UPDATE of pods/ephemeralcontainers in the
// core group ("*" alone matches no subresource; "pods/*", "*/ephemeralcontainers" and "*/*" do).
func seesEphemeralPatch(rules []admissionregistrationv1.RuleWithOperations) bool {
	has := func(list []string, want ...string) bool {
		for _, s := range list {
			for _, w := range want {
				if s == w {
					return true
				}
			}
		}
		return false
	}
	for _, r := range rules {
		ops := make([]string, len(r.Operations))
		for i, o := range r.Operations {
			ops[i] = string(o)
		}
		if has(ops, "UPDATE", "*") && has(r.APIGroups, "", "*") && has(r.APIVersions, "v1", "*") &&
			has(r.Resources, "pods/ephemeralcontainers", "pods/*", "*/ephemeralcontainers", "*/*") {
			return true
		}
	}
	return false
}

// resolve finds the pod as the verbs do; a pod no agent can join is a *target.PodRefusedError.
func (d *diagnosis) resolve(ctx context.Context) (*target.Target, error) {
	opts := d.in.Target
	opts.Namespace = d.in.Namespace
	// hostNetwork is reported by inspect, not refused: the verbs take it with --allow-host-network.
	opts.AllowHostNetwork = true
	d.p.Stepf("resolving %s in namespace %s", opts.Named(), opts.Namespace)
	tgt, err := target.Resolve(ctx, d.client, opts)
	if err != nil {
		return nil, err
	}
	d.pod = tgt.Pod
	d.rep.Pod = tgt.Pod.Namespace + "/" + tgt.Pod.Name
	return tgt, nil
}

// inspect reads the pod's node and mesh and dry-runs every agent variant in it.
func (d *diagnosis) inspect(ctx context.Context, tgt *target.Target) {
	pod := tgt.Pod
	ref := d.rep.Pod
	if pod.Spec.HostNetwork {
		d.add(Line{Name: "pod", Status: StatusWarn, Message: fmt.Sprintf("pod %q uses hostNetwork: the verbs need --allow-host-network and then work on the node's network", ref)})
	} else {
		d.add(Line{Name: "pod", Status: StatusOK, Message: fmt.Sprintf("pod %q, container %q, node %q", ref, tgt.Container, pod.Spec.NodeName)})
	}
	if windows := d.node(ctx, pod); windows {
		return
	}
	if d.mesh = mesh.Detect(pod); d.mesh.RefuseRedirect(pod, "") != nil {
		d.add(Line{Name: "mesh", Status: StatusWarn, Message: fmt.Sprintf("%s's %s mode (%s): steal, mirror --mode redirect and exec --steal are refused in this pod; dump, mirror --mode sniff, port-forward and exec work", d.mesh.Name, d.mesh.Mode, d.mesh.Evidence)})
	} else if d.mesh.Name != "" {
		d.add(Line{Name: "mesh", Status: StatusOK, Message: fmt.Sprintf("%s's %s mode (%s): the redirecting verbs take the sidecar's plaintext, after it (the agent checks the pod's capture rules when it starts); dump and mirror --mode sniff read lo", d.mesh.Name, d.mesh.Mode, d.mesh.Evidence)})
	} else {
		d.add(Line{Name: "mesh", Status: StatusOK, Message: "no service mesh seen in the pod's spec"})
	}
	for _, v := range []variant{{}, {caps: inject.NetRaw}, {caps: inject.NetRaw, addNetRaw: true}, {caps: inject.NetAdmin}} {
		d.p.Stepf("dry run: adding an agent (%s) to pod %s", v, ref)
		d.dryRuns[v] = d.dryRun(ctx, pod, v)
	}
}

// node reads the pod's node for the hints and for Windows; it reports whether the node is Windows.
func (d *diagnosis) node(ctx context.Context, pod *corev1.Pod) bool {
	if pod.Spec.NodeName == "" {
		return false
	}
	node, err := d.client.CoreV1().Nodes().Get(ctx, pod.Spec.NodeName, metav1.GetOptions{})
	if err != nil {
		why := fmt.Sprintf("cannot read node %q (%s)", pod.Spec.NodeName, short(err))
		d.add(Line{Name: "node", Status: StatusUnknown, Message: why + ": its operating system is not known here"})
		d.add(Line{Name: "kernel", Status: StatusUnknown, Message: why + ": a steal works on any kernel with nftables, older than 5.12 through a fallback"})
		d.add(Line{Name: "runtime", Status: StatusUnknown, Message: why + ": if dump finds no NET_RAW (CRI-O), add --add-net-raw"})
		return false
	}
	info := node.Status.NodeInfo
	if isWindows(node) {
		d.block(Line{Name: "node", Status: StatusFail, Message: fmt.Sprintf("pod %q runs on Windows node %q; the agent runs on Linux only", pod.Namespace+"/"+pod.Name, node.Name), Fix: "target a pod on a Linux node"})
		return true
	}
	d.add(Line{Name: "node", Status: StatusOK, Message: fmt.Sprintf("node %q runs %s/%s", node.Name, info.OperatingSystem, info.Architecture)})
	d.add(kernelLine(node))
	rt, rawDefault := runtimeLine(node)
	d.add(rt)
	d.noRawDefault = !rawDefault
	return false
}

// dryRun sends the patch the verbs would send for variant v, with dryRun=All, and turns the answer
// into a verb line.
func (d *diagnosis) dryRun(ctx context.Context, pod *corev1.Pod, v variant) Line {
	ref := pod.Namespace + "/" + pod.Name
	spec, err := d.in.Agent.AgentSpec(v.caps, v.addNetRaw)
	if err != nil {
		return Line{Status: StatusFail, Message: err.Error()}
	}
	c := inject.BuildAgentContainer(pod, spec)
	_, err = inject.DryRun(ctx, d.client, pod, c)
	var missing *inject.MissingPermissionError
	var status apierrors.APIStatus
	switch {
	case err == nil:
		return Line{Status: StatusOK, Message: fmt.Sprintf("server dry run accepted the agent container (%s) in pod %q", v, ref)}
	case errors.As(err, &missing):
		return Line{Status: StatusFail, Message: "server dry run: forbidden: " + missing.Error(), Fix: roleFix(missing)}
	case inject.IsPodSecurityRefusal(err):
		// The server's own sentence names every container that violates the level: PodSecurity judges
		// the whole pod on this patch, so the app's containers can be what refuses the agent.
		// The agent's name is random, one per dry run; the report names it by its role.
		name := fmt.Sprintf("container %q", c.Name)
		msg := apiMessage(err)
		ownContainers := !strings.Contains(msg, name)
		msg = strings.ReplaceAll(msg, name, "the agent container")
		l := Line{Status: StatusFail, Message: fmt.Sprintf("server dry run refused the agent container (%s): %s", v, msg),
			Fix: fmt.Sprintf("ask a cluster admin for a %s level that admits it on namespace %q", inject.PodSecurityEnforceLabel, pod.Namespace)}
		if ownContainers {
			l.Message += "; the pod's own containers violate the level, which PodSecurity checks again whenever a container is added, so no agent can be added to this pod"
			l.Fix = "target a pod that meets the namespace's level, or " + l.Fix
		}
		return l
	case inject.IsDryRunUnsupported(err):
		return Line{Status: StatusUnknown, Message: fmt.Sprintf("the server cannot dry-run the agent's patch (%s): whether the real patch passes that webhook is not known", apiMessage(err))}
	case errors.Is(err, inject.ErrEphemeralContainersUnsupported):
		return Line{Status: StatusFail, Message: err.Error()}
	case errors.As(err, &status) && status.Status().Code < http.StatusInternalServerError:
		// A policy webhook's denial, or the API's validation of the container.
		return Line{Status: StatusFail, Message: fmt.Sprintf("server dry run refused the agent container (%s): %s", v, status.Status().Message)}
	}
	return Line{Status: StatusUnknown, Message: fmt.Sprintf("server dry run of the agent container (%s) failed: %v", v, err)}
}

// verdict judges one verb from what the checks found.
func (d *diagnosis) verdict(v verb) Line {
	if len(d.blockers) > 0 {
		var msgs, fixes []string
		for _, b := range d.blockers {
			msgs = append(msgs, b.Name+": "+b.Message)
			if b.Fix != "" {
				fixes = append(fixes, b.Fix)
			}
		}
		return Line{Name: v.name, Status: StatusFail, Message: strings.Join(msgs, "; "), Fix: strings.Join(fixes, "; ")}
	}
	if err := d.mesh.RefuseRedirect(d.pod, v.name); v.redirects && err != nil {
		return Line{Name: v.name, Status: StatusFail, Message: err.Error()}
	}
	var how []string
	vr := v.variant
	if v.sniffs && d.noRawDefault {
		vr.addNetRaw = true
		how = append(how, "with --add-net-raw")
	}
	l := d.predict(vr)
	if d.pod != nil {
		l = d.dryRuns[vr]
	}
	l.Name = v.name
	if v.sniffs && !vr.addNetRaw && l.Status == StatusOK && d.pod != nil {
		if added := d.dryRuns[variant{caps: inject.NetRaw, addNetRaw: true}]; added.Status != StatusOK {
			l.Message += "; --add-net-raw (for runtimes without NET_RAW by default) is refused here"
		}
	}
	if l.Status == StatusOK && len(d.doubts) > 0 {
		l.Status = StatusUnknown
		l.Message += "; but " + strings.Join(d.doubts, ", ")
	}
	if l.Status == StatusOK && d.pfFix != "" {
		l.Status = StatusWarn
		how = append(how, "data over exec, slower: pods/portforward is forbidden")
		l.Fix = d.pfFix
	}
	if l.Status == StatusOK || l.Status == StatusWarn {
		l.How = strings.Join(how, ", ")
	}
	return l
}

// predict judges a verb without a pod, from the namespace's PodSecurity label alone: a level that
// forbids the agent is certain, anything else needs the server's dry run.
func (d *diagnosis) predict(v variant) Line {
	admits, known := levelAdmits(d.level, v)
	if known && !admits {
		return Line{Status: StatusFail,
			Message: fmt.Sprintf("namespace %q enforces PodSecurity %q, which forbids the agent container (%s)", d.in.Namespace, d.level, v),
			Fix:     fmt.Sprintf("ask a cluster admin for %s=privileged on the namespace", inject.PodSecurityEnforceLabel)}
	}
	msg := "the server's answer needs a target pod: kubectl trafficlab doctor pod/NAME"
	if known {
		msg = fmt.Sprintf("PodSecurity %q admits the agent container (%s); ", d.level, v) + msg
	}
	return Line{Status: StatusUnknown, Message: msg}
}

// apiMessage is the server's own sentence in an API error, without what Inject wrapped around it.
func apiMessage(err error) string {
	var status apierrors.APIStatus
	if errors.As(err, &status) {
		return status.Status().Message
	}
	return err.Error()
}

// short is an API error's reason (forbidden, not found) rather than its whole sentence.
func short(err error) string {
	if r := apierrors.ReasonForError(err); r != metav1.StatusReasonUnknown {
		return strings.ToLower(string(r))
	}
	return err.Error()
}

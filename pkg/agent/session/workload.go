package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/inject"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/target"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/transport"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/tunnel"
	"github.com/trafficlab/kubectl-trafficlab/pkg/cli/progress"
	"github.com/trafficlab/kubectl-trafficlab/pkg/version"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// Pod is one pod of a workload session: its agent and the tunnel to it (one attachment per pod).
type Pod struct {
	Target *target.Target
	Agent  string
	Tunnel *tunnel.Tunnel

	// conn is the tunnel as the session watches it (Tunnel, except in tests of the fan-out itself,
	// which have no kubelet to reach an agent through).
	conn   agentConn
	closer func()
}

// Name is the pod's name, which every line of a workload session carries.
func (p *Pod) Name() string { return p.Target.Pod.Name }

// Joiner starts a verb's work in a pod whose tunnel is up: the pods found at the start, then each pod
// that becomes ready during the session. leave ends it, when the pod goes away or the session ends; it
// may wait for the agent to confirm.
type Joiner func(ctx context.Context, p *Pod) (leave func(), err error)

// Workload is one session over every ready pod of a workload (steal, mirror, dump): an agent and a
// tunnel per pod, added in parallel; pods that become ready later are joined, pods that go away leave.
// With --one-pod, or a pod named as such, it holds one pod and ends, as a Session does, when that
// pod's agent is lost.
type Workload struct {
	// Named is how the user named the target, for messages ("deployment/api").
	Named    string
	Progress *progress.Printer

	errOut   io.Writer
	quiet    bool
	kube     target.Kube
	opts     Options
	req      Request
	spec     inject.AgentSpec
	proto    transport.Protocol
	dataPath string
	svc      *corev1.Service
	join     Joiner
	// who runs the session, told to every pod's agent (SelfSubjectReview, asked while the workload
	// resolves).
	who target.Identity
	// follow says the session follows the workload's pods (a watch on its selector); otherwise it
	// keeps to one pod.
	follow bool
	// connect waits for a pod's agent and opens the tunnel (connectPod; tests replace it).
	connect func(ctx context.Context, pp *pending) (*Pod, error)
	now     func() time.Time

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	members map[types.UID]*member
	gaps    []time.Duration
	closed  bool
	end     chan struct{}
	endErr  error
}

// member is a pod the session has seen: staged (its agent added before it is Ready), joining, joined,
// or given up on (failed).
type member struct {
	name    string
	pod     *Pod
	leave   func()
	failed  bool
	leaving bool
	// ready is when the session saw the pod ready (zero: not yet); joined pods count the gap to their
	// join.
	ready time.Time
	// staging says the pod's agent is being added before the pod is Ready; staged is its tunnel once up,
	// until the pod is Ready and joins.
	staging bool
	staged  *Pod
}

// pending is a pod whose agent patch has been sent (or whose agent is reused), to be connected.
type pending struct {
	target *target.Target
	agent  string
	reused bool
	// waiting: the reused agent waits on its image pull, in state (inject.Reusable.Waiting).
	waiting bool
	state   string
}

// StartWorkload resolves the workload, adds an agent to each of its ready pods in parallel (every patch
// sent before any wait), connects a tunnel to each and calls join for each as soon as it is up; it
// returns once every pod is joined or has failed, the failures reported by name, and then follows the
// workload's pods. It fails only when no pod could be joined.
func StartWorkload(ctx context.Context, kube target.Kube, o Options, req Request, errOut io.Writer, join Joiner) (*Workload, error) {
	w, err := newWorkload(kube, o, req, errOut, join)
	if err != nil {
		return nil, err
	}
	if err := w.run(ctx); err != nil {
		return nil, err
	}
	return w, nil
}

// run is StartWorkload once the session is set up.
func (w *Workload) run(ctx context.Context) error {
	kube, req, errOut := w.kube, w.req, w.errOut
	w.Named = req.Target.Named()
	w.Progress.Stepf("resolving %s in namespace %s", w.Named, req.Target.Namespace)
	whoc := make(chan target.Identity, 1)
	go func() { whoc <- target.WhoAmI(ctx, kube) }()
	wl, err := target.ResolveWorkload(ctx, kube.Client, req.Target)
	w.who = <-whoc
	if err != nil {
		return err
	}
	w.svc, w.follow = wl.Service, wl.Selector != nil
	replicas := len(wl.Pods)
	first, err := target.ForPod(ctx, kube.Client, wl.Pods[0], req.Target, wl.Service, replicas)
	if err != nil {
		return err
	}
	// The pods of a workload share its template: the verb checks its ports and probes against one.
	if req.Check != nil {
		warnings, err := req.Check(first)
		if err != nil {
			return err
		}
		for _, warning := range warnings {
			fmt.Fprintf(errOut, "warning: %s\n", warning)
		}
	}
	if err := w.preflight(ctx, first); err != nil {
		return err
	}
	w.ctx, w.cancel = context.WithCancel(context.WithoutCancel(ctx))
	for _, p := range wl.Pods {
		w.members[p.UID] = &member{name: p.Name, ready: w.now()}
	}
	if err := w.startPods(ctx, wl.Pods, replicas); err != nil {
		w.cancel()
		return err
	}
	if w.follow {
		w.watch(wl)
	} else if p := w.onlyPod(); p != nil && p.Target != nil {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			watchRestarts(w.ctx, kube.Client, p.Target.Pod, func(line string) { fmt.Fprintln(errOut, line) })
		}()
	}
	return nil
}

func newWorkload(kube target.Kube, o Options, req Request, errOut io.Writer, join Joiner) (*Workload, error) {
	spec, err := o.AgentSpec(req.Capabilities, req.AddNetRaw)
	if err != nil {
		return nil, err
	}
	proto, _ := transport.ParseProtocol(o.Transport)
	w := &Workload{
		Progress: progress.New(errOut, o.Quiet), errOut: errOut, quiet: o.Quiet, kube: kube, opts: o, req: req,
		spec: spec, proto: proto, dataPath: o.DataPath, join: join, now: time.Now,
		members: map[types.UID]*member{}, end: make(chan struct{}),
	}
	w.connect = w.connectPod
	return w, nil
}

// preflight checks the user's permissions once, on the first pod: RBAC rules name resources, rarely
// single pods, and a pod where a patch is refused is reported by name like any other failure.
func (w *Workload) preflight(ctx context.Context, first *target.Target) error {
	client := w.kube.Client
	pod := first.Pod
	_, reuse, _ := inject.FindReusable(pod, w.spec)
	needs := target.Needs{Inject: !reuse || w.spec.Privileged(), Exec: true, PortForward: w.dataPath != DataExec, Transport: w.proto}
	err := target.Preflight(ctx, client, pod.Namespace, pod.Name, needs)
	if err == nil {
		return nil
	}
	var missing *inject.MissingPermissionError
	if w.dataPath != DataAuto || !errors.As(err, &missing) || !onlyPortForward(missing) {
		return err
	}
	fmt.Fprintf(w.errOut, "warning: %v; carrying data over exec instead (slower)\n", err)
	w.dataPath = DataExec
	needs.PortForward = false
	return target.Preflight(ctx, client, pod.Namespace, pod.Name, needs)
}

// startPods adds the agents to pods in parallel, then waits for each and connects and joins it in
// parallel. Every patch is sent before the first wait: on a busy node the kubelet starts the agents
// while the plugin still waits for the first.
func (w *Workload) startPods(ctx context.Context, pods []*corev1.Pod, replicas int) error {
	if len(pods) > 1 {
		w.Progress.Stepf("adding agents to %d pods", len(pods))
	}
	prepared := make([]*pending, len(pods))
	errs := make([]error, len(pods))
	var wg sync.WaitGroup
	for i, p := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			prepared[i], errs[i] = w.prepare(ctx, p, replicas)
		}()
	}
	wg.Wait()
	// The bench (hack/bench/workload.go) reads this line: every patch is sent by now.
	w.Progress.Stepf("agent patches sent to %s", plural(countNil(errs), "pod"))
	for i, p := range pods {
		if errs[i] != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = w.start(ctx, p.UID, prepared[i])
		}()
	}
	wg.Wait()
	if n := countNil(errs); n == 0 {
		if len(pods) == 1 {
			return errs[0]
		}
		return fmt.Errorf("no pod of %s could be joined: %w", w.Named, errors.Join(errs...))
	}
	for i, p := range pods {
		if errs[i] != nil {
			w.mu.Lock()
			w.members[p.UID].failed = true
			w.mu.Unlock()
			fmt.Fprintf(w.errOut, "warning: pod %s is not covered: %v\n", p.Name, errs[i])
		}
	}
	return nil
}

func plural(n int, noun string) string {
	if n == 1 {
		return fmt.Sprintf("1 %s", noun)
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

func countNil(errs []error) int {
	n := 0
	for _, err := range errs {
		if err == nil {
			n++
		}
	}
	return n
}

// prepare checks pod and sends its agent patch, unless an agent there can be reused.
func (w *Workload) prepare(ctx context.Context, pod *corev1.Pod, replicas int) (*pending, error) {
	var tgt *target.Target
	var err error
	if target.Starting(pod) {
		tgt, err = target.ForStartingPod(ctx, w.kube.Client, pod, w.req.Target, w.svc)
	} else {
		tgt, err = target.ForPod(ctx, w.kube.Client, pod, w.req.Target, w.svc, replicas)
	}
	if err != nil {
		return nil, err
	}
	agent, reuse, why := inject.FindReusable(pod, w.spec)
	name := agent.Name
	if why != "" {
		w.Progress.Stepf("pod %s: %s", pod.Name, why)
	}
	if reuse && agent.Waiting != "" {
		// As in Start: the kubelet retries the pull of this agent; another would wait on the same pull.
		w.Progress.Stepf("waiting for agent %s in pod %s/%s (%s)", name, pod.Namespace, pod.Name, agent.Waiting)
		return &pending{target: tgt, agent: name, waiting: true, state: agent.Waiting}, nil
	}
	if reuse {
		w.Progress.Stepf("reusing agent %s in pod %s/%s", name, pod.Namespace, pod.Name)
		return &pending{target: tgt, agent: name, reused: true}, nil
	}
	c := inject.BuildAgentContainer(pod, w.spec)
	w.Progress.Stepf("adding agent %s to pod %s/%s", c.Name, pod.Namespace, pod.Name)
	if _, err := inject.Inject(ctx, w.kube.Client, pod, c); err != nil {
		return nil, err
	}
	return &pending{target: tgt, agent: c.Name}, nil
}

// start connects a prepared pod and joins it; on failure nothing of it is left open.
func (w *Workload) start(ctx context.Context, uid types.UID, pp *pending) error {
	p, err := w.connect(ctx, pp)
	if err != nil {
		return err
	}
	return w.joinConnected(ctx, uid, p)
}

// joinConnected runs the verb's join on a pod whose tunnel is up and makes it a member of the session.
func (w *Workload) joinConnected(ctx context.Context, uid types.UID, p *Pod) error {
	w.mu.Lock()
	gone := w.closed || w.members[uid] == nil
	w.mu.Unlock()
	if gone {
		p.closer()
		return context.Canceled
	}
	leave, err := w.join(ctx, p)
	if err != nil {
		p.closer()
		return err
	}
	w.mu.Lock()
	m := w.members[uid]
	closed := w.closed || m == nil
	if !closed {
		m.pod, m.leave = p, leave
	}
	w.mu.Unlock()
	if closed {
		// The session ended, or the pod was deleted, while it was joining.
		leave()
		p.closer()
		return context.Canceled
	}
	w.wg.Add(1)
	go w.monitor(uid, p)
	return nil
}

// connectPod waits for the pod's agent to run and opens the tunnel to it.
func (w *Workload) connectPod(ctx context.Context, pp *pending) (*Pod, error) {
	pod := pp.target.Pod
	if !pp.reused {
		grace, shown := time.Duration(0), ""
		if pp.waiting {
			grace, shown = PullRetryGrace, pp.state
		}
		stepf := func(format string, args ...any) {
			w.Progress.Stepf("pod %s: "+format, append([]any{pod.Name}, args...)...)
		}
		if err := w.opts.waitAgent(ctx, w.kube.Client, pod, pp.agent, grace, shown, stepf); err != nil {
			return nil, err
		}
		w.Progress.Stepf("agent %s running in pod %s", pp.agent, pod.Name)
	}
	conn, closer, via, err := dial(ctx, w.kube, w.proto, w.dataPath, w.opts, pod, pp.agent, w.who, w.errOut)
	if err != nil {
		return nil, err
	}
	w.Progress.Stepf("connected to agent %s in pod %s (session %s, data via %s)", pp.agent, pod.Name, conn.Welcome().SessionID, via)
	return &Pod{Target: pp.target, Agent: pp.agent, Tunnel: conn, conn: conn, closer: func() {
		conn.Close()
		if closer != nil {
			closer.Close()
		}
	}}, nil
}

// dial opens the tunnel to agent name in pod, over port-forward or exec as dataPath says.
func dial(ctx context.Context, kube target.Kube, proto transport.Protocol, dataPath string, o Options, pod *corev1.Pod, name string, who target.Identity, errOut io.Writer) (*tunnel.Tunnel, io.Closer, string, error) {
	restClient := kube.Client.CoreV1().RESTClient()
	execer := &transport.KubeExecutor{Config: kube.Config, Client: restClient, Protocol: proto}
	var data tunnel.DataOpener
	var closer io.Closer
	switch dataPath {
	case DataExec:
		dataExec := &transport.KubeExecutor{Config: kube.Config, Client: restClient, Protocol: proto, PreferSPDY: true}
		data = &transport.ExecData{Exec: dataExec, Namespace: pod.Namespace, Pod: pod.Name, Container: name, Binary: inject.AgentBinary}
	default:
		pf := &transport.PortForwardData{Config: kube.Config, Client: restClient, Namespace: pod.Namespace, Pod: pod.Name, Protocol: proto}
		data, closer = pf, pf
	}
	conn, err := tunnel.Connect(ctx, tunnel.Config{
		Control: &transport.AgentControl{
			Exec: execer, Namespace: pod.Namespace, Pod: pod.Name, Container: name,
			Command: agentCommand(name),
		},
		Data:        data,
		DataConns:   o.DataConnections,
		Version:     version.Get().Version,
		Tunnel:      pluginTunnelConfig(),
		Compression: wire.SupportedCompression(),
		AgentLog:    agentLog(errOut),
		User:        who.User,
		Host:        who.Host,

		ReconnectGrace: o.ReconnectGrace,
		Notify:         reconnectNotice(errOut, pod.Name),
	})
	if err != nil {
		if closer != nil {
			closer.Close()
		}
		return nil, nil, "", err
	}
	via := "exec"
	if pf, ok := data.(*transport.PortForwardData); ok {
		via = "port-forward over " + string(pf.Used())
	}
	return conn, closer, via, nil
}

// monitor waits for the end of a pod's tunnel. A pod that is terminating or gone leaves quietly; a lost
// agent ends the session when it was the session's only pod (today's one-pod behaviour), else only
// that pod leaves.
func (w *Workload) monitor(uid types.UID, p *Pod) {
	defer w.wg.Done()
	select {
	case <-w.ctx.Done():
		return
	case <-p.conn.Done():
	}
	w.mu.Lock()
	m := w.members[uid]
	if m == nil || m.pod != p || w.closed {
		w.mu.Unlock()
		return
	}
	leaving := m.leaving
	m.pod, m.failed = nil, true
	leave := m.leave
	left := w.coveredLocked()
	w.mu.Unlock()
	leave()
	p.closer()
	switch {
	case leaving:
		w.Progress.Stepf("pod %s left (its agent ended with the pod); %s", p.Name(), w.Coverage())
	case !w.follow || left == 0:
		w.fail(fmt.Errorf("pod %s: %w", p.Name(), p.conn.Err()))
	default:
		fmt.Fprintf(w.errOut, "warning: lost the agent in pod %s: %v; the session goes on with %s\n", p.Name(), p.conn.Err(), w.Coverage())
	}
}

func (w *Workload) fail(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.endErr == nil {
		w.endErr = err
		close(w.end)
	}
}

// Done is closed when the session cannot go on (its only pod's agent is lost); Err says why.
func (w *Workload) Done() <-chan struct{} { return w.end }

// Err is why the session cannot go on, once Done is closed.
func (w *Workload) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.endErr
}

// Wait waits until ctx ends (the user's Ctrl-C), which is no error, or the session cannot go on.
func (w *Workload) Wait(ctx context.Context) error { return wait(ctx, w) }

// WaitCommand is Session.WaitCommand for a workload session.
func (w *Workload) WaitCommand(ctx context.Context, name string, waitCmd func() (int, error), interrupt, kill func()) (int, error) {
	return waitCommand(ctx, w, name, waitCmd, interrupt, kill)
}

// Announce says that the verb's work is in place in every pod, as Session.Announce does.
func (w *Workload) Announce(format string, args ...any) {
	if w.quiet {
		fmt.Fprintf(w.errOut, format+"\n", args...)
		return
	}
	w.Progress.Stepf(format, args...)
}

// Pods are the pods joined now, by name.
func (w *Workload) Pods() []*Pod {
	w.mu.Lock()
	defer w.mu.Unlock()
	var pods []*Pod
	for _, m := range w.members {
		if m.pod != nil {
			pods = append(pods, m.pod)
		}
	}
	sort.Slice(pods, func(i, j int) bool { return pods[i].Name() < pods[j].Name() })
	return pods
}

// Coverage says how many of the workload's ready pods the session covers: "3/3 pods of
// deployment/api".
func (w *Workload) Coverage() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.follow {
		for _, m := range w.members {
			return "pod " + m.name
		}
	}
	return coverage(w.coveredLocked(), w.readyLocked(), w.Named)
}

func coverage(covered, ready int, named string) string {
	noun := "pods"
	if ready == 1 {
		noun = "pod"
	}
	return fmt.Sprintf("%d/%d %s of %s", covered, ready, noun, named)
}

func (w *Workload) coveredLocked() int {
	n := 0
	for _, m := range w.members {
		if m.pod != nil && !m.leaving {
			n++
		}
	}
	return n
}

// fullLocked says the session covers --max-pods pods already.
func (w *Workload) fullLocked() bool {
	return w.req.Target.MaxPods > 0 && w.readyLocked() >= w.req.Target.MaxPods
}

// readyLocked counts the ready pods the session knows of: joined, joining, or that failed to join.
func (w *Workload) readyLocked() int {
	n := 0
	for _, m := range w.members {
		if !m.leaving && !m.ready.IsZero() {
			n++
		}
	}
	return n
}

// Close ends the verb's work in every pod (in parallel: each may wait for its agent) and the tunnels,
// and reports how long pods that became ready during the session waited to be joined.
func (w *Workload) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.closed = true
	var joined []*member
	var staged []*Pod
	for _, m := range w.members {
		if m.pod != nil {
			joined = append(joined, m)
		}
		if m.staged != nil {
			staged = append(staged, m.staged)
			m.staged = nil
		}
	}
	gaps := append([]time.Duration(nil), w.gaps...)
	w.mu.Unlock()
	var wg sync.WaitGroup
	for _, m := range joined {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.leave()
			m.pod.closer()
		}()
	}
	for _, sp := range staged {
		sp.closer()
	}
	wg.Wait()
	if w.cancel != nil {
		w.cancel()
	}
	w.wg.Wait()
	if line := gapSummary(gaps); line != "" {
		fmt.Fprintln(w.errOut, line)
	}
	return nil
}

// gapSummary is the end line on the pods that joined during the session: the time from the pod being
// seen Ready (and so in its Services' endpoints) to the session covering it.
func gapSummary(gaps []time.Duration) string {
	if len(gaps) == 0 {
		return ""
	}
	s := append([]time.Duration(nil), gaps...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	noun := "pods"
	if len(s) == 1 {
		noun = "pod"
	}
	return fmt.Sprintf("%d %s joined during the session: Ready -> joined p50 %s, max %s",
		len(s), noun, roundGap(s[(len(s)-1)/2]), roundGap(s[len(s)-1]))
}

func roundGap(d time.Duration) time.Duration { return d.Round(10 * time.Millisecond) }

func (w *Workload) onlyPod() *Pod {
	pods := w.Pods()
	if len(pods) != 1 {
		return nil
	}
	return pods[0]
}

// watch follows the workload's pods from the list the session started from: a pod that becomes ready
// joins, one that is terminating stays until its agent ends with it, one that is deleted leaves.
func (w *Workload) watch(wl *target.Workload) {
	client, ns, sel := w.kube.Client, w.req.Target.Namespace, wl.Selector.String()
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, options metav1.ListOptions) (runtime.Object, error) {
			options.LabelSelector = sel
			return client.CoreV1().Pods(ns).List(ctx, options)
		},
		WatchFuncWithContext: func(ctx context.Context, options metav1.ListOptions) (watch.Interface, error) {
			options.LabelSelector = sel
			return client.CoreV1().Pods(ns).Watch(ctx, options)
		},
	}
	inf := cache.NewSharedIndexInformer(lw, &corev1.Pod{}, 0, cache.Indexers{})
	_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if p, ok := obj.(*corev1.Pod); ok {
				w.seen(nil, p)
			}
		},
		UpdateFunc: func(old, obj any) {
			o, _ := old.(*corev1.Pod)
			if p, ok := obj.(*corev1.Pod); ok {
				w.seen(o, p)
			}
		},
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if p, ok := obj.(*corev1.Pod); ok {
				w.gone(p)
			}
		},
	})
	if err != nil {
		klog.V(2).InfoS("not following the workload's pods", "err", err)
		return
	}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		inf.RunWithContext(w.ctx)
	}()
}

// seen handles a pod of the workload as the watch saw it (old is its previous state, if any).
func (w *Workload) seen(old, p *corev1.Pod) {
	w.mu.Lock()
	m := w.members[p.UID]
	switch {
	case w.closed:
		w.mu.Unlock()
		return
	case m == nil && target.Starting(p):
		if w.fullLocked() {
			w.mu.Unlock()
			return
		}
		m = &member{name: p.Name, staging: true}
		w.members[p.UID] = m
		w.mu.Unlock()
		w.wg.Add(1)
		go w.stage(p, m)
		return
	case m != nil && m.ready.IsZero() && !m.failed && target.Ready(p):
		// A staged pod is Ready: it joins now, or as soon as its tunnel is up.
		m.ready = w.now()
		sp := m.staged
		m.staged = nil
		w.mu.Unlock()
		if sp != nil {
			w.wg.Add(1)
			go w.finishJoin(p, m, sp)
		}
		return
	case m == nil && target.Ready(p):
		if w.fullLocked() {
			w.members[p.UID] = &member{name: p.Name, failed: true}
			w.mu.Unlock()
			fmt.Fprintf(w.errOut, "warning: pod %s became ready but is not covered: the session covers --max-pods %d pods already\n", p.Name, w.req.Target.MaxPods)
			return
		}
		m = &member{name: p.Name, ready: w.now()}
		w.members[p.UID] = m
		w.mu.Unlock()
		w.wg.Add(1)
		go w.joinLate(p, m)
		return
	case m != nil && p.DeletionTimestamp != nil && !m.leaving:
		m.leaving = true
		joined := m.pod != nil
		w.mu.Unlock()
		if joined {
			w.Progress.Stepf("pod %s is terminating: its agent relays until the pod's containers have exited", p.Name)
		}
		return
	}
	joined := m != nil && m.pod != nil
	w.mu.Unlock()
	if joined && old != nil {
		for _, line := range restarted(old, p) {
			fmt.Fprintf(w.errOut, "pod %s: %s\n", p.Name, line)
		}
	}
}

// gone lets a deleted pod leave: its lines stop, the session goes on.
func (w *Workload) gone(p *corev1.Pod) {
	w.mu.Lock()
	m := w.members[p.UID]
	if m == nil || w.closed {
		w.mu.Unlock()
		return
	}
	delete(w.members, p.UID)
	pod, leave, staged := m.pod, m.leave, m.staged
	m.pod, m.staged = nil, nil
	w.mu.Unlock()
	if staged != nil {
		staged.closer()
	}
	if pod == nil {
		return
	}
	leave()
	pod.closer()
	w.Progress.Stepf("pod %s left (deleted); %s", p.Name, w.Coverage())
}

// stage adds the agent to a pod that is not Ready yet and opens its tunnel; the pod joins once Ready.
func (w *Workload) stage(p *corev1.Pod, m *member) {
	defer w.wg.Done()
	// The agent's start (a container's creation) then overlaps the app's own start, and the pod joins
	// the moment it is Ready, when its Services start sending it traffic.
	w.Progress.Stepf("pod %s is starting: adding its agent before it is Ready", p.Name)
	pp, err := w.prepare(w.ctx, p, 0)
	var sp *Pod
	if err == nil {
		sp, err = w.connect(w.ctx, pp)
	}
	w.mu.Lock()
	m.staging = false
	closed := w.closed || w.members[p.UID] != m
	switch {
	case err != nil:
		m.failed = true
		w.mu.Unlock()
		if !closed {
			fmt.Fprintf(w.errOut, "warning: pod %s is not covered: %v\n", p.Name, err)
		}
		return
	case closed:
		w.mu.Unlock()
		sp.closer()
		return
	case m.ready.IsZero():
		m.staged = sp
		w.mu.Unlock()
		return
	}
	w.mu.Unlock()
	w.wg.Add(1)
	go w.finishJoin(p, m, sp)
}

// joinLate joins a pod that was Ready when the session first saw it.
func (w *Workload) joinLate(p *corev1.Pod, m *member) {
	defer w.wg.Done()
	w.Progress.Stepf("pod %s is ready: joining it", p.Name)
	pp, err := w.prepare(w.ctx, p, 0)
	var sp *Pod
	if err == nil {
		sp, err = w.connect(w.ctx, pp)
	}
	if err != nil {
		w.notCovered(p, m, err)
		return
	}
	w.wg.Add(1)
	go w.finishJoin(p, m, sp)
}

func (w *Workload) notCovered(p *corev1.Pod, m *member, err error) {
	w.mu.Lock()
	m.failed = true
	// A pod deleted while it was joining, or a session that ended meanwhile, is no failure to report.
	quiet := w.closed || w.members[p.UID] != m
	w.mu.Unlock()
	if !quiet {
		fmt.Fprintf(w.errOut, "warning: pod %s is not covered: %v\n", p.Name, err)
	}
}

// finishJoin joins a pod whose tunnel is up and that is Ready, and reports the time from Ready to
// joined: the pod was in its Services' endpoints, answering on its own, for that long.
func (w *Workload) finishJoin(p *corev1.Pod, m *member, sp *Pod) {
	defer w.wg.Done()
	if err := w.joinConnected(w.ctx, p.UID, sp); err != nil {
		w.notCovered(p, m, err)
		return
	}
	w.mu.Lock()
	gap := w.now().Sub(m.ready)
	w.gaps = append(w.gaps, gap)
	w.mu.Unlock()
	w.Progress.Stepf("pod %s joined %s after it became Ready; %s", p.Name, roundGap(gap), w.Coverage())
}

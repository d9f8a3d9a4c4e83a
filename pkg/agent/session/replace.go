package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/target"
	"github.com/trafficlab/kubectl-trafficlab/pkg/cli/exitcode"
)

// Follower keeps a one-pod session (port-forward, exec) going when its pod goes away (deleted,
// evicted, terminating) and the user named a workload (deploy/, svc/, -l …): the session is started
// again on another ready pod of the same workload, and one line says so. kubectl's port-forward and
// exec keep one pod; a workload's pods come and go, and the user named the workload. A pod named as
// such, or a tunnel lost while its pod is still there (the network, not the pod), ends the session as
// before.
//
// It is the Dialer of the verbs: each dial goes to the current pod, and waits while a replacement is
// being set up. Connections open on the pod that went away end with it.
type Follower struct {
	client   kubernetes.Interface
	workload string // "deployment/api"; empty: the pod is kept to the end
	req      Request
	errOut   io.Writer
	// start sets up the session on one pod: Start, or a fake in tests.
	start func(ctx context.Context, req Request) (leg, error)

	mu     sync.Mutex
	cur    leg
	ready  chan struct{} // closed while cur may be dialed
	done   chan struct{} // closed when the session ends for good
	err    error         // why, once done is closed
	stop   context.CancelFunc
	exited chan struct{} // closed when run returns
}

// leg is the session on one pod: a *Session, or a fake in tests.
type leg interface {
	pod() *corev1.Pod
	Dial(ctx context.Context, network, address string) (io.ReadWriteCloser, error)
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
	agentConn
	Close() error
}

type sessionLeg struct{ *Session }

func (l sessionLeg) pod() *corev1.Pod { return l.Target.Pod }
func (l sessionLeg) Dial(ctx context.Context, network, address string) (io.ReadWriteCloser, error) {
	return l.Tunnel.Dial(ctx, network, address)
}
func (l sessionLeg) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return l.Tunnel.DialContext(ctx, network, address)
}
func (l sessionLeg) Done() <-chan struct{} { return l.Tunnel.Done() }
func (l sessionLeg) Err() error            { return l.Tunnel.Err() }

// Follow watches s, started by Start(ctx, kube, o, req, errOut), and replaces it as Follower says when
// replace is true and req names a workload; Close ends it. A verb that registered work in the agent
// (a steal, a mirror) passes replace false: a new pod would not have it.
func Follow(ctx context.Context, kube target.Kube, o Options, req Request, s *Session, errOut io.Writer, replace bool) *Follower {
	// A replacement is set up quietly: its progress lines would read as a new start.
	o.Quiet = true
	start := func(ctx context.Context, req Request) (leg, error) {
		s, err := Start(ctx, kube, o, req, errOut)
		if err != nil {
			return nil, err
		}
		return sessionLeg{s}, nil
	}
	return newFollower(ctx, kube.Client, req, sessionLeg{s}, errOut, replace, start)
}

func newFollower(ctx context.Context, client kubernetes.Interface, req Request, first leg, errOut io.Writer, replace bool, start func(context.Context, Request) (leg, error)) *Follower {
	f := &Follower{client: client, req: req, errOut: errOut, start: start, cur: first,
		ready: make(chan struct{}), done: make(chan struct{}), exited: make(chan struct{})}
	close(f.ready)
	if replace {
		f.workload, _ = req.Target.Workload()
	}
	ctx, f.stop = context.WithCancel(ctx)
	go f.run(ctx)
	return f
}

// run follows one pod after another until the session ends.
func (f *Follower) run(ctx context.Context) {
	defer close(f.exited)
	for {
		cur := f.current()
		wctx, stopWatch := context.WithCancel(ctx)
		gone := make(chan string, 1)
		if f.workload != "" {
			go watchGone(wctx, f.client, cur.pod(), gone)
		}
		var why string
		select {
		case <-ctx.Done():
			stopWatch()
			return
		case why = <-gone:
		case <-cur.Done():
			if ctx.Err() != nil {
				// The tunnel ended with the user's Ctrl-C.
				stopWatch()
				return
			}
			if f.workload != "" {
				why = f.whyGone(ctx, cur.pod())
			}
		}
		stopWatch()
		if why == "" {
			// The pod is still there, or it was named: the session ends as it always has.
			f.finish(lost(cur))
			return
		}
		f.mu.Lock()
		f.ready = make(chan struct{})
		f.mu.Unlock()
		next, err := f.replacement(ctx, cur.pod(), why)
		if err != nil {
			// cur stays current, for Close to end.
			if ctx.Err() == nil {
				f.finish(err)
			}
			return
		}
		if ctx.Err() != nil {
			// Close came while it was being set up.
			_ = next.Close()
			return
		}
		f.mu.Lock()
		f.cur = next
		close(f.ready)
		f.mu.Unlock()
		fmt.Fprintf(f.errOut, "pod %s went away (%s); continuing on pod %s of %s\n", cur.pod().Name, why, next.pod().Name, f.workload)
		// Its open connections end here; new ones already go to next.
		_ = cur.Close()
	}
}

// replacement starts the session again on another ready pod of the workload. Resolving the workload
// again leaves out pods that are terminating, failed or deleted, so the pod that went away is not
// picked, unless the API has not heard of its end yet.
func (f *Follower) replacement(ctx context.Context, gone *corev1.Pod, why string) (leg, error) {
	t, err := target.Resolve(ctx, f.client, f.req.Target)
	if err == nil && t.Pod.UID == gone.UID {
		err = errors.New("it is the only one still listed as ready")
	}
	if err != nil {
		return nil, fmt.Errorf("pod %s went away (%s) and no other pod of %s can take the session: %w", gone.Name, why, f.workload, err)
	}
	req := f.req
	req.Target.Resource, req.Target.Selector = "pod/"+t.Pod.Name, ""
	next, err := f.start(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("pod %s went away (%s); starting the session again on pod %s of %s: %w", gone.Name, why, t.Pod.Name, f.workload, err)
	}
	return next, nil
}

// whyGone says how pod went away after its tunnel ended, or "" when it is still there and the
// tunnel was lost on the way.
func (f *Follower) whyGone(ctx context.Context, pod *corev1.Pod) string {
	got, err := f.client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return "deleted"
	case err != nil:
		klog.V(2).InfoS("cannot tell whether the pod went away", "pod", klog.KObj(pod), "err", err)
		return ""
	}
	return goneReason(pod, got)
}

// goneReason says why now, the pod as the API shows it, is no longer the pod the session joined, or
// "" when it still is.
func goneReason(joined, now *corev1.Pod) string {
	switch {
	case now.UID != joined.UID:
		return "deleted, and a new pod has its name"
	case now.Status.Reason == "Evicted":
		return "evicted"
	case now.DeletionTimestamp != nil:
		return "terminating"
	case now.Status.Phase == corev1.PodFailed || now.Status.Phase == corev1.PodSucceeded:
		return "phase " + string(now.Status.Phase)
	}
	return ""
}

// goneRetry spaces the watch's reconnections; the apiserver ends watches every few minutes.
const goneRetry = time.Second

// watchGone sends on gone why pod went away, as soon as the API says so, which is before its agent
// dies: a terminating pod leaves the Service's endpoints at once, and new connections should too. It
// is best effort: without the right to watch pods, the end of the tunnel tells instead.
func watchGone(ctx context.Context, client kubernetes.Interface, pod *corev1.Pod, gone chan<- string) {
	sel := fields.OneTermEqualSelector("metadata.name", pod.Name).String()
	rv := pod.ResourceVersion
	for {
		w, err := client.CoreV1().Pods(pod.Namespace).Watch(ctx, metav1.ListOptions{FieldSelector: sel, ResourceVersion: rv})
		if err != nil {
			if ctx.Err() == nil {
				klog.V(2).InfoS("not watching the pod for its end", "pod", klog.KObj(pod), "err", err)
			}
			return
		}
		why, next := nextGone(ctx, w, pod, rv)
		rv = next
		w.Stop()
		if why != "" {
			gone <- why
			return
		}
		t := time.NewTimer(goneRetry)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// nextGone reads one watch until pod is seen gone, the watch ends or ctx does.
func nextGone(ctx context.Context, w watch.Interface, pod *corev1.Pod, rv string) (string, string) {
	for {
		select {
		case <-ctx.Done():
			return "", rv
		case ev, open := <-w.ResultChan():
			if !open {
				return "", rv
			}
			p, ok := ev.Object.(*corev1.Pod)
			switch {
			case ev.Type == watch.Error:
				return "", "" // mostly 410 Gone: watch again from now
			case !ok || p.Name != pod.Name:
			case ev.Type == watch.Deleted:
				return "deleted", rv
			default:
				if why := goneReason(pod, p); why != "" {
					return why, rv
				}
				rv = p.ResourceVersion
			}
		}
	}
}

func (f *Follower) current() leg {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cur
}

// dialable waits until the current pod may be dialed: not while a replacement is being set up.
func (f *Follower) dialable(ctx context.Context) (leg, error) {
	f.mu.Lock()
	cur, ready := f.cur, f.ready
	f.mu.Unlock()
	select {
	case <-ready:
		return cur, nil
	case <-f.done:
		return nil, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Dial dials address from the current pod (forward.Dialer).
func (f *Follower) Dial(ctx context.Context, network, address string) (io.ReadWriteCloser, error) {
	cur, err := f.dialable(ctx)
	if err != nil {
		return nil, err
	}
	return cur.Dial(ctx, network, address)
}

// DialContext dials address from the current pod (exec's stack, resolver and proxy).
func (f *Follower) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	cur, err := f.dialable(ctx)
	if err != nil {
		return nil, err
	}
	return cur.DialContext(ctx, network, address)
}

func (f *Follower) finish(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
	close(f.done)
}

// Wait waits until ctx ends (the user's Ctrl-C), which is no error, or the session ends: its agent
// lost with its pod still there, its pod gone with no other to take it.
func (f *Follower) Wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case <-f.done:
		return f.err
	}
}

// WaitCommand is Session.WaitCommand for as long as the session goes on, from pod to pod.
func (f *Follower) WaitCommand(ctx context.Context, name string, waitCmd func() (int, error), interrupt, kill func()) (int, error) {
	code, ended, err := exitcode.Wait(ctx, f.done, waitCmd, interrupt, kill)
	if ended {
		if err != nil {
			klog.V(2).InfoS("command stopped after the session ended", "command", name, "err", err)
		}
		return 0, f.err
	}
	return code, err
}

// Close stops following and ends the current pod's session.
func (f *Follower) Close() error {
	f.stop()
	<-f.exited
	return f.current().Close()
}

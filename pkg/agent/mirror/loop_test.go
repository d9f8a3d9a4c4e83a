package mirror

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/target"
)

// The mirrored pod of the loop tests: web-1 in shop at 10.244.0.5 (and fd00::5), port 8080
// mirrored.
const (
	loopPodIP  = "10.244.0.5"
	otherPodIP = "10.244.0.6"
)

func loopPod() *corev1.Pod {
	p := testPod()
	p.Status.PodIP = loopPodIP
	p.Status.PodIPs = []corev1.PodIP{{IP: loopPodIP}, {IP: "fd00::5"}}
	return p
}

func service(name, clusterIP string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop"}, Spec: corev1.ServiceSpec{ClusterIP: clusterIP, Ports: ports}}
}

// slice is an EndpointSlice of Service svc with one endpoint per address, its port named portName
// and numbered port.
func slice(name, svc, portName string, port int32, addrs ...string) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Namespace: "shop", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To(portName), Port: ptr.To(port)}},
	}
	for _, a := range addrs {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}})
	}
	return s
}

// loopCluster: Service api selects the mirrored pod (port 80 to its 8080), canary another pod,
// admin the mirrored pod on a port that is not mirrored, hl is a headless Service of the mirrored
// pod, and starting's only endpoint is the mirrored pod not ready yet, known by its reference only.
func loopCluster() *fake.Clientset {
	notReady := slice("starting-1", "starting", "", 8080)
	notReady.Endpoints = []discoveryv1.Endpoint{{
		Addresses:  []string{"10.244.9.9"}, // a stale address: the reference names the pod
		Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false)},
		TargetRef:  &corev1.ObjectReference{Kind: "Pod", Name: "web-1", Namespace: "shop"},
	}}
	return fake.NewClientset(
		service("api", "10.96.0.1", corev1.ServicePort{Name: "web", Port: 80}),
		slice("api-1", "api", "web", 8080, otherPodIP, loopPodIP),
		service("canary", "10.96.0.2", corev1.ServicePort{Name: "web", Port: 80}),
		slice("canary-1", "canary", "web", 8080, otherPodIP),
		service("admin", "10.96.0.3", corev1.ServicePort{Port: 9090}),
		slice("admin-1", "admin", "", 9090, loopPodIP),
		service("hl", corev1.ClusterIPNone, corev1.ServicePort{Port: 8080}),
		slice("hl-1", "hl", "", 8080, loopPodIP),
		service("starting", "10.96.0.4", corev1.ServicePort{Port: 80}),
		notReady,
	)
}

// TestCheckRefusesLoop: a --to whose endpoints include the mirrored pod on a mirrored port is
// refused by Check, in one line that says why and what to do, whether it names the Service, its
// cluster IP or its DNS name, or the pod itself; other destinations pass. Check only reads: the
// refusal comes before anything changes in the cluster.
func TestCheckRefusesLoop(t *testing.T) {
	const fix = "so each copy would be mirrored again; send the copies to another Service, or to one whose selector excludes pod web-1"
	tests := []struct{ to, wantErr string }{
		{to: "svc/api:80", wantErr: `--to "svc/api:80" leads back to the mirrored pod: pod shop/web-1 is an endpoint of service shop/api on port 8080, ` + fix},
		{to: "svc/api", wantErr: `--to "svc/api" leads back to the mirrored pod: pod shop/web-1 is an endpoint of service shop/api on port 8080, ` + fix},
		{to: "10.96.0.1:80", wantErr: `--to "10.96.0.1:80" leads back to the mirrored pod: pod shop/web-1 is an endpoint of service shop/api on port 8080, ` + fix},
		{to: "api.shop.svc.cluster.local:80", wantErr: `--to "api.shop.svc.cluster.local:80" leads back to the mirrored pod: pod shop/web-1 is an endpoint of service shop/api on port 8080, ` + fix},
		{to: "api:80", wantErr: `--to "api:80" leads back to the mirrored pod: pod shop/web-1 is an endpoint of service shop/api on port 8080, ` + fix},
		{to: "svc/hl:8080", wantErr: `--to "svc/hl:8080" leads back to the mirrored pod: pod shop/web-1 is an endpoint of service shop/hl on port 8080, ` + fix},
		{to: "svc/starting:80", wantErr: `--to "svc/starting:80" leads back to the mirrored pod: pod shop/web-1 is an endpoint of service shop/starting on port 8080, ` + fix},
		{to: "10.244.0.5:8080", wantErr: `--to "10.244.0.5:8080" is the mirrored pod shop/web-1 itself: each copy would be mirrored again; send the copies to another pod or Service`},
		{to: "[fd00::5]:8080", wantErr: `--to "[fd00::5]:8080" is the mirrored pod shop/web-1 itself: each copy would be mirrored again; send the copies to another pod or Service`},
		{to: "svc/canary:80"},
		{to: "10.96.0.2:80"},
		{to: "svc/admin:9090"}, // the pod, on a port that is not mirrored
		{to: "10.244.0.5:9090"},
		{to: "10.96.0.1:81"}, // not a port of the Service
		{to: "example.com:80"},
	}
	for _, tt := range tests {
		t.Run(tt.to, func(t *testing.T) {
			client := loopCluster()
			o := completed(t, func(o *Options) { o.PortArgs, o.To = []string{"8080"}, tt.to })
			warnings, err := o.Check(context.Background(), client, &target.Target{Pod: loopPod(), Container: "app", Replicas: 1})
			if tt.wantErr == "" {
				if err != nil || len(warnings) != 0 {
					t.Errorf("warnings %q, error %v; want it accepted", warnings, err)
				}
			} else if err == nil || err.Error() != tt.wantErr {
				t.Errorf("error %v\nwant %q", err, tt.wantErr)
			}
			for _, a := range client.Actions() {
				if a.GetVerb() != "get" && a.GetVerb() != "list" {
					t.Errorf("Check did %s %s; it must only read", a.GetVerb(), a.GetResource().Resource)
				}
			}
		})
	}
}

// TestCheckUnreadableEndpoints: when the API will not show the destination's endpoints, the mirror
// starts with a warning that says what was not checked (HTTP copies are still marked), and does
// not watch what it cannot read.
func TestCheckUnreadableEndpoints(t *testing.T) {
	client := loopCluster()
	client.PrependReactor("list", "endpointslices", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Group: "discovery.k8s.io", Resource: "endpointslices"}, "", errors.New("no RBAC"))
	})
	o := completed(t, func(o *Options) { o.PortArgs, o.To = []string{"8080"}, "svc/api:80" })
	warnings, err := o.Check(context.Background(), client, &target.Target{Pod: loopPod(), Container: "app", Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{`could not check that --to "svc/api:80" does not lead back to pod shop/web-1 (list the endpoints of service "api": ` +
		`endpointslices.discovery.k8s.io is forbidden: no RBAC); ` +
		`HTTP copies carry X-Trafficlab-Mirror and are not copied again, copies of other protocols would be`}
	if d := cmp.Diff(want, warnings); d != "" {
		t.Errorf("warnings (-want +got):\n%s", d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := o.WatchLoop(ctx, client); err != nil || ctx.Err() != nil {
		t.Errorf("WatchLoop = %v (ctx %v); want nil at once", err, ctx.Err())
	}
}

// watches hands the test every watch of EndpointSlices the guard opens, with its options.
type watches struct {
	ch chan *openedWatch
}

const listRV = "100"

type openedWatch struct {
	w    *watch.FakeWatcher
	opts k8stesting.WatchActionImpl
}

// watchSlices hands the test the guard's watches; lists of EndpointSlices carry resource version
// listRV (the fake's carry none), which a watch must go on from.
func watchSlices(client *fake.Clientset) *watches {
	ws := &watches{ch: make(chan *openedWatch)}
	list := k8stesting.ObjectReaction(client.Tracker())
	client.PrependReactor("list", "endpointslices", func(a k8stesting.Action) (bool, runtime.Object, error) {
		handled, obj, err := list(a)
		if l, ok := obj.(*discoveryv1.EndpointSliceList); ok {
			l.ResourceVersion = listRV
		}
		return handled, obj, err
	})
	client.PrependWatchReactor("endpointslices", func(a k8stesting.Action) (bool, watch.Interface, error) {
		w := watch.NewFake()
		ws.ch <- &openedWatch{w: w, opts: a.(k8stesting.WatchActionImpl)}
		return true, w, nil
	})
	return ws
}

func (ws *watches) next(ctx context.Context, t *testing.T) *openedWatch {
	t.Helper()
	select {
	case w := <-ws.ch:
		return w
	case <-ctx.Done():
		t.Fatal("the guard opened no watch of the EndpointSlices")
		return nil
	}
}

// TestWatchLoop: while the mirror runs the guard follows the destination's EndpointSlices (only
// its Service's): a change that leaves the pod out goes by; a watch that ends is opened again; an
// error event makes it list again, and the pod found there ends the mirror; so does a slice that
// adds the pod, with a line that says why and what to do. Ctrl-C ends it quietly.
func TestWatchLoop(t *testing.T) {
	const joined = `mirror stopped: pod shop/web-1 joined the endpoints of service shop/canary (--to "svc/canary:80") on port 8080, so each copy would be mirrored again; send the copies to another Service, or to one whose selector excludes pod web-1`
	start := func(t *testing.T) (context.Context, *fake.Clientset, *watches, chan error, context.CancelFunc) {
		t.Helper()
		client := loopCluster()
		ws := watchSlices(client)
		o := completed(t, func(o *Options) { o.PortArgs, o.To = []string{"8080"}, "svc/canary:80" })
		if _, err := o.Check(context.Background(), client, &target.Target{Pod: loopPod(), Container: "app", Replicas: 1}); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		done := make(chan error, 1)
		go func() { done <- o.WatchLoop(ctx, client) }()
		return ctx, client, ws, done, cancel
	}
	result := func(t *testing.T, ctx context.Context, done chan error) error {
		t.Helper()
		select {
		case err := <-done:
			return err
		case <-ctx.Done():
			t.Fatal("WatchLoop did not return")
			return nil
		}
	}

	t.Run("pod joins", func(t *testing.T) {
		ctx, _, ws, done, cancel := start(t)
		defer cancel()
		w := ws.next(ctx, t)
		if r := w.opts.GetWatchRestrictions(); r.Labels.String() != discoveryv1.LabelServiceName+"=canary" || r.ResourceVersion != listRV {
			t.Errorf("watch selects %q from resource version %q, want the canary Service's slices from the start's list, %q", r.Labels, r.ResourceVersion, listRV)
		}
		// The watch's channel is unbuffered: each send returns once the guard has read the event,
		// so a guard that stopped at the first would block the second.
		w.w.Modify(slice("canary-1", "canary", "web", 8080, otherPodIP, "10.244.0.7"))
		w.w.Add(slice("canary-2", "canary", "web", 9090, loopPodIP)) // the pod, on a port not mirrored
		w.w.Add(slice("canary-3", "canary", "web", 8080, loopPodIP))
		if err := result(t, ctx, done); err == nil || err.Error() != joined {
			t.Errorf("WatchLoop = %v\nwant %q", err, joined)
		}
	})
	t.Run("watch ends", func(t *testing.T) {
		ctx, _, ws, done, cancel := start(t)
		defer cancel()
		w := ws.next(ctx, t)
		changed := slice("canary-1", "canary", "web", 8080, otherPodIP)
		changed.ResourceVersion = "107"
		w.w.Modify(changed)
		w.w.Stop()
		w = ws.next(ctx, t)
		if rv := w.opts.GetWatchRestrictions().ResourceVersion; rv != "107" {
			t.Errorf("watch opened again from resource version %q, want the last seen, 107", rv)
		}
		w.w.Modify(slice("canary-1", "canary", "web", 8080, otherPodIP, loopPodIP))
		if err := result(t, ctx, done); err == nil || err.Error() != joined {
			t.Errorf("WatchLoop = %v\nwant %q", err, joined)
		}
	})
	t.Run("error lists again", func(t *testing.T) {
		ctx, client, ws, done, cancel := start(t)
		defer cancel()
		w := ws.next(ctx, t)
		// The pod joined while the watch could not say (its resource version expired): the list
		// that follows the error finds it.
		if _, err := client.DiscoveryV1().EndpointSlices("shop").Update(ctx, slice("canary-1", "canary", "web", 8080, otherPodIP, loopPodIP), metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		w.w.Error(&metav1.Status{Status: metav1.StatusFailure, Code: 410, Reason: metav1.StatusReasonExpired})
		if err := result(t, ctx, done); err == nil || err.Error() != joined {
			t.Errorf("WatchLoop = %v\nwant %q", err, joined)
		}
	})
	t.Run("interrupted", func(t *testing.T) {
		ctx, _, ws, done, cancel := start(t)
		w := ws.next(ctx, t)
		w.w.Modify(slice("canary-1", "canary", "web", 8080, otherPodIP))
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("WatchLoop = %v after the mirror ended, want nil", err)
			}
		case <-time.After(time.Minute):
			t.Fatal("WatchLoop did not return after the mirror ended")
		}
	})
}

// TestWatchLoopNothingToWatch: a --to outside the cluster's Services has no endpoints to follow.
func TestWatchLoopNothingToWatch(t *testing.T) {
	client := loopCluster()
	o := completed(t, func(o *Options) { o.PortArgs, o.To = []string{"8080"}, "example.com:80" })
	if _, err := o.Check(context.Background(), client, &target.Target{Pod: loopPod(), Container: "app", Replicas: 1}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := o.WatchLoop(ctx, client); err != nil || ctx.Err() != nil {
		t.Errorf("WatchLoop = %v (ctx %v); want nil at once", err, ctx.Err())
	}
	for _, a := range client.Actions() {
		if a.GetVerb() == "watch" {
			t.Errorf("watched %s for a --to outside the cluster", a.GetResource().Resource)
		}
	}
}

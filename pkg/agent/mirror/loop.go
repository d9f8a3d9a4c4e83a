package mirror

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/target"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// A --to whose endpoints include the mirrored pod loops: each copy reaches a mirrored port again, and
// with kube-proxy's hairpin NAT it arrives from another address than the agent dialed from, so the
// agent cannot tell it from the pod's own traffic and copies it again, without end. HTTP copies carry
// wire.MirrorHeader and are not copied again; other protocols carry no mark. So the plugin refuses
// such a --to before it changes anything, and ends the mirror if the pod joins the destination's
// endpoints while it runs.

// destination is the Service that --to leads to, and the port of it the copies go to.
type destination struct {
	service *corev1.Service
	port    corev1.ServicePort
}

// lookupDestination finds the Service a HOST:PORT --to leads to in the cluster: a cluster IP of a
// Service in the pod's namespace (a Service selects only pods of its own namespace), or a Service's
// DNS name (NAME, NAME.NS.svc, NAME.NS.svc.cluster.local). Nil with no error when it leads to none;
// an error when the API would not say.
func lookupDestination(ctx context.Context, client kubernetes.Interface, namespace, hostport string) (*destination, error) {
	host, portStr, _ := net.SplitHostPort(hostport)
	port, _ := strconv.Atoi(portStr)
	byPort := func(s *corev1.Service) *destination {
		for _, p := range s.Spec.Ports {
			if int(p.Port) == port && s.Spec.Type != corev1.ServiceTypeExternalName {
				return &destination{service: s, port: p}
			}
		}
		return nil
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		list, err := client.CoreV1().Services(namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, fmt.Errorf("list services in namespace %q: %w", namespace, err)
		}
		for i := range list.Items {
			s := &list.Items[i]
			for _, c := range append([]string{s.Spec.ClusterIP}, s.Spec.ClusterIPs...) {
				if a, err := netip.ParseAddr(c); err == nil && a.Unmap() == ip.Unmap() {
					return byPort(s), nil
				}
			}
		}
		return nil, nil
	}
	labels := strings.Split(strings.TrimSuffix(host, "."), ".")
	name, ns := labels[0], namespace
	switch {
	case len(labels) == 1:
	case len(labels) >= 3 && labels[2] == "svc":
		ns = labels[1]
	default:
		return nil, nil // a name outside the cluster's service domain
	}
	s, err := client.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get service %q in namespace %q: %w", name, ns, err)
	}
	return byPort(s), nil
}

// loopGuard refuses a --to that leads back to the mirrored pod, at the start and while the mirror
// runs.
type loopGuard struct {
	to    string // --to as given
	pod   *corev1.Pod
	ips   map[netip.Addr]bool
	ports map[int]bool // the mirrored ports of the pod
	host  string       // what the agent dials
	port  int
	dest  *destination
	// lookupErr says why the Service behind a HOST:PORT --to is unknown.
	lookupErr error
	// readable says the start could list the destination's EndpointSlices, and rv is where the
	// watch goes on from.
	readable bool
	rv       string
}

func newLoopGuard(to string, pod *corev1.Pod, ports []target.PortSpec, dial string, dest *destination) *loopGuard {
	g := &loopGuard{to: to, pod: pod, ips: podIPs(pod), ports: map[int]bool{}, dest: dest}
	for _, p := range ports {
		g.ports[p.Port] = true
	}
	host, port, _ := net.SplitHostPort(dial)
	g.host = host
	g.port, _ = strconv.Atoi(port)
	return g
}

func podIPs(pod *corev1.Pod) map[netip.Addr]bool {
	ips := map[netip.Addr]bool{}
	for _, s := range append([]corev1.PodIP{{IP: pod.Status.PodIP}}, pod.Status.PodIPs...) {
		if a, err := netip.ParseAddr(s.IP); err == nil {
			ips[a.Unmap()] = true
		}
	}
	return ips
}

// forPod is the same guard for another pod of the workload, to check before its mirror starts.
func (g *loopGuard) forPod(pod *corev1.Pod) *loopGuard {
	c := *g
	c.pod, c.ips, c.readable, c.rv = pod, podIPs(pod), false, ""
	return &c
}

func (g *loopGuard) podName() string { return g.pod.Namespace + "/" + g.pod.Name }

// selector picks the destination Service's EndpointSlices.
func (g *loopGuard) selector() metav1.ListOptions {
	return metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + g.dest.service.Name}
}

// check runs before anything changes in the cluster: an error when --to leads back to the mirrored
// pod, a warning when the API would not say.
func (g *loopGuard) check(ctx context.Context, client kubernetes.Interface) (string, error) {
	if a, err := netip.ParseAddr(g.host); err == nil && g.ips[a.Unmap()] && g.ports[g.port] {
		return "", fmt.Errorf("--to %q is the mirrored pod %s itself: each copy would be mirrored again; send the copies to another pod or Service", g.to, g.podName())
	}
	if g.lookupErr != nil || g.dest == nil {
		return g.unchecked(g.lookupErr), nil
	}
	list, err := client.DiscoveryV1().EndpointSlices(g.dest.service.Namespace).List(ctx, g.selector())
	if err != nil {
		return g.unchecked(fmt.Errorf("list the endpoints of service %q: %w", g.dest.service.Name, err)), nil
	}
	g.readable, g.rv = true, list.ResourceVersion
	for i := range list.Items {
		if port, ok := g.hit(&list.Items[i]); ok {
			return "", g.loopError(false, port)
		}
	}
	return "", nil
}

// unchecked is the warning for a --to whose endpoints could not be read; "" when err is nil.
func (g *loopGuard) unchecked(err error) string {
	if err == nil {
		return ""
	}
	return fmt.Sprintf("could not check that --to %q does not lead back to pod %s (%v); HTTP copies carry %s and are not copied again, copies of other protocols would be",
		g.to, g.podName(), err, wire.MirrorHeader)
}

func (g *loopGuard) loopError(joined bool, port int) error {
	svc := g.dest.service.Namespace + "/" + g.dest.service.Name
	fix := fmt.Sprintf("send the copies to another Service, or to one whose selector excludes pod %s", g.pod.Name)
	if joined {
		return fmt.Errorf("mirror stopped: pod %s joined the endpoints of service %s (--to %q) on port %d, so each copy would be mirrored again; %s",
			g.podName(), svc, g.to, port, fix)
	}
	return fmt.Errorf("--to %q leads back to the mirrored pod: pod %s is an endpoint of service %s on port %d, so each copy would be mirrored again; %s",
		g.to, g.podName(), svc, port, fix)
}

// hit reports whether the slice sends the copies to the mirrored pod on a mirrored port, and which.
// The pod is recognised by its address or by the endpoint's reference, whatever its conditions: a
// pod that is not ready now may be soon, and the watch would then stop the mirror anyway.
func (g *loopGuard) hit(s *discoveryv1.EndpointSlice) (int, bool) {
	port, ok := g.slicePort(s)
	if !ok {
		return 0, false
	}
	for _, ep := range s.Endpoints {
		if ref := ep.TargetRef; ref != nil && ref.Kind == "Pod" && ref.Name == g.pod.Name && (ref.Namespace == "" || ref.Namespace == g.pod.Namespace) {
			return port, true
		}
		for _, a := range ep.Addresses {
			if ip, err := netip.ParseAddr(a); err == nil && g.ips[ip.Unmap()] {
				return port, true
			}
		}
	}
	return 0, false
}

// slicePort is the pod port the copies reach through the slice, if it is a mirrored one. A headless
// Service's name resolves to its endpoints, so the port dialed is the pod's; otherwise kube-proxy
// sends the Service's port to the slice's port of the same name (none: every port).
func (g *loopGuard) slicePort(s *discoveryv1.EndpointSlice) (int, bool) {
	svc := g.dest.service
	if svc.Spec.ClusterIP == corev1.ClusterIPNone {
		return g.port, g.ports[g.port]
	}
	for _, p := range s.Ports {
		name := ""
		if p.Name != nil {
			name = *p.Name
		}
		if name != g.dest.port.Name {
			continue
		}
		if p.Port == nil && len(g.ports) > 0 { // every port of the endpoints: name the lowest mirrored one
			return slices.Min(slices.Collect(maps.Keys(g.ports))), true
		}
		if p.Port != nil && g.ports[int(*p.Port)] {
			return int(*p.Port), true
		}
	}
	return 0, false
}

// watchRetry spaces the attempts to list and watch again after the API refused or dropped the watch.
const watchRetry = 2 * time.Second

// watch re-checks the destination's EndpointSlices while the mirror runs: it returns the loop's
// error as soon as a slice that sends the copies to the mirrored pod is added or changed, and nil
// when ctx ends first. It returns nil at once when --to leads to no Service, or when the start could
// not read its endpoints (the start warned then).
func (g *loopGuard) watch(ctx context.Context, client kubernetes.Interface) error {
	if g == nil || g.dest == nil || !g.readable {
		return nil
	}
	api := client.DiscoveryV1().EndpointSlices(g.dest.service.Namespace)
	rv := g.rv
	for ctx.Err() == nil {
		if rv == "" {
			list, err := api.List(ctx, g.selector())
			if err != nil {
				pause(ctx, watchRetry)
				continue
			}
			for i := range list.Items {
				if port, ok := g.hit(&list.Items[i]); ok {
					return g.loopError(true, port)
				}
			}
			rv = list.ResourceVersion
		}
		opts := g.selector()
		opts.ResourceVersion, opts.AllowWatchBookmarks = rv, true
		w, err := api.Watch(ctx, opts)
		if err != nil {
			rv = ""
			pause(ctx, watchRetry)
			continue
		}
		err = g.follow(ctx, w, &rv)
		w.Stop()
		if err != nil {
			return err
		}
	}
	return nil
}

// follow reads one watch until it ends (rv is then where the next one goes on from, or "" to list
// again) or a slice sends the copies to the mirrored pod.
func (g *loopGuard) follow(ctx context.Context, w watch.Interface, rv *string) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.ResultChan():
			if !ok {
				return nil
			}
			if ev.Type == watch.Error {
				*rv = "" // typically "too old a resource version": list again
				return nil
			}
			s, isSlice := ev.Object.(*discoveryv1.EndpointSlice)
			if !isSlice {
				continue
			}
			*rv = s.ResourceVersion
			if ev.Type != watch.Added && ev.Type != watch.Modified {
				continue
			}
			if port, hit := g.hit(s); hit {
				return g.loopError(true, port)
			}
		}
	}
}

func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// WatchLoop re-checks, while the mirror runs, that --to does not lead back to the mirrored pod:
// it returns the error to end the mirror with once the pod joins the endpoints of the Service --to
// leads to, and nil when ctx ends first or there is nothing to watch. The copies go to the Service's
// address and kube-proxy picks the endpoint, so they cannot be kept from one endpoint: the mirror
// ends instead, saying why.
func (o *Options) WatchLoop(ctx context.Context, client kubernetes.Interface) error {
	return o.guard.watch(ctx, client)
}

package target

import (
	"context"
	"fmt"
	"strings"

	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/inject"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/transport"
)

// Needs lists what a command is about to do in the target pod.
type Needs struct {
	// Inject: an agent will be added (not reused), then waited for.
	Inject bool
	// Exec: the control stream (exec into the agent).
	Exec bool
	// PortForward: the data stream (port-forward to the agent's loopback listener).
	PortForward bool
	// Transport carries exec and port-forward; it decides the RBAC verb (see Protocol.RBACVerbs). Its
	// zero value asks for either verb, as the fallback transports need.
	Transport transport.Protocol
}

// Preflight checks with SelfSubjectAccessReviews that the user may do everything needs lists in the
// pod, so that a command fails before it adds an agent it then cannot talk to. Every missing rule is
// reported at once, as Role rules, in one *inject.MissingPermissionError. With needs.Inject it also asks
// discovery whether the cluster serves ephemeral containers at all.
func Preflight(ctx context.Context, client kubernetes.Interface, namespace, podName string, needs Needs) error {
	if needs.Inject {
		if err := checkEphemeralContainersServed(client); err != nil {
			return err
		}
	}

	var checks []check
	if needs.Inject {
		for _, r := range inject.RequiredRules() {
			for _, v := range r.Verbs {
				checks = append(checks, check{alternatives: []inject.Rule{{APIGroup: r.APIGroup, Resource: r.Resource, Verbs: []string{v}}}})
			}
		}
	}
	if needs.Exec {
		checks = append(checks, streamCheck("pods/exec", needs.Transport))
	}
	if needs.PortForward {
		checks = append(checks, streamCheck("pods/portforward", needs.Transport))
	}

	return runChecks(ctx, client, namespace, podName, checks)
}

// runChecks asks the API server about each check (SelfSubjectAccessReview) and returns what is
// missing as one *inject.MissingPermissionError, the rules merged; nil when everything is allowed.
func runChecks(ctx context.Context, client kubernetes.Interface, namespace, podName string, checks []check) error {
	var missing []inject.Rule
	for _, c := range checks {
		ok, err := c.allowed(ctx, client, namespace, podName)
		if err != nil {
			return err
		}
		if !ok {
			missing = append(missing, c.missingRule())
		}
	}
	if len(missing) > 0 {
		return &inject.MissingPermissionError{Namespace: namespace, Rules: inject.MergeRules(missing)}
	}
	return nil
}

// check passes when any one of its alternatives is allowed.
type check struct {
	alternatives []inject.Rule // each with one verb
}

func streamCheck(resource string, p transport.Protocol) check {
	var c check
	for _, v := range p.RBACVerbs() {
		c.alternatives = append(c.alternatives, inject.Rule{Resource: resource, Verbs: []string{v}})
	}
	return c
}

// missingRule is the rule to ask for when no alternative is allowed: for the fallback transport that is
// both verbs, because which one the connection ends up using depends on the server.
func (c check) missingRule() inject.Rule {
	return inject.MergeRules(c.alternatives)[0]
}

func (c check) allowed(ctx context.Context, client kubernetes.Interface, namespace, podName string) (bool, error) {
	for _, r := range c.alternatives {
		resource, sub, _ := strings.Cut(r.Resource, "/")
		review := &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Namespace:   namespace,
				Verb:        r.Verbs[0],
				Group:       r.APIGroup,
				Resource:    resource,
				Subresource: sub,
				// With the name, rules limited by resourceNames are judged as the real requests will be
				// (WaitRunning's list and watch select the pod by metadata.name, which RBAC sees as its name).
				Name: podName,
			},
		}}
		res, err := client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, review, metav1.CreateOptions{})
		if err != nil {
			return false, fmt.Errorf("checking RBAC permission %s in namespace %q: %w", r, namespace, err)
		}
		if res.Status.Allowed {
			return true, nil
		}
	}
	return false, nil
}

// checkEphemeralContainersServed fails only when discovery answered and the subresource is absent;
// when discovery itself fails the patch will tell (Inject maps its 404 to the same sentence).
func checkEphemeralContainersServed(client kubernetes.Interface) error {
	if served, known := EphemeralContainersServed(client); known && !served {
		return inject.ErrEphemeralContainersUnsupported
	}
	return nil
}

// EphemeralContainersServed looks for the pods/ephemeralcontainers subresource in discovery; known is
// false when discovery did not answer.
func EphemeralContainersServed(client kubernetes.Interface) (served, known bool) {
	list, err := client.Discovery().ServerResourcesForGroupVersion("v1")
	if err != nil || list == nil {
		return false, false
	}
	for _, r := range list.APIResources {
		if r.Name == "pods/ephemeralcontainers" {
			return true, true
		}
	}
	return false, true
}

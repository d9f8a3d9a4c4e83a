package target

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"slices"
	"testing"

	authorizationv1 "k8s.io/api/authorization/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"sigs.k8s.io/yaml"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/transport"
)

// The Roles in docs/security.md are what users copy into their clusters: this test holds them to the
// code. A fake API server that authorizes every request (reads and SelfSubjectAccessReviews alike)
// against the documented rules must let every target kind resolve and pass the preflight, and each
// verb of the pod Role must be needed by some transport, so the documented Role stays minimal.

// securityDocRules reads the ```yaml blocks of docs/security.md: the first is the pod Role, the second
// the rules added for workload and Service targets.
func securityDocRules(t *testing.T) (pod, workloads []rbacv1.PolicyRule) {
	t.Helper()
	doc, err := os.ReadFile("../../../docs/security.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllSubmatch(doc, -1)
	if len(blocks) != 2 {
		t.Fatalf("docs/security.md has %d yaml blocks, want 2 (the pod Role, the workload rules)", len(blocks))
	}
	var role rbacv1.Role
	if err := yaml.UnmarshalStrict(blocks[0][1], &role); err != nil {
		t.Fatalf("the first yaml block of docs/security.md is not a Role: %v", err)
	}
	if role.Kind != "Role" || len(role.Rules) == 0 {
		t.Fatalf("the first yaml block of docs/security.md is a %q with %d rules, want a Role", role.Kind, len(role.Rules))
	}
	if err := yaml.UnmarshalStrict(blocks[1][1], &workloads); err != nil {
		t.Fatalf("the second yaml block of docs/security.md is not a list of rules: %v", err)
	}
	return role.Rules, workloads
}

// allows is RBAC's rule match for namespaced resources, without wildcards or resourceNames (the
// documented Roles use neither, and a wildcard there would be a finding).
func allows(rules []rbacv1.PolicyRule, verb, group, resource string) bool {
	for _, r := range rules {
		if slices.Contains(r.APIGroups, group) && slices.Contains(r.Resources, resource) && slices.Contains(r.Verbs, verb) {
			return true
		}
	}
	return false
}

// rbacEnforcingClient serves objs and refuses, as the API server would, every request the rules do not
// allow; SelfSubjectAccessReviews are answered from the same rules.
func rbacEnforcingClient(rules []rbacv1.PolicyRule, objs ...runtime.Object) *fake.Clientset {
	client := fake.NewClientset(objs...)
	client.Resources = []*metav1.APIResourceList{{GroupVersion: "v1", APIResources: []metav1.APIResource{
		{Name: "pods"}, {Name: "pods/exec"}, {Name: "pods/portforward"}, {Name: "pods/ephemeralcontainers"},
	}}}
	client.PrependReactor("*", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetResource().Resource == "selfsubjectaccessreviews" {
			review := a.(k8stesting.CreateAction).GetObject().(*authorizationv1.SelfSubjectAccessReview).DeepCopy()
			ra := review.Spec.ResourceAttributes
			res := ra.Resource
			if ra.Subresource != "" {
				res += "/" + ra.Subresource
			}
			review.Status.Allowed = allows(rules, ra.Verb, ra.Group, res)
			return true, review, nil
		}
		gvr := a.GetResource()
		res := gvr.Resource
		if a.GetSubresource() != "" {
			res += "/" + a.GetSubresource()
		}
		if a.GetNamespace() == "" || !allows(rules, a.GetVerb(), gvr.Group, res) {
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Group: gvr.Group, Resource: res}, "", fmt.Errorf("not in the documented Role"))
		}
		return false, nil, nil
	})
	return client
}

// start is what every verb does before it changes anything: resolve the target, then the preflight.
func start(ctx context.Context, rules []rbacv1.PolicyRule, resource string, p transport.Protocol) error {
	client := rbacEnforcingClient(rules, cluster()...)
	tgt, err := Resolve(ctx, client, Options{Namespace: ns, Resource: resource})
	if err != nil {
		return err
	}
	return Preflight(ctx, client, ns, tgt.Pod.Name, allNeeds(p))
}

func TestSecurityDocRolesSuffice(t *testing.T) {
	pod, workloads := securityDocRules(t)
	all := append(slices.Clone(pod), workloads...)
	for _, resource := range []string{"pod/web-1", "deploy/web", "sts/web", "ds/web", "rs/web-5d4f", "rc/web", "job/web", "svc/web"} {
		for _, p := range []transport.Protocol{transport.ProtocolAuto, transport.ProtocolSPDY, transport.ProtocolWebSocket} {
			if err := start(context.Background(), all, resource, p); err != nil {
				t.Errorf("%s over %s with the documented Role: %v", resource, p, err)
			}
		}
	}
	if err := start(context.Background(), pod, "pod/web-1", transport.ProtocolAuto); err != nil {
		t.Errorf("pod/web-1 with the documented pod Role alone: %v", err)
	}
}

func TestSecurityDocPodRoleIsMinimal(t *testing.T) {
	pod, _ := securityDocRules(t)
	for i, r := range pod {
		for j, verb := range r.Verbs {
			less := make([]rbacv1.PolicyRule, len(pod))
			for k := range pod {
				less[k] = *pod[k].DeepCopy()
			}
			less[i].Verbs = slices.Delete(slices.Clone(r.Verbs), j, j+1)
			needed := false
			for _, p := range []transport.Protocol{transport.ProtocolSPDY, transport.ProtocolWebSocket} {
				if start(context.Background(), less, "pod/web-1", p) != nil {
					needed = true
				}
			}
			if !needed {
				t.Errorf("docs/security.md's Role grants %q on %v, which no transport needs", verb, r.Resources)
			}
		}
	}
}

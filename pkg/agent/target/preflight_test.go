package target

import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/inject"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/transport"
)

// rbacClient answers SelfSubjectAccessReviews from allowed ("verb resource/subresource") and records
// every review it was asked.
func rbacClient(ephemeralServed bool, allowed ...string) (*fake.Clientset, *[]authorizationv1.ResourceAttributes) {
	client := fake.NewClientset()
	v1 := &metav1.APIResourceList{GroupVersion: "v1", APIResources: []metav1.APIResource{{Name: "pods"}, {Name: "pods/exec"}}}
	if ephemeralServed {
		v1.APIResources = append(v1.APIResources, metav1.APIResource{Name: "pods/ephemeralcontainers"})
	}
	client.Resources = []*metav1.APIResourceList{v1}

	var asked []authorizationv1.ResourceAttributes
	client.PrependReactor("create", "selfsubjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		review := a.(k8stesting.CreateAction).GetObject().(*authorizationv1.SelfSubjectAccessReview).DeepCopy()
		ra := *review.Spec.ResourceAttributes
		asked = append(asked, ra)
		key := ra.Verb + " " + ra.Resource
		if ra.Subresource != "" {
			key += "/" + ra.Subresource
		}
		for _, a := range allowed {
			if a == key {
				review.Status.Allowed = true
			}
		}
		return true, review, nil
	})
	return client, &asked
}

func allNeeds(t transport.Protocol) Needs {
	return Needs{Inject: true, Exec: true, PortForward: true, Transport: t}
}

func TestPreflight(t *testing.T) {
	everything := []string{"patch pods/ephemeralcontainers", "list pods", "watch pods", "get pods/exec", "create pods/exec", "get pods/portforward", "create pods/portforward"}
	without := func(drop ...string) []string {
		var out []string
		for _, a := range everything {
			keep := true
			for _, d := range drop {
				if a == d {
					keep = false
				}
			}
			if keep {
				out = append(out, a)
			}
		}
		return out
	}
	tests := []struct {
		name     string
		served   bool
		allowed  []string
		needs    Needs
		wantErr  string
		wantPerm bool
	}{
		{name: "everything allowed", served: true, allowed: everything, needs: allNeeds(transport.ProtocolAuto)},
		{
			name: "SPDY port-forward needs create", served: true,
			allowed:  without("create pods/portforward"),
			needs:    allNeeds(transport.ProtocolSPDY),
			wantErr:  `missing RBAC permission: apiGroups: [""], resources: ["pods/portforward"], verbs: ["create"] in namespace "shop"`,
			wantPerm: true,
		},
		{
			name: "WebSocket port-forward needs get", served: true,
			allowed:  without("get pods/portforward"),
			needs:    allNeeds(transport.ProtocolWebSocket),
			wantErr:  `missing RBAC permission: apiGroups: [""], resources: ["pods/portforward"], verbs: ["get"] in namespace "shop"`,
			wantPerm: true,
		},
		{
			name: "WebSocket does not need create", served: true,
			allowed: without("create pods/portforward", "create pods/exec"),
			needs:   allNeeds(transport.ProtocolWebSocket),
		},
		{
			name: "fallback is happy with create alone", served: true,
			allowed: without("get pods/portforward", "get pods/exec"),
			needs:   allNeeds(transport.ProtocolAuto),
		},
		{
			name: "fallback is happy with get alone", served: true,
			allowed: without("create pods/portforward", "create pods/exec"),
			needs:   allNeeds(transport.ProtocolAuto),
		},
		{
			name: "fallback with neither asks for both verbs", served: true,
			allowed:  without("get pods/exec", "create pods/exec"),
			needs:    allNeeds(transport.ProtocolAuto),
			wantErr:  `missing RBAC permission: apiGroups: [""], resources: ["pods/exec"], verbs: ["create", "get"] in namespace "shop"`,
			wantPerm: true,
		},
		{
			name: "every missing rule at once, merged per resource", served: true,
			allowed: []string{"list pods", "get pods/portforward"},
			needs:   allNeeds(transport.ProtocolWebSocket),
			wantErr: `missing RBAC permissions: apiGroups: [""], resources: ["pods/ephemeralcontainers"], verbs: ["patch"]; ` +
				`apiGroups: [""], resources: ["pods"], verbs: ["watch"]; apiGroups: [""], resources: ["pods/exec"], verbs: ["get"] in namespace "shop"`,
			wantPerm: true,
		},
		{
			name: "reusing an agent needs no patch", served: true,
			allowed: without("patch pods/ephemeralcontainers", "list pods", "watch pods"),
			needs:   Needs{Exec: true, PortForward: true, Transport: transport.ProtocolSPDY},
		},
		{
			name:    "ephemeral containers not served",
			allowed: everything,
			needs:   allNeeds(transport.ProtocolSPDY),
			wantErr: "ephemeral containers are not supported by this cluster (Kubernetes 1.25+ with the EphemeralContainers feature)",
		},
		{
			name:    "without injecting, discovery is not consulted",
			allowed: everything,
			needs:   Needs{Exec: true, Transport: transport.ProtocolSPDY},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			client, _ := rbacClient(tc.served, tc.allowed...)
			err := Preflight(context.Background(), client, ns, "web-1", tc.needs)
			if got := errString(err); got != tc.wantErr {
				t.Errorf("Preflight() error =\n%s\nwant\n%s", got, tc.wantErr)
			}
			var perm *inject.MissingPermissionError
			if errors.As(err, &perm) != tc.wantPerm {
				t.Errorf("errors.As(*MissingPermissionError) = %v, want %v", !tc.wantPerm, tc.wantPerm)
			}
			if tc.wantErr != "" && tc.wantErr == string(inject.ErrEphemeralContainersUnsupported) && !errors.Is(err, inject.ErrEphemeralContainersUnsupported) {
				t.Errorf("errors.Is(err, ErrEphemeralContainersUnsupported) = false")
			}
		})
	}
}

// The reviews must ask about this pod in this namespace, so that rules limited by resourceNames are
// judged as the real requests will be.
func TestPreflightAsksAboutThePod(t *testing.T) {
	client, asked := rbacClient(true, "patch pods/ephemeralcontainers", "list pods", "watch pods", "create pods/exec", "create pods/portforward")
	if err := Preflight(context.Background(), client, ns, "web-1", allNeeds(transport.ProtocolSPDY)); err != nil {
		t.Fatalf("Preflight() error = %v", err)
	}
	want := []authorizationv1.ResourceAttributes{
		{Namespace: ns, Name: "web-1", Verb: "patch", Resource: "pods", Subresource: "ephemeralcontainers"},
		{Namespace: ns, Name: "web-1", Verb: "list", Resource: "pods"},
		{Namespace: ns, Name: "web-1", Verb: "watch", Resource: "pods"},
		{Namespace: ns, Name: "web-1", Verb: "create", Resource: "pods", Subresource: "exec"},
		{Namespace: ns, Name: "web-1", Verb: "create", Resource: "pods", Subresource: "portforward"},
	}
	if diff := cmp.Diff(want, *asked); diff != "" {
		t.Errorf("reviews asked (-want +got):\n%s", diff)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

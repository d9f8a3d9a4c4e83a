package target

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/transport"
)

// Listing the sessions needs list pods and an exec verb, in the namespace or (with -A, namespace "")
// cluster-wide, and says what is missing in one line.
func TestPreflightReadSessions(t *testing.T) {
	for _, tt := range []struct {
		name      string
		namespace string
		allowed   []string
		want      string // empty: allowed
	}{
		{"both allowed", "dev", []string{"list pods", "get pods/exec"}, ""},
		{"no exec", "dev", []string{"list pods"}, `missing RBAC permission: apiGroups: [""], resources: ["pods/exec"], verbs: ["create", "get"] in namespace "dev"`},
		{"nothing, cluster-wide", "", nil, `missing RBAC permissions: apiGroups: [""], resources: ["pods"], verbs: ["list"]; apiGroups: [""], resources: ["pods/exec"], verbs: ["create", "get"] in every namespace (a ClusterRole)`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			client, asked := rbacClient(true, tt.allowed...)
			err := PreflightReadSessions(context.Background(), client, tt.namespace, transport.ProtocolAuto)
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tt.want {
				t.Errorf("PreflightReadSessions = %q, want %q", got, tt.want)
			}
			for _, ra := range *asked {
				if ra.Namespace != tt.namespace || ra.Name != "" {
					t.Errorf("asked about %+v, want namespace %q and no pod name", ra, tt.namespace)
				}
			}
		})
	}
}

// Pods of a workload are every pod its selector matches, ready or not; no resource lists the namespace.
func TestPods(t *testing.T) {
	pod := func(ns, name string, labels map[string]string, phase corev1.PodPhase) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels}, Status: corev1.PodStatus{Phase: phase}}
	}
	api := map[string]string{"app": "api"}
	client := fake.NewClientset(
		pod("dev", "api-1", api, corev1.PodRunning),
		pod("dev", "api-2", api, corev1.PodPending),
		pod("dev", "web-1", map[string]string{"app": "web"}, corev1.PodRunning),
		pod("prod", "api-1", api, corev1.PodRunning),
		&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "dev", Name: "api"},
			Spec: appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: api}}},
	)
	names := func(pods []corev1.Pod) []string {
		var out []string
		for _, p := range pods {
			out = append(out, p.Namespace+"/"+p.Name)
		}
		return out
	}
	for _, tt := range []struct {
		namespace, resource string
		want                []string
	}{
		{"dev", "deploy/api", []string{"dev/api-1", "dev/api-2"}},
		{"dev", "pod/web-1", []string{"dev/web-1"}},
		{"dev", "", []string{"dev/api-1", "dev/api-2", "dev/web-1"}},
		{"", "", []string{"dev/api-1", "dev/api-2", "dev/web-1", "prod/api-1"}},
	} {
		got, err := Pods(context.Background(), client, tt.namespace, tt.resource)
		if err != nil {
			t.Fatalf("Pods(%q, %q): %v", tt.namespace, tt.resource, err)
		}
		if diff := cmp.Diff(tt.want, names(got)); diff != "" {
			t.Errorf("Pods(%q, %q) (-want +got):\n%s", tt.namespace, tt.resource, diff)
		}
	}
	if _, err := Pods(context.Background(), client, "dev", "deploy/none"); err == nil {
		t.Error("Pods of a missing deployment: no error")
	}
}

// WhoAmI takes the API server's word (which sees through --as), and the kubeconfig's user when the
// server gives none.
func TestWhoAmI(t *testing.T) {
	client := fake.NewClientset()
	client.PrependReactor("create", "selfsubjectreviews", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, &authenticationv1.SelfSubjectReview{Status: authenticationv1.SelfSubjectReviewStatus{
			UserInfo: authenticationv1.UserInfo{Username: "alice@example.com"}}}, nil
	})
	if got := WhoAmI(context.Background(), Kube{Client: client, User: "kind-admin"}); got.User != "alice@example.com" || got.Host == "" {
		t.Errorf("WhoAmI with a review = %+v, want the server's user and this host", got)
	}
	// The fake clientset answers an empty review, as a server that knows no user name would.
	if got := WhoAmI(context.Background(), Kube{Client: fake.NewClientset(), User: "kind-admin"}); got.User != "kind-admin" {
		t.Errorf("WhoAmI without a review's user = %+v, want the kubeconfig's", got)
	}
}

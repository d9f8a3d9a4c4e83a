package inject

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func runningPod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "nginx"}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
}

func TestInjectPatchesEphemeralContainers(t *testing.T) {
	pod := runningPod()
	client := fake.NewClientset(pod)
	c := BuildAgentContainer(pod, AgentSpec{Image: testImage, Capabilities: NetAdmin, NameSuffix: suffixes("abcde")})

	got, err := Inject(context.Background(), client, pod, c)
	if err != nil {
		t.Fatalf("Inject() error = %v", err)
	}
	if diff := cmp.Diff([]corev1.EphemeralContainer{c}, got.Spec.EphemeralContainers); diff != "" {
		t.Errorf("returned pod's ephemeral containers (-want +got):\n%s", diff)
	}

	var patches []k8stesting.PatchAction
	for _, a := range client.Actions() {
		if p, ok := a.(k8stesting.PatchAction); ok {
			patches = append(patches, p)
		}
	}
	if len(patches) != 1 {
		t.Fatalf("got %d patch actions, want 1: %v", len(patches), client.Actions())
	}
	p := patches[0]
	if p.GetSubresource() != "ephemeralcontainers" || p.GetPatchType() != types.StrategicMergePatchType || p.GetName() != "web" || p.GetNamespace() != "shop" {
		t.Errorf("patch = %s %s/%s subresource %q type %s; want a strategic merge patch of shop/web ephemeralcontainers",
			p.GetVerb(), p.GetNamespace(), p.GetName(), p.GetSubresource(), p.GetPatchType())
	}
	// The patch must touch nothing but the ephemeral containers, so concurrent changes to the pod survive.
	var body map[string]map[string]json.RawMessage
	if err := json.Unmarshal(p.GetPatch(), &body); err != nil {
		t.Fatalf("patch is not JSON: %v: %s", err, p.GetPatch())
	}
	if len(body) != 1 || body["spec"] == nil {
		t.Errorf("patch has top-level keys other than spec: %s", p.GetPatch())
	}
	for k := range body["spec"] {
		if k != "ephemeralContainers" && k != "$setElementOrder/ephemeralContainers" {
			t.Errorf("patch touches spec.%s: %s", k, p.GetPatch())
		}
	}
}

func TestInjectErrors(t *testing.T) {
	gr := schema.GroupResource{Resource: "pods"}
	status := func(code int32, reason metav1.StatusReason, msg string, details *metav1.StatusDetails) error {
		return &apierrors.StatusError{ErrStatus: metav1.Status{Status: metav1.StatusFailure, Code: code, Reason: reason, Message: msg, Details: details}}
	}
	tests := []struct {
		name    string
		caps    Capabilities
		add     bool // AddNetRaw
		err     error
		want    string
		wantIs  error
		wantRBA bool
	}{
		{
			name:   "404 without details: subresource missing",
			err:    status(http.StatusNotFound, metav1.StatusReasonNotFound, "the server could not find the requested resource", nil),
			want:   "ephemeral containers are not supported by this cluster (Kubernetes 1.25+ with the EphemeralContainers feature)",
			wantIs: ErrEphemeralContainersUnsupported,
		},
		{
			name:   "404 with empty details name: subresource missing",
			err:    status(http.StatusNotFound, metav1.StatusReasonNotFound, "the server could not find the requested resource", &metav1.StatusDetails{}),
			want:   "ephemeral containers are not supported by this cluster (Kubernetes 1.25+ with the EphemeralContainers feature)",
			wantIs: ErrEphemeralContainersUnsupported,
		},
		{
			name: "404 naming the pod: the pod is gone",
			err:  apierrors.NewNotFound(gr, "web"),
			want: `pods "web" not found in namespace "shop"`,
		},
		{
			name:    "403 from RBAC",
			err:     apierrors.NewForbidden(gr, "web", errors.New(`User "dev" cannot patch resource "pods/ephemeralcontainers" in API group "" in the namespace "shop"`)),
			want:    `missing RBAC permission: apiGroups: [""], resources: ["pods/ephemeralcontainers"], verbs: ["patch"] in namespace "shop"`,
			wantRBA: true,
		},
		{
			name: "403 from PodSecurity baseline for NET_ADMIN",
			caps: NetAdmin,
			err:  apierrors.NewForbidden(gr, "web", errors.New(`violates PodSecurity "baseline:latest": non-default capabilities (container "trafficlab-abcde" must not include "NET_ADMIN" in securityContext.capabilities.add)`)),
			want: `namespace "shop" enforces PodSecurity "baseline:latest" (label pod-security.kubernetes.io/enforce), which forbids the agent's NET_ADMIN; ` +
				`ask a cluster admin to set pod-security.kubernetes.io/enforce=privileged on the namespace, or use port-forward or outgoing, which need no capability`,
		},
		{
			name: "422 from a PodSecurity webhook, restricted, NET_RAW as root",
			caps: NetRaw,
			add:  true,
			err: status(http.StatusUnprocessableEntity, metav1.StatusReasonInvalid,
				`pods "web" is forbidden: violates PodSecurity "restricted:latest": unrestricted capabilities (container "trafficlab-abcde" must not include "NET_RAW" in securityContext.capabilities.add), runAsNonRoot != true (container "trafficlab-abcde" must not set securityContext.runAsNonRoot=false), runAsUser=0 (container "trafficlab-abcde" must not set runAsUser=0)`, nil),
			want: `namespace "shop" enforces PodSecurity "restricted:latest" (label pod-security.kubernetes.io/enforce), which forbids the agent's NET_RAW and root (UID 0); ` +
				`ask a cluster admin to set pod-security.kubernetes.io/enforce=privileged on the namespace, or use port-forward or outgoing, which need no capability`,
		},
		{
			name: "403 from another admission webhook is passed through",
			err:  status(http.StatusForbidden, metav1.StatusReasonForbidden, `admission webhook "validation.gatekeeper.sh" denied the request: no ephemeral containers`, nil),
			want: `adding agent "trafficlab-abcde" to pod "shop/web": admission webhook "validation.gatekeeper.sh" denied the request: no ephemeral containers`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pod := runningPod()
			client := fake.NewClientset(pod)
			client.PrependReactor("patch", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
				if a.GetSubresource() != "ephemeralcontainers" {
					return false, nil, nil
				}
				return true, nil, tc.err
			})
			c := BuildAgentContainer(pod, AgentSpec{Image: testImage, Capabilities: tc.caps, AddNetRaw: tc.add, NameSuffix: suffixes("abcde")})

			_, err := Inject(context.Background(), client, pod, c)
			if err == nil {
				t.Fatal("Inject() succeeded, want an error")
			}
			if err.Error() != tc.want {
				t.Errorf("Inject() error =\n%s\nwant\n%s", err, tc.want)
			}
			if !errors.Is(err, tc.err) {
				t.Errorf("Inject() error does not wrap the API error")
			}
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Errorf("errors.Is(err, %v) = false", tc.wantIs)
			}
			var perm *MissingPermissionError
			if errors.As(err, &perm) != tc.wantRBA {
				t.Errorf("errors.As(err, *MissingPermissionError) = %v, want %v", !tc.wantRBA, tc.wantRBA)
			}
		})
	}
}

func TestMissingPermissionErrorMergesRules(t *testing.T) {
	err := &MissingPermissionError{Namespace: "shop", Rules: MergeRules([]Rule{
		{Resource: "pods/ephemeralcontainers", Verbs: []string{"patch"}},
		{Resource: "pods", Verbs: []string{"watch"}},
		{Resource: "pods", Verbs: []string{"list"}},
	})}
	want := `missing RBAC permissions: apiGroups: [""], resources: ["pods/ephemeralcontainers"], verbs: ["patch"]; apiGroups: [""], resources: ["pods"], verbs: ["list", "watch"] in namespace "shop"`
	if err.Error() != want {
		t.Errorf("Error() =\n%s\nwant\n%s", err, want)
	}
}

// DryRun sends Inject's patch byte for byte, with dryRun=All and nothing else different, so that the
// server judges exactly what a verb would send.
func TestDryRunSendsInjectsPatch(t *testing.T) {
	pod := runningPod()
	c := BuildAgentContainer(pod, AgentSpec{Image: testImage, Capabilities: NetRaw, NameSuffix: suffixes("abcde")})
	sent := func(f func(context.Context, kubernetes.Interface, *corev1.Pod, corev1.EphemeralContainer) (*corev1.Pod, error)) k8stesting.PatchActionImpl {
		client := fake.NewClientset(pod)
		var got k8stesting.PatchActionImpl
		client.PrependReactor("patch", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
			got = a.(k8stesting.PatchActionImpl)
			return true, pod, nil
		})
		if _, err := f(context.Background(), client, pod, c); err != nil {
			t.Fatal(err)
		}
		return got
	}
	sentReal, dry := sent(Inject), sent(DryRun)
	if diff := cmp.Diff([]string{metav1.DryRunAll}, dry.PatchOptions.DryRun); diff != "" {
		t.Errorf("DryRun's dryRun option (-want +got):\n%s", diff)
	}
	if sentReal.PatchOptions.DryRun != nil {
		t.Errorf("Inject sent dryRun %v", sentReal.PatchOptions.DryRun)
	}
	dry.PatchOptions.DryRun = nil
	if diff := cmp.Diff(sentReal, dry); diff != "" {
		t.Errorf("DryRun's request differs from Inject's beyond dryRun (-inject +dryrun):\n%s", diff)
	}
}

func TestRefusalKinds(t *testing.T) {
	pod := runningPod()
	c := BuildAgentContainer(pod, AgentSpec{Image: testImage, Capabilities: NetAdmin, NameSuffix: suffixes("abcde")})
	gr := schema.GroupResource{Resource: "pods"}
	psa := explainPatchError(apierrors.NewForbidden(gr, "web", errors.New(`violates PodSecurity "baseline:latest": non-default capabilities`)), pod, &c)
	webhook := explainPatchError(apierrors.NewBadRequest(`admission webhook "audit.example" does not support dry run`), pod, &c)
	rbac := explainPatchError(apierrors.NewForbidden(gr, "web", errors.New(`User "dev" cannot patch resource "pods/ephemeralcontainers"`)), pod, &c)
	for _, tc := range []struct {
		name             string
		err              error
		podSecurity, dry bool
	}{
		{"PodSecurity", psa, true, false},
		{"webhook without dry run", webhook, false, true},
		{"RBAC", rbac, false, false},
		{"not an API error", errors.New("connection refused"), false, false},
	} {
		if got := IsPodSecurityRefusal(tc.err); got != tc.podSecurity {
			t.Errorf("%s: IsPodSecurityRefusal = %v", tc.name, got)
		}
		if got := IsDryRunUnsupported(tc.err); got != tc.dry {
			t.Errorf("%s: IsDryRunUnsupported = %v", tc.name, got)
		}
	}
}

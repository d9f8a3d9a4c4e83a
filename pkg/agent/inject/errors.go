package inject

import (
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Error is a constant error kind, so callers can test for it with errors.Is while the package keeps no
// variables.
type Error string

func (e Error) Error() string { return string(e) }

// ErrEphemeralContainersUnsupported means the API server has no pods/ephemeralcontainers subresource.
const ErrEphemeralContainersUnsupported Error = "ephemeral containers are not supported by this cluster (Kubernetes 1.25+ with the EphemeralContainers feature)"

// PodSecurityEnforceLabel is the namespace label whose level PodSecurity admission enforces.
const PodSecurityEnforceLabel = "pod-security.kubernetes.io/enforce"

// Rule is one RBAC PolicyRule, printed the way it would be written in a Role, so that a denial tells the
// user (or their admin) exactly what to add.
type Rule struct {
	APIGroup string
	Resource string // with the subresource: "pods/portforward"
	Verbs    []string
}

func (r Rule) String() string {
	verbs := make([]string, len(r.Verbs))
	for i, v := range r.Verbs {
		verbs[i] = fmt.Sprintf("%q", v)
	}
	return fmt.Sprintf("apiGroups: [%q], resources: [%q], verbs: [%s]", r.APIGroup, r.Resource, strings.Join(verbs, ", "))
}

// MissingPermissionError reports the RBAC rules the caller lacks in one namespace.
type MissingPermissionError struct {
	Namespace string
	Rules     []Rule
	// Err is the API error that revealed the denial, if any (a preflight review has none).
	Err error
}

func (e *MissingPermissionError) Error() string {
	parts := make([]string, len(e.Rules))
	for i, r := range e.Rules {
		parts[i] = r.String()
	}
	noun := "permission"
	if len(e.Rules) > 1 {
		noun = "permissions"
	}
	if e.Namespace == "" {
		// A cluster-wide question (-A) needs a ClusterRole; a Role in one namespace would not do.
		return fmt.Sprintf("missing RBAC %s: %s in every namespace (a ClusterRole)", noun, strings.Join(parts, "; "))
	}
	return fmt.Sprintf("missing RBAC %s: %s in namespace %q", noun, strings.Join(parts, "; "), e.Namespace)
}

func (e *MissingPermissionError) Unwrap() error { return e.Err }

// MergeRules folds rules on the same group and resource into one rule with sorted verbs, which is how a
// person would write them in a Role.
func MergeRules(rules []Rule) []Rule {
	var out []Rule
	index := map[[2]string]int{}
	for _, r := range rules {
		k := [2]string{r.APIGroup, r.Resource}
		i, ok := index[k]
		if !ok {
			index[k] = len(out)
			out = append(out, Rule{APIGroup: r.APIGroup, Resource: r.Resource})
			i = len(out) - 1
		}
		for _, v := range r.Verbs {
			if !contains(out[i].Verbs, v) {
				out[i].Verbs = append(out[i].Verbs, v)
			}
		}
	}
	for i := range out {
		sort.Strings(out[i].Verbs)
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// sentenceError prints a plain sentence but keeps the API error (and an optional kind) for errors.Is and
// errors.As: the server's own text ("the server could not find the requested resource") would only
// repeat the sentence less clearly.
type sentenceError struct {
	msg    string
	causes []error
}

func (e *sentenceError) Error() string   { return e.msg }
func (e *sentenceError) Unwrap() []error { return e.causes }

// podSecurityLevelPattern matches the level PodSecurity admission names in its denial, such as
// `violates PodSecurity "baseline:latest": ...`.
const podSecurityLevelPattern = `violates PodSecurity "([^"]+)"`

// patchRule is what Inject needs: a strategic-merge patch of the pods/ephemeralcontainers subresource.
func patchRule() Rule {
	return Rule{APIGroup: "", Resource: "pods/ephemeralcontainers", Verbs: []string{"patch"}}
}

// RequiredRules lists what Inject and WaitRunning need, for a preflight: the patch itself, and list and
// watch on pods because WaitRunning follows the pod with a field-selected watch.
func RequiredRules() []Rule {
	return []Rule{patchRule(), {APIGroup: "", Resource: "pods", Verbs: []string{"list", "watch"}}}
}

// explainPatchError turns the API errors of the ephemeralcontainers patch into one sentence that says
// what to do.
func explainPatchError(err error, pod *corev1.Pod, c *corev1.EphemeralContainer) error {
	var status apierrors.APIStatus
	if !errors.As(err, &status) {
		return fmt.Errorf("adding agent %q to pod %q: %w", c.Name, pod.Namespace+"/"+pod.Name, err)
	}
	s := status.Status()
	switch {
	case s.Code == http.StatusNotFound && (s.Details == nil || s.Details.Name == ""):
		// A missing pod comes back as a 404 that names the pod; a missing subresource (the feature is off
		// or the server predates it) comes back as a 404 without details. kubectl debug tells them apart
		// the same way.
		return &sentenceError{msg: string(ErrEphemeralContainersUnsupported), causes: []error{ErrEphemeralContainersUnsupported, err}}
	case s.Code == http.StatusNotFound:
		return fmt.Errorf("%w in namespace %q", err, pod.Namespace)
	case strings.Contains(s.Message, "violates PodSecurity"):
		// PodSecurity admission answers 403 (reason Forbidden) in the built-in plugin; a webhook
		// deployment of it may use 422. Either way its message is what identifies it.
		return podSecurityError(err, s, pod, c)
	case s.Code == http.StatusForbidden && s.Reason == metav1.StatusReasonForbidden && strings.Contains(s.Message, " cannot "):
		// The authorizer's wording is `User "x" cannot patch resource "pods/ephemeralcontainers" ...`;
		// other 403s come from admission webhooks and are passed through below.
		return &MissingPermissionError{Namespace: pod.Namespace, Rules: []Rule{patchRule()}, Err: err}
	}
	return fmt.Errorf("adding agent %q to pod %q: %w", c.Name, pod.Namespace+"/"+pod.Name, err)
}

func podSecurityError(err error, s metav1.Status, pod *corev1.Pod, c *corev1.EphemeralContainer) error {
	level := "a PodSecurity level"
	if m := regexp.MustCompile(podSecurityLevelPattern).FindStringSubmatch(s.Message); m != nil {
		level = fmt.Sprintf("PodSecurity %q", m[1])
	}
	var forbidden []string
	if sc := c.SecurityContext; sc != nil {
		if sc.Capabilities != nil {
			for _, cp := range sc.Capabilities.Add {
				forbidden = append(forbidden, string(cp))
			}
		}
		if sc.RunAsUser != nil && *sc.RunAsUser == 0 && strings.Contains(s.Message, "restricted") {
			forbidden = append(forbidden, "root (UID 0)")
		}
	}
	what := "the agent container"
	if len(forbidden) > 0 {
		what = "the agent's " + strings.Join(forbidden, " and ")
	}
	return &sentenceError{
		msg: fmt.Sprintf("namespace %q enforces %s (label %s), which forbids %s; ask a cluster admin to set %s=privileged on the namespace, or use port-forward or outgoing, which need no capability",
			pod.Namespace, level, PodSecurityEnforceLabel, what, PodSecurityEnforceLabel),
		causes: []error{err},
	}
}

// IsPodSecurityRefusal reports whether err, from Inject or DryRun, is PodSecurity admission refusing
// the agent container.
func IsPodSecurityRefusal(err error) bool {
	s, ok := statusOf(err)
	return ok && strings.Contains(s.Message, "violates PodSecurity")
}

// IsDryRunUnsupported reports whether err, from DryRun, is the API server refusing the dry run because
// an admission webhook that would see the patch has side effects on dry run (sideEffects other than
// None or NoneOnDryRun): the server then cannot say whether the real patch would pass.
func IsDryRunUnsupported(err error) bool {
	s, ok := statusOf(err)
	return ok && strings.Contains(s.Message, "does not support dry run")
}

func statusOf(err error) (metav1.Status, bool) {
	var status apierrors.APIStatus
	if !errors.As(err, &status) {
		return metav1.Status{}, false
	}
	return status.Status(), true
}

package target

import (
	"context"
	"os"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/klog/v2"
)

// Identity is who runs a session and from where, as the plugin tells the agent in its Hello and
// `kubectl trafficlab sessions` shows it. It names, it does not prove: the agent cannot check it.
type Identity struct {
	User string
	Host string
}

// WhoAmI asks the API server who the credentials are (SelfSubjectReview, which also sees through
// --as), and falls back on the name the kubeconfig gives them when the server cannot say (before
// Kubernetes 1.28, or the review is forbidden). Host is this machine's name.
func WhoAmI(ctx context.Context, kube Kube) Identity {
	var id Identity
	id.Host, _ = os.Hostname()
	if kube.Client != nil {
		r, err := kube.Client.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
		if err == nil && r.Status.UserInfo.Username != "" {
			id.User = r.Status.UserInfo.Username
			return id
		}
		klog.V(4).InfoS("SelfSubjectReview gave no user name; using the kubeconfig's", "err", err)
	}
	id.User = kube.User
	return id
}

// kubeconfigUser is the user the kubeconfig names for the flags' context: --as when impersonating,
// else --user, else the context's user entry.
func kubeconfigUser(flags *genericclioptions.ConfigFlags) string {
	if flags.Impersonate != nil && *flags.Impersonate != "" {
		return *flags.Impersonate
	}
	if flags.AuthInfoName != nil && *flags.AuthInfoName != "" {
		return *flags.AuthInfoName
	}
	raw, err := flags.ToRawKubeConfigLoader().RawConfig()
	if err != nil {
		return ""
	}
	name := raw.CurrentContext
	if flags.Context != nil && *flags.Context != "" {
		name = *flags.Context
	}
	if c, ok := raw.Contexts[name]; ok {
		return c.AuthInfo
	}
	return ""
}

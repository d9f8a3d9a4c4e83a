package target

import (
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/runtime/schema"
)

// kind is a resource TYPE the plugin can turn into a pod.
type kind int

const (
	kindPod kind = iota
	kindDeployment
	kindStatefulSet
	kindDaemonSet
	kindReplicaSet
	kindReplicationController
	kindJob
	kindService
)

// kindInfo holds a kind's resource and the names kubectl accepts for it.
type kindInfo struct {
	gr    schema.GroupResource
	noun  string // singular, for messages: "deployment"
	names []string
}

func kinds() map[kind]kindInfo {
	return map[kind]kindInfo{
		kindPod:                   {schema.GroupResource{Resource: "pods"}, "pod", []string{"pod", "pods", "po"}},
		kindDeployment:            {schema.GroupResource{Group: "apps", Resource: "deployments"}, "deployment", []string{"deployment", "deployments", "deploy"}},
		kindStatefulSet:           {schema.GroupResource{Group: "apps", Resource: "statefulsets"}, "statefulset", []string{"statefulset", "statefulsets", "sts"}},
		kindDaemonSet:             {schema.GroupResource{Group: "apps", Resource: "daemonsets"}, "daemonset", []string{"daemonset", "daemonsets", "ds"}},
		kindReplicaSet:            {schema.GroupResource{Group: "apps", Resource: "replicasets"}, "replicaset", []string{"replicaset", "replicasets", "rs"}},
		kindReplicationController: {schema.GroupResource{Resource: "replicationcontrollers"}, "replicationcontroller", []string{"replicationcontroller", "replicationcontrollers", "rc"}},
		kindJob:                   {schema.GroupResource{Group: "batch", Resource: "jobs"}, "job", []string{"job", "jobs"}},
		kindService:               {schema.GroupResource{Resource: "services"}, "service", []string{"service", "services", "svc"}},
	}
}

// parseResource splits "TYPE/NAME" (or a bare pod NAME, as kubectl exec accepts) and resolves TYPE the
// way kubectl's REST mapper does for these kinds: singular, plural or short name, case-insensitive,
// optionally qualified by group ("deployments.apps") or version and group ("deployments.v1.apps").
// A static table replaces discovery because every supported kind is built in, and it keeps resolution
// working with a typed client and testable with the fake clientset.
func parseResource(arg string) (kind, string, error) {
	typ, name, found := strings.Cut(arg, "/")
	if !found {
		return kindPod, arg, validName(arg)
	}
	if typ == "" || name == "" || strings.Contains(name, "/") {
		return 0, "", fmt.Errorf("%q is not TYPE/NAME", arg)
	}
	k, ok := lookupKind(strings.ToLower(typ))
	if !ok {
		return 0, "", fmt.Errorf("resource type %q cannot be targeted; use a pod, deployment, statefulset, daemonset, replicaset, replicationcontroller, job or service", typ)
	}
	return k, name, validName(name)
}

func lookupKind(typ string) (kind, bool) {
	res, qualifier, _ := strings.Cut(typ, ".")
	for k, info := range kinds() {
		for _, n := range info.names {
			if n != res {
				continue
			}
			switch qualifier {
			case "", info.gr.Group, "v1." + info.gr.Group:
				return k, true
			}
			// The core group has no name; kubectl accepts "pods.v1" for it.
			if info.gr.Group == "" && qualifier == "v1" {
				return k, true
			}
		}
	}
	return 0, false
}

func validName(name string) error {
	if name == "" {
		return fmt.Errorf("a resource name is required")
	}
	return nil
}

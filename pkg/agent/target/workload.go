package target

import "fmt"

// Workload names what o targets when the name stands for any ready pod of a set (a workload, a
// Service, a selector), for messages: "deployment/api", `selector "app=api"`. ok is false for a pod
// named as such, which kubectl's port-forward and exec keep to the end, and for a name that does not
// parse (Resolve refuses it).
func (o *Options) Workload() (name string, ok bool) {
	if o.Selector != "" {
		return fmt.Sprintf("selector %q", o.Selector), true
	}
	k, n, err := parseResource(o.Resource)
	if err != nil || k == kindPod {
		return "", false
	}
	return kinds()[k].noun + "/" + n, true
}

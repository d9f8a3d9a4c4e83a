package target

import (
	"context"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/metadata"
)

// CompletionFunc is cobra's ValidArgsFunction for a verb's TYPE/NAME, so that `kubectl trafficlab steal
// <TAB>` offers what kubectl offers for `kubectl exec <TAB>`: a word without "/" completes the pods of
// the namespace and the TYPE/ of every kind the verbs target, TYPE/PREFIX the names of that TYPE. It
// reads the cluster with the command line's own connection flags (-n, --context, --kubeconfig). When
// the cluster cannot be read it offers nothing, as kubectl does, rather than an error in the middle of
// the user's line.
func CompletionFunc(flags *genericclioptions.ConfigFlags) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		if len(args) > 0 {
			// Past TYPE/NAME: the shell's own completion, for the user's command after "--" (exec,
			// steal). cmd.ArgsLenAtDash cannot tell: cobra's completion parses the line with a "--"
			// appended first.
			return nil, cobra.ShellCompDirectiveDefault
		}
		list, err := nameLister(cmd.Context(), flags)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return completeResource(toComplete, list)
	}
}

// nameLister lists the names of one kind in the namespace of the command line, with the metadata
// client: completion needs names only, not the objects.
func nameLister(ctx context.Context, flags *genericclioptions.ConfigFlags) (func(kind) []string, error) {
	ns, _, err := flags.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return nil, err
	}
	cfg, err := flags.ToRESTConfig()
	if err != nil {
		return nil, err
	}
	mc, err := metadata.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return func(k kind) []string {
		// Every kind the verbs target is served at v1 of its group.
		l, err := mc.Resource(kinds()[k].gr.WithVersion("v1")).Namespace(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil
		}
		names := make([]string, 0, len(l.Items))
		for _, it := range l.Items {
			names = append(names, it.Name)
		}
		return names
	}, nil
}

// completeResource completes toComplete from list, which gives the names of one kind in the namespace.
func completeResource(toComplete string, list func(kind) []string) ([]string, cobra.ShellCompDirective) {
	directive := cobra.ShellCompDirectiveNoFileComp
	if typ, prefix, found := strings.Cut(toComplete, "/"); found {
		k, ok := lookupKind(strings.ToLower(typ))
		if !ok {
			return nil, directive
		}
		var comps []string
		for _, n := range sortedPrefixed(list(k), prefix) {
			comps = append(comps, typ+"/"+n)
		}
		return comps, directive
	}
	comps := sortedPrefixed(list(kindPod), toComplete)
	var types []string
	for _, info := range kinds() {
		types = append(types, info.gr.Resource+"/")
	}
	types = sortedPrefixed(types, toComplete)
	if len(comps) == 0 && len(types) > 0 {
		// Only TYPE/ is left to complete: no space after its "/".
		directive |= cobra.ShellCompDirectiveNoSpace
	}
	return append(comps, types...), directive
}

func sortedPrefixed(names []string, prefix string) []string {
	var out []string
	for _, n := range names {
		if strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

package target

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
	"k8s.io/cli-runtime/pkg/genericclioptions"
)

// TestAddFlags: -c and -l fill the target, in their long and short forms.
func TestAddFlags(t *testing.T) {
	var o Options
	fs := pflag.NewFlagSet("verb", pflag.ContinueOnError)
	o.AddFlags(fs)
	if err := fs.Parse([]string{"-c", "app", "--selector", "app=web"}); err != nil {
		t.Fatal(err)
	}
	if o.Container != "app" || o.Selector != "app=web" {
		t.Errorf("parsed %+v, want container app and selector app=web", o)
	}
}

// TestRequire: a verb without TYPE/NAME or -l is refused with its own example.
func TestRequire(t *testing.T) {
	err := (&Options{}).Require("kubectl trafficlab dump pod/web --port 8080")
	if err == nil || err.Error() != "TYPE/NAME or -l selector is required, e.g. kubectl trafficlab dump pod/web --port 8080" {
		t.Errorf("no target: %v", err)
	}
	for _, o := range []Options{{Resource: "pod/web"}, {Selector: "app=web"}} {
		if err := o.Require("x"); err != nil {
			t.Errorf("%+v refused: %v", o, err)
		}
	}
}

func TestNamed(t *testing.T) {
	if got := (&Options{Resource: "deploy/api"}).Named(); got != "deploy/api" {
		t.Errorf("Named = %q", got)
	}
	if got := (&Options{Selector: "app=api"}).Named(); got != `selector "app=api"` {
		t.Errorf("Named = %q", got)
	}
}

// TestLoadKube: the namespace is -n's, else the kubeconfig context's; a broken kubeconfig is refused
// and leaves the target as it was.
func TestLoadKube(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config")
	config := `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u, namespace: shop}}]
current-context: x
`
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	flags := genericclioptions.NewConfigFlags(true)
	flags.KubeConfig = &path
	var o Options
	k, err := o.LoadKube(flags)
	if err != nil {
		t.Fatal(err)
	}
	if o.Namespace != "shop" || k.Config == nil || k.Client == nil || k.Config.Host != "https://127.0.0.1:1" {
		t.Errorf("namespace %q, config %+v; want shop and the kubeconfig's server", o.Namespace, k.Config)
	}
	ns := "other"
	flags = genericclioptions.NewConfigFlags(true)
	flags.KubeConfig, flags.Namespace = &path, &ns
	if _, err := o.LoadKube(flags); err != nil || o.Namespace != "other" {
		t.Errorf("-n other: namespace %q, %v", o.Namespace, err)
	}

	missing := filepath.Join(t.TempDir(), "none")
	broken := genericclioptions.NewConfigFlags(true)
	broken.KubeConfig = &missing
	o = Options{Namespace: "kept"}
	if _, err := o.LoadKube(broken); err == nil || !strings.Contains(err.Error(), "kubeconfig") || o.Namespace != "kept" {
		t.Errorf("missing kubeconfig: %v, namespace %q", err, o.Namespace)
	}
}

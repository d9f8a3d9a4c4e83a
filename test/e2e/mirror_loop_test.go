//go:build e2e

package e2e

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// TestMirrorToLoopRefused: mirror --to a Service that selects the mirrored pod would have each copy
// mirrored again; it is refused in one line before anything changes in the cluster (the pod gets
// no agent), and a mirror --to another Service ends, saying why, when that Service comes to select
// the mirrored pod while it runs.
func TestMirrorToLoopRefused(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 4*time.Minute)
	st := newStealTarget(ctx, t, "mirrorloop")
	pods := client(t).CoreV1().Pods(st.ns)

	p := pluginStart(t, "mirror-loop", "mirror", st.ns, "pod/target", "--port", "8080", "--to", "svc/echo:80")
	if err := p.waitExit(2 * time.Minute); err == nil {
		t.Fatalf("mirror --to the Service that selects the mirrored pod succeeded:\n%s", p.output())
	}
	var errLines []string
	for _, l := range p.snapshot() {
		if l.stream == "stderr" && strings.HasPrefix(l.text, "error: ") {
			errLines = append(errLines, l.text)
		}
	}
	want := fmt.Sprintf(`error: --to "svc/echo:80" leads back to the mirrored pod: pod %s/target is an endpoint of service %s/echo on port 8080, so each copy would be mirrored again; send the copies to another Service, or to one whose selector excludes pod target`, st.ns, st.ns)
	if len(errLines) != 1 || errLines[0] != want {
		t.Errorf("want the one error line\n  %s\ngot:\n%s", want, p.output())
	}
	pod, err := pods.Get(ctx, "target", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(pod.Spec.EphemeralContainers); n != 0 {
		t.Fatalf("the refused mirror left %d ephemeral containers in the pod", n)
	}

	// A Service that selects no pod yet passes; once it selects the mirrored pod, the EndpointSlice
	// watch ends the mirror with its counts and the reason.
	canaryService(ctx, t, st.ns, map[string]string{"app": "nobody"})
	p = pluginStart(t, "mirror-joined", "mirror", st.ns, "pod/target", "--port", "8080", "--to", "svc/canary:80")
	p.waitLine(0, "stderr", regexp.MustCompile(`mirroring port 8080 -> svc/canary:80 \(from the pod\)`), 3*time.Minute)
	if _, err := client(t).CoreV1().Services(st.ns).Patch(ctx, "canary", types.MergePatchType,
		[]byte(`{"spec":{"selector":{"app":"echo"}}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := p.waitExit(time.Minute); err == nil {
		t.Fatalf("mirror went on after its destination came to select the mirrored pod:\n%s", p.output())
	}
	want = fmt.Sprintf(`error: mirror stopped: pod %s/target joined the endpoints of service %s/canary (--to "svc/canary:80") on port 8080, so each copy would be mirrored again; send the copies to another Service, or to one whose selector excludes pod target`, st.ns, st.ns)
	_, last, _ := p.waitLine(0, "stderr", regexp.MustCompile(`^`+regexp.QuoteMeta(want)+`$`), time.Second)
	p.waitLine(0, "stderr", regexp.MustCompile(`^\d+ requests? seen on \d+ connections?`), time.Second)
	if lines := p.snapshot(); last != len(lines)-1 {
		t.Errorf("the reason is not the last line:\n%s", p.output())
	}
	waitAnswer(ctx, t, time.Minute, st.svcURL("/after"), "target")
}

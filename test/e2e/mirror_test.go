//go:build e2e

package e2e

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestMirrorSniff: requests through the Service are answered by the pod while the local server gets
// a copy of each, bodies equal by sha256; the agent adds no capability (sniffing needs only the
// runtime's default NET_RAW).
func TestMirrorSniff(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 4*time.Minute)
	st := newStealTarget(ctx, t, "mirror")
	if _, _, err := kubectl(ctx, t, "", "label", "namespace", st.ns, "pod-security.kubernetes.io/enforce=baseline"); err != nil {
		t.Fatal(err)
	}
	p := pluginStart(t, "mirror", "mirror", st.ns, "svc/echo", "--port", fmt.Sprintf("80:%d", st.local.Port))
	p.waitLine(0, "stderr", regexp.MustCompile(`mirroring port 8080 -> 127\.0\.0\.1:\d+`), 3*time.Minute)

	// 128 KiB: a burst of 1 MiB overflows the packet socket's default receive buffer (about 700 KB
	// arrived) and the copy is cut at the loss; a TPACKET ring sized for bursts is still to come.
	body := make([]byte, 128<<10)
	if _, err := rand.Read(body); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(body)
	want := map[string]string{"/mirror/1": hex.EncodeToString(sha256.New().Sum(nil)), "/mirror/2": hex.EncodeToString(sum[:]), "/mirror/3": hex.EncodeToString(sha256.New().Sum(nil))}
	for _, path := range []string{"/mirror/1", "/mirror/2", "/mirror/3"} {
		var b []byte
		if path == "/mirror/2" {
			b = body
		}
		r, err := getJSON(ctx, st.svcURL(path), nil, b)
		if err != nil || r.Pod != "target" || r.BodySHA256 != want[path] {
			t.Fatalf("%s through the Service: %+v, %v; want the pod's answer with body sha256 %s", path, r, err, want[path])
		}
	}
	eventually(ctx, t, 30*time.Second, "the local server got a copy of every request", func(context.Context) (bool, string) {
		got := map[string]string{}
		for _, r := range st.local.requests() {
			got[r.Path] = r.BodySHA256
		}
		for path, sha := range want {
			if got[path] != sha {
				return false, fmt.Sprintf("local server has %v", got)
			}
		}
		return true, ""
	})
	p.waitLine(0, "stdout", regexp.MustCompile(`mirrored connection from \S+ to port 8080: 13\d{4} B sent`), 30*time.Second)

	pod, err := client(t).CoreV1().Pods(st.ns).Get(ctx, "target", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, ec := range pod.Spec.EphemeralContainers {
		if sc := ec.SecurityContext; sc == nil || sc.Capabilities == nil || len(sc.Capabilities.Add) != 0 {
			t.Errorf("agent %s adds capabilities: %+v", ec.Name, sc)
		}
	}
	if err := p.stop(); err != nil {
		t.Errorf("mirror exited with %v", err)
	}
	p.waitLine(0, "stderr", regexp.MustCompile(`^\d+ connections seen, [1-9]\d* mirrored; not mirrored: `), 10*time.Second)
}

//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestStealLocalCrashNotSentToTheApp: a stolen DELETE whose local handler drops the connection without
// answering gets a 502 that says the local process failed, and is not answered by the app (issue 16:
// reproduced on this cluster, the app answered it 200). A head slower than --head-timeout gets 408.
func TestStealLocalCrashNotSentToTheApp(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 4*time.Minute)
	st := newStealTarget(ctx, t, "steal-crash")
	// The developer's process, crashing in every handler as one that panics does.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var got atomic.Int64
	srv := &http.Server{ReadHeaderTimeout: 30 * time.Second, Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		got.Add(1)
		panic(http.ErrAbortHandler)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })

	p := stealStart(t, "steal-crash", st.ns, "pod/target", "--port", fmt.Sprintf("8080:%d", ln.Addr().(*net.TCPAddr).Port),
		"--header-filter", "^X-Steal: yes$", "--head-timeout", "2s")
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodDelete, st.podURL("/items/1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Steal", "yes")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(body), "the local process failed") {
		t.Errorf("stolen DELETE whose local handler crashed: %d %q; want 502 saying the local process failed", resp.StatusCode, body)
	}
	if n := got.Load(); n != 1 {
		t.Errorf("the local process got %d requests, want 1", n)
	}
	p.waitLine(0, "stderr", regexp.MustCompile(`^warning: (\[pod/\S+\] )?the local process failed \(.*\); the request was not sent to the app$`), 30*time.Second)

	// A head that starts and never ends.
	c, err := net.Dial("tcp", net.JoinHostPort(st.podIP, "8080"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprint(c, "GET /slow HTTP/1.1\r\nHost: target\r\nX-Steal: yes\r\n")
	// The bound only keeps a broken steal from hanging the test; the outcome is what counts.
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	slow, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer to a head that never ends: %v", err)
	}
	slow.Body.Close()
	if slow.StatusCode != http.StatusRequestTimeout {
		t.Errorf("a head slower than --head-timeout: %d, want 408", slow.StatusCode)
	}
	if err := p.stop(); err != nil {
		t.Fatalf("steal exited with %v", err)
	}
}

//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// namedLocal is a developer's local process that answers every request as name.
func namedLocal(t *testing.T, name string) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// HTTP/1.1 and h2c, as the agent speaks to it what the client spoke.
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, ReadHeaderTimeout: 30 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(pfReply{Pod: name, Method: r.Method, Path: r.URL.Path})
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

var sharedRE = regexp.MustCompile(`port 8080 is shared with session [0-9a-f]+ \(.*filter header "\^X-Dev: alice\$"`)

// TestSharedPod: two steals of the same pod port with different header filters (two plugin
// processes, one agent) each get exactly their own requests and the app the rest; the second is told
// about the first; a whole-port steal is refused naming a session; SIGKILL of one plugin leaves the
// other working; after the last leaves the redirect is gone. Requests that match no filter are sent
// all along on keep-alive connections: none fails.
func TestSharedPod(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 8*time.Minute)
	st := newStealTarget(ctx, t, "shared-pod")
	alice, bob := namedLocal(t, "alice"), namedLocal(t, "bob")
	pa := stealStart(t, "alice", st.ns, "pod/target", "--port", fmt.Sprintf("8080:%d", alice), "--header-filter", "^X-Dev: alice$")
	pb := stealStart(t, "bob", st.ns, "pod/target", "--port", fmt.Sprintf("8080:%d", bob), "--header-filter", "^X-Dev: bob$")
	pb.waitLine(0, "stdout", sharedRE, 30*time.Second)
	if tables := trafficlabTables(t, st.netns); len(tables) != 1 {
		t.Errorf("trafficlab tables with two sessions on the port: %q, want one", tables)
	}

	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}, Timeout: 30 * time.Second}
	defer hc.CloseIdleConnections()
	get := func(dev string) (string, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, st.podURL("/shared"), nil)
		if dev != "" {
			req.Header.Set("X-Dev", dev)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		var r pfReply
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			return "", fmt.Errorf("status %d: %w", resp.StatusCode, err)
		}
		return r.Pod, nil
	}
	expect := func(dev, want string, n int) {
		t.Helper()
		for i := range n {
			if got, err := get(dev); err != nil || got != want {
				t.Fatalf("request %d with X-Dev %q: %q, %v; want %q", i, dev, got, err, want)
			}
		}
	}
	var sent, failed atomic.Int64
	var firstFail atomic.Value
	loadCtx, stopLoad := context.WithCancel(ctx)
	var load sync.WaitGroup
	for range 2 {
		load.Go(func() {
			for loadCtx.Err() == nil {
				got, err := get("carol")
				if loadCtx.Err() != nil {
					return
				}
				sent.Add(1)
				if err != nil || got != "target" {
					failed.Add(1)
					firstFail.CompareAndSwap(nil, fmt.Sprintf("%q, %v", got, err))
				}
			}
		})
	}
	for range 10 {
		expect("alice", "alice", 1)
		expect("bob", "bob", 1)
		expect("", "target", 1)
	}
	// One h2c connection (prior knowledge, as gRPC) carries streams for both sessions and the app.
	var dials atomic.Int32
	h2t := &http.Transport{Protocols: new(http.Protocols), DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
	h2t.Protocols.SetUnencryptedHTTP2(true)
	defer h2t.CloseIdleConnections()
	h2 := &http.Client{Transport: h2t, Timeout: 30 * time.Second}
	for i := range 12 {
		dev := []string{"alice", "bob", "carol"}[i%3]
		want := map[string]string{"alice": "alice", "bob": "bob", "carol": "target"}[dev]
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, st.podURL(fmt.Sprintf("/h2/%d", i)), nil)
		req.Header.Set("X-Dev", dev)
		resp, err := h2.Do(req)
		if err != nil {
			t.Fatalf("h2c stream %d for %s: %v", i, dev, err)
		}
		var r pfReply
		err = json.NewDecoder(resp.Body).Decode(&r)
		resp.Body.Close()
		if err != nil || r.Pod != want || resp.ProtoMajor != 2 {
			t.Errorf("h2c stream %d for %s: %+v (%s), %v; want %s", i, dev, r, resp.Proto, err, want)
		}
	}
	if n := dials.Load(); n != 1 {
		t.Errorf("the h2c client dialed %d connections, want its one connection for every stream", n)
	}

	// A whole-port steal of the shared port is refused, naming a session.
	whole := pluginStart(t, "whole", "steal", st.ns, "pod/target", "--port", fmt.Sprintf("8080:%d", namedLocal(t, "eve")))
	err := whole.waitExit(3 * time.Minute)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || !strings.Contains(whole.output(), "port 8080 is already stolen by session ") {
		t.Errorf("whole-port steal of a shared port: %v; output:\n%s", err, whole.output())
	}

	// Alice's plugin is killed: Bob keeps his requests, Alice's go to the app once the agent sees
	// her session end.
	_ = pa.cmd.Process.Kill()
	<-pa.done
	eventually(ctx, t, time.Minute, "alice's requests answered by the app", func(context.Context) (bool, string) {
		got, err := get("alice")
		return err == nil && got == "target", fmt.Sprintf("%q, %v", got, err)
	})
	expect("bob", "bob", 10)
	if tables := trafficlabTables(t, st.netns); len(tables) != 1 {
		t.Errorf("trafficlab tables with one session left: %q, want one", tables)
	}

	// The last one leaves: the redirect goes.
	if err := pb.stop(); err != nil {
		t.Errorf("bob's steal: %v", err)
	}
	eventually(ctx, t, time.Minute, "no trafficlab table", func(context.Context) (bool, string) {
		tables := trafficlabTables(t, st.netns)
		return len(tables) == 0, fmt.Sprint(tables)
	})
	expect("bob", "target", 3)
	stopLoad()
	load.Wait()
	if n := failed.Load(); n > 0 || sent.Load() == 0 {
		t.Errorf("%d of %d unmatched requests failed (first: %v)", n, sent.Load(), firstFail.Load())
	}
	t.Logf("%d unmatched requests, none failed", sent.Load())
}

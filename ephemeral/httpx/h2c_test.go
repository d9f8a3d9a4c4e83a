package httpx

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	pb "google.golang.org/grpc/examples/helloworld/helloworld"
	rg "google.golang.org/grpc/examples/route_guide/routeguide"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// h2Client speaks HTTP/2 with prior knowledge over cleartext and counts the connections it dials.
func h2Client(t *testing.T, dials *atomic.Int64) *http.Client {
	tr := &http.Transport{
		Protocols: h2cOnly,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

func TestH2CMixOnOneConnection(t *testing.T) {
	checkLeaks(t)
	app, local, p := setup(t, true)
	var dials atomic.Int64
	c := h2Client(t, &dials)
	stolen := map[string]bool{}
	// Sequential, then concurrent streams on the same connection.
	for i := range 6 {
		path := "/seq?i=" + strconv.Itoa(i)
		steal := i%2 == 0
		stolen[path] = steal
		resp, body := get(t, c, "http://"+p.addr+path, "X-Steal", map[bool]string{true: "yes", false: "no"}[steal])
		name := map[bool]string{true: "local", false: "app"}[steal]
		if want := name + " GET " + path + " HTTP/2.0"; body != want || resp.ProtoMajor != 2 {
			t.Errorf("got %q (proto %s), want %q", body, resp.Proto, want)
		}
	}
	var wg sync.WaitGroup
	for i := range 20 {
		path := "/par?i=" + strconv.Itoa(i)
		steal := i%3 == 0
		stolen[path] = steal
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodGet, "http://"+p.addr+path, nil)
			if steal {
				req.Header.Set("X-Steal", "yes")
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			name := map[bool]string{true: "local", false: "app"}[steal]
			if want := name + " GET " + path + " HTTP/2.0"; string(b) != want {
				t.Errorf("got %q, want %q", b, want)
			}
		}()
	}
	wg.Wait()
	if n := dials.Load(); n != 1 {
		t.Errorf("client dialed %d connections, want 1", n)
	}
	if n := p.accepts.Load(); n != 1 {
		t.Errorf("proxy accepted %d connections, want 1", n)
	}
	if a, l := app.conns.Load(), local.conns.Load(); a != 1 || l != 1 {
		t.Errorf("upstream connections: app %d, local %d; want one each, shared by the streams", a, l)
	}
	for _, ev := range p.ev.waitRequests(t, 26) {
		if ev.Stolen != stolen[ev.Path] || ev.Status != 200 || ev.Proto != "h2c" {
			t.Errorf("event %+v", ev)
		}
	}
}

func TestH2CHeadersUnchanged(t *testing.T) {
	checkLeaks(t)
	_, _, p := setup(t, true)
	var dials atomic.Int64
	c := h2Client(t, &dials)
	for ua, want := range map[string]string{"": `ua=[]`, "my-agent/1": `ua=["my-agent/1"]`} {
		req, _ := http.NewRequest(http.MethodGet, "http://"+p.addr+"/ua", nil)
		req.Header["User-Agent"] = nil // none, unless set below
		if ua != "" {
			req.Header.Set("User-Agent", ua)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		// The proxy's own HTTP/2 client must not add a User-Agent (or Accept-Encoding) of its own.
		if string(b) != "app "+want {
			t.Errorf("app saw %q, want %q", b, "app "+want)
		}
	}
}

func TestH2CLargeBodyAndLocalDown(t *testing.T) {
	checkLeaks(t)
	app := whoServer(t, "app", true, routes("app"))
	p := startProxy(t, proxyConfig{app: app.addr(), steal: stealHeader(t)})
	var dials atomic.Int64
	c := h2Client(t, &dials)
	data := randomBytes(5 << 20)
	req, _ := http.NewRequest(http.MethodPost, "http://"+p.addr+"/sha", strings.NewReader(string(data)))
	req.Header.Set("X-Steal", "yes")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.HasPrefix(string(b), fmt.Sprintf("app %d ", len(data))) {
		t.Errorf("got %q", b)
	}
	if w := p.ev.warnings(); len(w) != 1 || !strings.Contains(w[0], "local process unreachable") {
		t.Errorf("warnings %q", w)
	}
	if evs := p.ev.waitRequests(t, 1); evs[0].Stolen || evs[0].ReqBytes != int64(len(data)) {
		t.Errorf("event %+v", evs[0])
	}
}

type greeter struct {
	pb.UnimplementedGreeterServer
	name string
}

func (g greeter) SayHello(ctx context.Context, in *pb.HelloRequest) (*pb.HelloReply, error) {
	if in.GetName() == "fail" {
		return nil, status.Errorf(codes.FailedPrecondition, "%s refuses", g.name)
	}
	md, _ := metadata.FromIncomingContext(ctx)
	return &pb.HelloReply{Message: fmt.Sprintf("Hello %s from %s (ua %v)", in.GetName(), g.name, md.Get("user-agent"))}, nil
}

type chat struct {
	rg.UnimplementedRouteGuideServer
	name string
}

// RouteChat answers every note as it arrives, so a reply can only come back if the client's note
// went through on its own, while the stream stays open.
func (c chat) RouteChat(s grpc.BidiStreamingServer[rg.RouteNote, rg.RouteNote]) error {
	for {
		n, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return s.Send(&rg.RouteNote{Message: c.name + " bye"})
		}
		if err != nil {
			return err
		}
		if err := s.Send(&rg.RouteNote{Message: c.name + " got " + n.GetMessage()}); err != nil {
			return err
		}
	}
}

type grpcPeer struct {
	addr   string
	health *health.Server
}

func grpcServer(t *testing.T, name string, opts ...grpc.ServerOption) grpcPeer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(opts...)
	pb.RegisterGreeterServer(s, greeter{name: name})
	rg.RegisterRouteGuideServer(s, chat{name: name})
	hs := health.NewServer()
	hs.SetServingStatus("svc", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(s, hs)
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(s.Stop)
	return grpcPeer{addr: ln.Addr().String(), health: hs}
}

func grpcSetup(t *testing.T) (app, local grpcPeer, p *proxy, cc *grpc.ClientConn) {
	app, local = grpcServer(t, "app"), grpcServer(t, "local")
	p = startProxy(t, proxyConfig{app: app.addr, local: local.addr, steal: stealHeader(t)})
	cc, err := grpc.NewClient(p.addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithUserAgent("test-client"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return app, local, p, cc
}

func stealCtx(ctx context.Context, steal bool) context.Context {
	if steal {
		return metadata.AppendToOutgoingContext(ctx, "x-steal", "yes")
	}
	return ctx
}

func TestGRPCUnary(t *testing.T) {
	checkLeaks(t)
	_, _, p, cc := grpcSetup(t)
	client := pb.NewGreeterClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 6 {
		steal := i%2 == 1
		r, err := client.SayHello(stealCtx(ctx, steal), &pb.HelloRequest{Name: "n" + strconv.Itoa(i)})
		if err != nil {
			t.Fatal(err)
		}
		name := map[bool]string{true: "local", false: "app"}[steal]
		if want := fmt.Sprintf("Hello n%d from %s (ua [test-client grpc-go/", i, name); !strings.HasPrefix(r.GetMessage(), want) {
			t.Errorf("got %q, want prefix %q", r.GetMessage(), want)
		}
	}
	// An error status travels in trailers (here a trailers-only response): code and message must
	// arrive intact from either side.
	for _, steal := range []bool{true, false} {
		_, err := client.SayHello(stealCtx(ctx, steal), &pb.HelloRequest{Name: "fail"})
		name := map[bool]string{true: "local", false: "app"}[steal]
		if st := status.Convert(err); st.Code() != codes.FailedPrecondition || st.Message() != name+" refuses" {
			t.Errorf("error status %v, want FailedPrecondition %q", err, name+" refuses")
		}
	}
	if n := p.accepts.Load(); n != 1 {
		t.Errorf("proxy accepted %d connections, want 1", n)
	}
	evs := p.ev.waitRequests(t, 8)
	for i, ev := range evs[:6] {
		if ev.Proto != "grpc" || ev.Stolen != (i%2 == 1) || ev.Path != "/helloworld.Greeter/SayHello" || ev.Status != 200 {
			t.Errorf("event %d: %+v", i, ev)
		}
	}
}

func TestGRPCStreaming(t *testing.T) {
	checkLeaks(t)
	app, local, p, cc := grpcSetup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	for _, steal := range []bool{true, false} {
		name := map[bool]string{true: "local", false: "app"}[steal]
		peer := map[bool]grpcPeer{true: local, false: app}[steal]

		// Bidirectional: each note is answered before the next is sent.
		stream, err := rg.NewRouteGuideClient(cc).RouteChat(stealCtx(ctx, steal))
		if err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			msg := "note" + strconv.Itoa(i)
			if err := stream.Send(&rg.RouteNote{Message: msg}); err != nil {
				t.Fatal(err)
			}
			got, err := stream.Recv()
			if err != nil || got.GetMessage() != name+" got "+msg {
				t.Fatalf("bidi reply %q, %v", got.GetMessage(), err)
			}
		}
		if err := stream.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if got, err := stream.Recv(); err != nil || got.GetMessage() != name+" bye" {
			t.Fatalf("after CloseSend: %q, %v", got.GetMessage(), err)
		}
		if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
			t.Fatalf("stream end: %v, want io.EOF (status OK in trailers)", err)
		}

		// Server streaming that stays open: health Watch sends a message per status change.
		wctx, wcancel := context.WithCancel(stealCtx(ctx, steal))
		watch, err := healthpb.NewHealthClient(cc).Watch(wctx, &healthpb.HealthCheckRequest{Service: "svc"})
		if err != nil {
			t.Fatal(err)
		}
		for _, next := range []healthpb.HealthCheckResponse_ServingStatus{
			healthpb.HealthCheckResponse_NOT_SERVING, healthpb.HealthCheckResponse_SERVING,
		} {
			got, err := watch.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if got.GetStatus() == next {
				t.Fatalf("status %v before it was set", got.GetStatus())
			}
			peer.health.SetServingStatus("svc", next)
		}
		if got, err := watch.Recv(); err != nil || got.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("watch: %v, %v", got, err)
		}
		wcancel()
		if _, err := watch.Recv(); status.Code(err) != codes.Canceled {
			t.Errorf("after cancel: %v", err)
		}
	}
	if n := p.accepts.Load(); n != 1 {
		t.Errorf("proxy accepted %d connections, want 1", n)
	}
}

func TestGRPCLocalDown(t *testing.T) {
	checkLeaks(t)
	app := grpcServer(t, "app")
	p := startProxy(t, proxyConfig{app: app.addr, steal: stealHeader(t)})
	cc, err := grpc.NewClient(p.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := pb.NewGreeterClient(cc).SayHello(stealCtx(ctx, true), &pb.HelloRequest{Name: "x"})
	if err != nil || !strings.HasPrefix(r.GetMessage(), "Hello x from app") {
		t.Fatalf("got %q, %v", r.GetMessage(), err)
	}
	if w := p.ev.warnings(); len(w) != 1 || !strings.Contains(w[0], "local process unreachable") {
		t.Errorf("warnings %q", w)
	}
}

func TestGRPCProbeNotStolen(t *testing.T) {
	checkLeaks(t)
	app, local := grpcServer(t, "app"), grpcServer(t, "local")
	// Whole-port steal: everything but probes.
	p := startProxy(t, proxyConfig{app: app.addr, local: local.addr, steal: func(h *RequestHead) bool { return !isProbe(h) }})
	for ua, want := range map[string]string{"kube-probe/1.33": "app", "curl-ish/1": "local"} {
		cc, err := grpc.NewClient(p.addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithUserAgent(ua))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		r, err := pb.NewGreeterClient(cc).SayHello(ctx, &pb.HelloRequest{Name: "x"})
		cancel()
		cc.Close()
		if err != nil || !strings.HasPrefix(r.GetMessage(), "Hello x from "+want) {
			t.Errorf("user agent %q: got %q, %v; want %s", ua, r.GetMessage(), err, want)
		}
	}
}

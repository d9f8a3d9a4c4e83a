// Command netcheck is the e2e tests' client for exec: a static Go program (no libc, Go's own
// resolver) that fetches URLs and sends UDP datagrams, one line per result, and can serve HTTP to
// receive stolen requests. It exits non-zero when any check fails.
//
// Usage: netcheck [-udp HOST:PORT]... [-serve ADDR -serve-count N] [URL...]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var udps list
	flag.Var(&udps, "udp", "HOST:PORT of a UDP echo to send a datagram to (repeatable)")
	serve := flag.String("serve", "", "serve HTTP on this address, answering \"served by netcheck\"")
	count := flag.Int("serve-count", 1, "with -serve: exit after this many requests")
	flag.Parse()
	failed := false
	for _, u := range flag.Args() {
		if err := get(u); err != nil {
			fmt.Printf("GET %s -> error: %v\n", u, err)
			failed = true
		}
	}
	for _, a := range udps {
		if err := udp(a); err != nil {
			fmt.Printf("UDP %s -> error: %v\n", a, err)
			failed = true
		}
	}
	if *serve != "" {
		if err := serveN(*serve, *count); err != nil {
			fmt.Printf("serve %s -> error: %v\n", *serve, err)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}

func get(url string) error {
	c := &http.Client{Timeout: 20 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	var echo struct {
		Pod string `json:"pod"`
	}
	answer := strings.TrimSpace(string(b))
	if json.Unmarshal(b, &echo) == nil && echo.Pod != "" {
		answer = "pod=" + echo.Pod
	}
	fmt.Printf("GET %s -> %d %s\n", url, resp.StatusCode, answer)
	return nil
}

func udp(addr string) error {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	msg := fmt.Sprintf("netcheck-%d", time.Now().UnixNano())
	buf := make([]byte, 1500)
	// UDP may lose the first datagram while the path warms up: retry a few times.
	for try := 0; try < 5; try++ {
		if _, err := c.Write([]byte(msg)); err != nil {
			return err
		}
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err := c.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		if string(buf[:n]) != msg {
			return fmt.Errorf("got %q back, sent %q", buf[:n], msg)
		}
		fmt.Printf("UDP %s -> echoed\n", addr)
		return nil
	}
	return errors.New("no answer after 5 tries")
}

func serveN(addr string, n int) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	fmt.Printf("serving on %s\n", ln.Addr())
	ctx, cancel := context.WithCancel(context.Background())
	var served atomic.Int64
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "served by netcheck: %s %s\n", r.Method, r.URL.Path)
		fmt.Printf("served %s %s\n", r.Method, r.URL.Path)
		if served.Add(1) >= int64(n) {
			cancel()
		}
	})}
	go func() {
		<-ctx.Done()
		// Let the last answer leave before the server goes.
		time.Sleep(200 * time.Millisecond)
		srv.Close()
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Command wsecho is the trafficlab WebSocket test peer: every message on /ws (or any
// path) is sent back with the same type. GET /healthz answers "ok" for probes.
// Usage: peer-wsecho [-addr :8081]   (or WSECHO_ADDR)
package main

import (
	"errors"
	"flag"
	"io"
	"log"
	"net/http"
	"os"
	"time"

	"github.com/coder/websocket"
)

func echo(w http.ResponseWriter, r *http.Request) {
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		log.Printf("accept %s: %v", r.RemoteAddr, err)
		return
	}
	defer func() { _ = c.CloseNow() }() // best effort; Close below is the clean path
	c.SetReadLimit(64 << 20)
	ctx := r.Context()
	for {
		typ, rd, err := c.Reader(ctx)
		if err != nil {
			if s := websocket.CloseStatus(err); s != websocket.StatusNormalClosure && s != websocket.StatusGoingAway {
				log.Printf("read %s: %v", r.RemoteAddr, err)
			}
			return
		}
		wr, err := c.Writer(ctx, typ)
		if err != nil {
			log.Printf("writer %s: %v", r.RemoteAddr, err)
			return
		}
		if _, err := io.Copy(wr, rd); err != nil {
			log.Printf("echo %s: %v", r.RemoteAddr, err)
			return
		}
		if err := wr.Close(); err != nil {
			log.Printf("flush %s: %v", r.RemoteAddr, err)
			return
		}
	}
}

func main() {
	def := os.Getenv("WSECHO_ADDR")
	if def == "" {
		def = ":8081"
	}
	addr := flag.String("addr", def, "listen address")
	flag.Parse()
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc("/", echo)
	srv := &http.Server{Addr: *addr, Handler: mux, ReadHeaderTimeout: 30 * time.Second}
	log.Printf("peer-wsecho listening on %s", *addr)
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}

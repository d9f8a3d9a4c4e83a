// Command udpecho is the trafficlab UDP test peer: every datagram is sent back to its
// sender unchanged. Usage: peer-udpecho [-addr :9053]   (or UDPECHO_ADDR)
package main

import (
	"flag"
	"log"
	"net"
	"os"
)

func main() {
	def := os.Getenv("UDPECHO_ADDR")
	if def == "" {
		def = ":9053"
	}
	addr := flag.String("addr", def, "listen address")
	flag.Parse()
	pc, err := net.ListenPacket("udp", *addr)
	if err != nil {
		log.Fatalf("listen: %v", err)
	}
	log.Printf("peer-udpecho listening on %s", pc.LocalAddr())
	buf := make([]byte, 64<<10)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			log.Fatalf("read: %v", err)
		}
		if _, err := pc.WriteTo(buf[:n], from); err != nil {
			log.Printf("write to %s: %v", from, err)
		}
	}
}

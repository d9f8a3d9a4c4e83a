package forward

import (
	"bytes"
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// udpPodDialer answers each association's datagrams upper-cased, the way the agent relays a pod-side
// UDP socket over a framed stream, and counts associations.
type udpPodDialer struct{ opened chan string }

func (d udpPodDialer) Dial(ctx context.Context, network, address string) (io.ReadWriteCloser, error) {
	local, pod := net.Pipe()
	d.opened <- network + " " + address
	go func() {
		defer pod.Close()
		buf := make([]byte, wire.MaxDatagramSize)
		for {
			n, err := wire.ReadDatagram(pod, buf)
			if err != nil {
				return
			}
			if err := wire.WriteDatagram(pod, bytes.ToUpper(buf[:n])); err != nil {
				return
			}
		}
	}()
	return local, nil
}

func TestUDPForwardKeepsClientsApart(t *testing.T) {
	d := udpPodDialer{opened: make(chan string, 10)}
	out := &syncBuffer{}
	f := &Forwarder{Dialer: d, Addresses: []string{"127.0.0.1"}, Out: out, ErrOut: io.Discard}
	ls, err := f.ListenUDP([]Spec{{Host: "kube-dns.kube-system", Port: 53, Protocol: "udp"}})
	if err != nil {
		t.Fatal(err)
	}
	f.Announce(nil, ls)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		f.ServeUDP(ctx, ls)
		close(done)
	}()
	defer func() {
		cancel()
		<-done
	}()
	if want := "Forwarding from " + ls[0].Addr().String() + "/udp -> kube-dns.kube-system:53/udp\n"; out.String() != want {
		t.Errorf("output = %q, want %q", out.String(), want)
	}
	clients := make([]net.Conn, 2)
	for i := range clients {
		c, err := net.Dial("udp", ls[0].Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients[i] = c
	}
	for round := range 3 {
		for i, c := range clients {
			msg := []byte{'a' + byte(i), 'x', '0' + byte(round)}
			if _, err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 64)
			n, err := c.Read(buf)
			if err != nil {
				t.Fatalf("client %d round %d: %v", i, round, err)
			}
			if got, want := string(buf[:n]), string(bytes.ToUpper(msg)); got != want {
				t.Errorf("client %d got %q, want %q (replies crossed clients?)", i, got, want)
			}
		}
	}
	if got := len(d.opened); got != 2 {
		t.Errorf("associations opened = %d, want one per client (2)", got)
	}
	if first := <-d.opened; first != "udp kube-dns.kube-system:53" {
		t.Errorf("dial = %q", first)
	}
}

//go:build linux && kernel

package netfilter

import (
	"context"
	"net"
	"slices"
	"testing"

	"github.com/trafficlab/kubectl-trafficlab/internal/testnet"
)

// TestKernelListening: the app's listeners on the asked ports are seen, IPv4 and IPv6; the agent's
// own (PassListenConfig), a port not asked and a closed listener are not.
func TestKernelListening(t *testing.T) {
	pod := testnet.New(t)
	app4 := pod.Listen(t, "tcp4", "127.0.0.1:8080")
	pod.Listen(t, "tcp6", "[::1]:8081")
	pod.Listen(t, "tcp", ":9000") // not asked
	var agent net.Listener
	if err := pod.Do(func() error {
		var err error
		agent, err = PassListenConfig().Listen(context.Background(), "tcp", ":8082")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer agent.Close()
	listening := func() []uint16 {
		t.Helper()
		var got []uint16
		if err := pod.Do(func() error {
			var err error
			got, err = Listening([]uint16{8080, 8081, 8082})
			return err
		}); err != nil {
			t.Fatalf("Listening: %v", err)
		}
		return got
	}
	if got, want := listening(), []uint16{8080, 8081}; !slices.Equal(got, want) {
		t.Errorf("Listening = %v, want %v (the agent's marked listener on 8082 left out)", got, want)
	}
	app4.Close()
	if got, want := listening(), []uint16{8081}; !slices.Equal(got, want) {
		t.Errorf("after the app closed 8080: Listening = %v, want %v", got, want)
	}
}

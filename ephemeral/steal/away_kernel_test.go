//go:build linux && kernel

package steal

import (
	"bufio"
	"context"
	"io"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/internal/testnet"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// TestKernelStealAway: while the session's plugin is away a whole-port steal's redirect is lifted
// (new connections reach the app, in the kernel) and the table stays; the connection it had stolen
// is reset; when the plugin is back the redirect is restored. On both redirects: the owned table's
// NAT and the unowned one's tproxy.
func TestKernelStealAway(t *testing.T) {
	for _, tc := range []struct {
		name    string
		unowned bool
	}{{"owned", false}, {"unowned", true}} {
		t.Run(tc.name, func(t *testing.T) {
			pod, client := testnet.New(t), testnet.New(t)
			testnet.Connect(t, pod, []netip.Prefix{netip.MustParsePrefix("10.78.0.1/24")}, client, []netip.Prefix{netip.MustParsePrefix("10.78.0.2/24")})
			app := pod.Listen(t, "tcp", ":8080")
			go func() {
				for {
					c, err := app.Accept()
					if err != nil {
						return
					}
					go func() {
						defer c.Close()
						r := bufio.NewReader(c)
						for {
							if _, err := r.ReadString('\n'); err != nil {
								return
							}
							if _, err := io.WriteString(c, "app\n"); err != nil {
								return
							}
						}
					}()
				}
			}()
			var st *Steal
			if err := pod.Do(func() error {
				var err error
				st, err = Start(context.Background(), Config{
					ID:           "away" + tc.name[:2],
					Spec:         wire.StealSpec{Ports: []int{8080}, AllowUnownedRedirect: tc.unowned},
					ForceUnowned: tc.unowned,
					Open:         lineOpener{},
					InNetns:      pod.Do,
				})
				return err
			}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			const addr = "10.78.0.1:8080"
			if got := askLine(t, client, addr); got != "local" {
				t.Fatalf("while stealing, answered %q, want the local process", got)
			}
			// A connection stolen before the plugin goes away: its stream went with the tunnel.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			held, err := client.DialContext(ctx, "tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer held.Close()
			hr := bufio.NewReader(held)
			if _, err := io.WriteString(held, "hello\n"); err != nil {
				t.Fatal(err)
			}
			if l, err := hr.ReadString('\n'); err != nil || l != "local\n" {
				t.Fatalf("held connection answered %q, %v", l, err)
			}
			tables := tablesIn(t, pod)

			if err := st.SetAway(true); err != nil {
				t.Fatalf("SetAway(true): %v", err)
			}
			if got := askLine(t, client, addr); got != "app" {
				t.Errorf("while the plugin is away, answered %q, want the app", got)
			}
			if got := tablesIn(t, pod); !slices.Equal(got, tables) {
				t.Errorf("tables while away: %v, want %v kept for the plugin's return", got, tables)
			}
			_ = held.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.WriteString(held, "hello\n"); err == nil {
				if l, err := hr.ReadString('\n'); err == nil {
					t.Errorf("the connection stolen before the plugin went away still answered %q", l)
				}
			}

			if err := st.SetAway(false); err != nil {
				t.Fatalf("SetAway(false): %v", err)
			}
			if got := askLine(t, client, addr); got != "local" {
				t.Errorf("after the plugin is back, answered %q, want the local process", got)
			}
			if err := st.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if got := askLine(t, client, addr); got != "app" {
				t.Errorf("after Close, answered %q, want the app", got)
			}
		})
	}
}

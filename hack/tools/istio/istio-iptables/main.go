// Command istio-iptables is Istio's sidecar rule generator, pinned in ../go.mod, for the mesh
// kernel tests (internal/meshtest) and the mesh e2e. Istio's module serves no main for it any
// more (pilot-agent runs the same cobra command as `pilot-agent istio-iptables`), so this one
// executes that command: iptables mode (legacy or nft, chosen by the binaries found or by
// --force-iptables-binary=legacy|nft) and Istio's native nftables mode (--native-nftables, table
// `inet istio-proxy-nat`); --dry-run prints the rules instead of applying them.
package main

import (
	"os"

	"istio.io/istio/pkg/log"
	"istio.io/istio/tools/istio-iptables/pkg/cmd"
)

func main() {
	if err := cmd.GetCommand(log.DefaultOptions()).Execute(); err != nil {
		os.Exit(1)
	}
}

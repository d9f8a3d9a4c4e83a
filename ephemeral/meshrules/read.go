package meshrules

import (
	"fmt"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Rules are the nat (and mangle) rules of one network namespace, in every form they came in.
type Rules struct {
	Tables []*Table
}

// Read reads the rules of the calling thread's network namespace (the agent's, which is the
// pod's): iptables-legacy's nat and mangle tables with getsockopt, then every ip, ip6 and inet
// nftables table (iptables-nft's and native ones alike) except the agent's own. It needs
// CAP_NET_ADMIN; without it the error wraps EPERM (errors.Is(err, os.ErrPermission)), and the
// caller decides from the pod's spec instead. Read changes nothing: a legacy table the namespace
// does not have is not asked for (asking would create it).
func Read() (*Rules, error) {
	legacy, _, err := readLegacy()
	if err != nil {
		return nil, err
	}
	sock, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return nil, fmt.Errorf("open nftables netlink: %w", err)
	}
	defer sock.Close()
	var idx ruleIndex
	c, err := nftables.New(nftables.WithTestDial(idx.wrap(forward(sock))))
	if err != nil {
		return nil, fmt.Errorf("open nftables netlink: %w", err)
	}
	nft, err := readNft(c, &idx)
	if err != nil {
		return nil, err
	}
	return &Rules{Tables: append(legacy, nft...)}, nil
}

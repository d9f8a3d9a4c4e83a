package netfilter

import (
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// StopNew deletes the redirect's rules and keeps the table and its chains: new connections go
// to the app again, and the connections redirected so far keep reaching the agent. Their NAT
// bindings live as long as a NAT hook is registered, and the table's empty nat chains keep
// theirs (deleting the pod's last NAT hooks drops the bindings, and the connections with them);
// the input chain still accepts what the redirect mapped. This is how a session ends without
// failing anything in flight: stop taking, drain what was taken, then Close. Without the owner
// flag (tproxy) the accepted sockets hold their connections by themselves, so deleting the rule
// is enough there too. Calls after Close do nothing.
func (o *Owned) StopNew() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.c == nil {
		return nil
	}
	if err := exchange(o.c, &o.seq, stopBatch(o.name, o.owned)); err != nil {
		return fmt.Errorf("delete the redirect rules of nftables table inet %q: %w", o.name, err)
	}
	return nil
}

// Restore adds back the redirect's rules that StopNew deleted: new connections are redirected again.
// A session whose plugin went away lifts its whole-port redirect with StopNew (the app answers
// while nobody would), and restores it when the plugin is back. Calls after Close do nothing.
func (o *Owned) Restore() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.c == nil {
		return nil
	}
	msgs, err := restoreBatch(o.name, o.redirect, o.owned)
	if err != nil {
		return err
	}
	if err := exchange(o.c, &o.seq, msgs); err != nil {
		return fmt.Errorf("add back the redirect rules of nftables table inet %q: %w", o.name, err)
	}
	return nil
}

// restoreBatch adds the redirecting rules of the table as Batch made it, into its emptied chains.
func restoreBatch(name string, r Redirect, owned bool) ([]netlink.Message, error) {
	b := &batch{table: name}
	if owned {
		b.natTake(r)
	} else {
		b.tproxyTake(r)
	}
	if b.err != nil {
		return nil, fmt.Errorf("encode nftables batch for table inet %q: %w", name, b.err)
	}
	return b.done(), nil
}

// stopBatch is `nft flush chain inet NAME C` for each redirecting chain of the table as Batch made
// it: a rule deletion that names a chain and no rule deletes every rule of that chain.
func stopBatch(name string, owned bool) []netlink.Message {
	chains := []string{chainPrerouting}
	if owned {
		chains = append(chains, chainOutput)
	}
	b := &batch{table: name}
	for _, ch := range chains {
		b.add(unix.NFT_MSG_DELRULE, 0, func(ae *netlink.AttributeEncoder) {
			ae.String(unix.NFTA_RULE_TABLE, name)
			ae.String(unix.NFTA_RULE_CHAIN, ch)
		})
	}
	return b.done()
}

// Package netfilter owns the agent's nftables state. Every session keeps all its rules in one
// table of its own, inet trafficlab_<session>, so that removing the session is one atomic table
// delete and the agent never touches a table it did not create: the pod's netns is shared with
// the app and possibly a service mesh or CNI, and flushing their rules would break the pod.
//
// A steal's redirect (Open) lives in an owned table (NFT_TABLE_F_OWNER, Linux 5.12): the kernel
// deletes it the moment the netlink socket that created it closes, which happens however the
// agent ends, SIGKILL included, and refuses changes from any other socket. So the table, its
// chains and rules are created in one batch over a socket the session keeps open until Close,
// which deletes the table over that same socket first. google/nftables cannot do this (it always
// sends table flags 0, and its default connection opens a socket per flush), so Open frames the
// batch itself over one lasting mdlayher/netlink socket and uses google/nftables/expr only to
// encode rule expressions. A kernel that refuses the flag (before 5.12) gets, only when the user
// allows it (Options.AllowUnowned), a table without it that redirects with tproxy to a transparent
// listener, which matches nothing once the listener is gone; a Guard process removes that table
// once the session process is gone, and SweepStale removes it should the guard be gone too.
//
// Ensure, Delete and Sweep handle plain tables through github.com/google/nftables; SweepStale
// finds the tables whose holder is gone by their liveness token (token.go); Flush resets
// connections opened before a steal through sock_diag and conntrack. Nothing here runs the nft
// binary, which the agent image does not contain.
package netfilter

import (
	"errors"
	"fmt"
	"math/bits"
	"strings"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

const (
	// TablePrefix starts the name of every table the agent creates.
	TablePrefix = "trafficlab_"

	// maxIDLen keeps table names short enough for nft listings and well under the kernel's
	// 256-byte name limit.
	maxIDLen = 16

	// family is inet so one table covers IPv4 and IPv6.
	family = nftables.TableFamilyINet
)

// Conn is the part of *nftables.Conn this package uses; tests substitute it.
type Conn interface {
	AddTable(t *nftables.Table) *nftables.Table
	DelTable(t *nftables.Table)
	ListTables() ([]*nftables.Table, error)
	Flush() error
}

// ValidateID checks that id can name a session's table: 1 to 16 characters from [a-z0-9].
func ValidateID(id string) error {
	if id == "" {
		return errors.New("session id must not be empty")
	}
	if len(id) > maxIDLen {
		return fmt.Errorf("session id %q is longer than %d characters", id, maxIDLen)
	}
	for _, r := range id {
		if (r < 'a' || r > 'z') && (r < '0' || r > '9') {
			return fmt.Errorf("session id %q may contain only a-z and 0-9", id)
		}
	}
	return nil
}

// TableName returns the name of the session's table.
func TableName(id string) (string, error) {
	if err := ValidateID(id); err != nil {
		return "", err
	}
	return TablePrefix + id, nil
}

// Table returns the session's table as the nftables package describes it.
func Table(id string) (*nftables.Table, error) {
	name, err := TableName(id)
	if err != nil {
		return nil, err
	}
	return &nftables.Table{Name: name, Family: family}, nil
}

// sessionID reports whether name is a table this package would have created, and for which
// session. Tables that merely share the prefix but could not come from TableName are foreign.
func sessionID(name string) (string, bool) {
	id, ok := strings.CutPrefix(name, TablePrefix)
	if !ok || ValidateID(id) != nil {
		return "", false
	}
	return id, true
}

// Ensure creates the session's table, or leaves it as it is if it exists. Like `nft add table`,
// it never fails because the table is already there and never removes what the table holds.
func Ensure(c Conn, id string) error {
	t, err := Table(id)
	if err != nil {
		return err
	}
	c.AddTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("create nftables table inet %q: %w", t.Name, err)
	}
	return nil
}

// Delete removes the session's table with everything in it. A table that does not exist is not
// an error, so cleanup can run more than once (signal handler, then exit path).
func Delete(c Conn, id string) error {
	t, err := Table(id)
	if err != nil {
		return err
	}
	return deleteTable(c, t)
}

func deleteTable(c Conn, t *nftables.Table) error {
	c.DelTable(t)
	// Deleting and treating ENOENT as done, rather than listing first, has no window in which
	// another cleanup can remove the table between the two steps.
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete nftables table %s %q: %w", familyName(t.Family), t.Name, err)
	}
	return nil
}

// Sweep deletes the trafficlab_* tables of every family whose holder alive does not vouch for
// (it gets the table's name), typically those of agents that died without cleaning up, and
// returns them as "FAMILY NAME". Tables of any other name are never touched, and neither are owned
// tables: they belong to a live socket (the kernel removes them when it closes) and refuse
// changes from any other. Every family, not only inet: a table of the same name in another
// family is nobody else's either, and it could hold a redirect too.
func Sweep(c Conn, alive func(table string) bool) ([]string, error) {
	tables, err := c.ListTables()
	if err != nil {
		return nil, fmt.Errorf("list nftables tables: %w", err)
	}
	var deleted []string
	var errs []error
	for _, t := range tables {
		if _, ours := sessionID(t.Name); !ours || ownedTable(t) || alive(t.Name) {
			continue
		}
		// One batch per table: nftables batches are all-or-nothing, so a table that vanished
		// meanwhile would otherwise keep the others alive.
		if err := deleteTable(c, &nftables.Table{Name: t.Name, Family: t.Family}); err != nil {
			errs = append(errs, err)
			continue
		}
		deleted = append(deleted, familyName(t.Family)+" "+t.Name)
	}
	return deleted, errors.Join(errs...)
}

// familyName is the family as nft spells it.
func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyINet:
		return "inet"
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyIPv6:
		return "ip6"
	case nftables.TableFamilyARP:
		return "arp"
	case nftables.TableFamilyBridge:
		return "bridge"
	case nftables.TableFamilyNetdev:
		return "netdev"
	}
	return fmt.Sprintf("family %d", f)
}

// ownedTable reports the owner flag on a listed table. google/nftables v0.3.0 decodes the
// big-endian NFTA_TABLE_FLAGS in host byte order, so on little-endian machines the flag arrives
// byte-swapped; accepting both orders stays right once the library is fixed.
func ownedTable(t *nftables.Table) bool {
	return t.Flags&tableFlagOwner != 0 || bits.ReverseBytes32(t.Flags)&tableFlagOwner != 0
}

//go:build linux && kernel

package netfilter

import (
	"fmt"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables"

	"github.com/trafficlab/kubectl-trafficlab/internal/testnet"
)

// listTables returns "family name" for every table in the namespace, sorted.
func listTables(t *testing.T, c *nftables.Conn) []string {
	t.Helper()
	tables, err := c.ListTables()
	if err != nil {
		t.Fatalf("list tables: %v", err)
	}
	var out []string
	for _, tb := range tables {
		out = append(out, fmt.Sprintf("%d %s", tb.Family, tb.Name))
	}
	slices.Sort(out)
	return out
}

func TestKernelTableOwnership(t *testing.T) {
	ns := testnet.New(t)
	c, err := nftables.New(nftables.WithNetNSFd(int(ns.Handle())))
	if err != nil {
		t.Fatalf("nftables conn: %v", err)
	}

	// Tables of the app and of other tools, which the agent must never touch, and a table of a
	// session's name in another family, which Sweep takes like any other of its tables.
	inet, ip := nftables.TableFamilyINet, nftables.TableFamilyIPv4
	c.AddTable(&nftables.Table{Name: "app", Family: inet})
	c.AddTable(&nftables.Table{Name: "trafficlab_old", Family: ip}) // same prefix, other family
	c.AddTable(&nftables.Table{Name: "trafficlab_X", Family: inet}) // same prefix, not a session id
	if err := c.Flush(); err != nil {
		t.Fatalf("add foreign tables: %v", err)
	}
	foreign := []string{"1 app", "1 trafficlab_X"}

	for range 2 {
		if err := Ensure(c, "mine"); err != nil {
			t.Fatalf("Ensure(mine): %v", err)
		}
	}
	// Ensure must keep what the table already holds.
	table, _ := Table("mine")
	c.AddChain(&nftables.Chain{Name: "probe", Table: table})
	if err := c.Flush(); err != nil {
		t.Fatalf("add chain: %v", err)
	}
	if err := Ensure(c, "mine"); err != nil {
		t.Fatalf("Ensure(mine) over a chain: %v", err)
	}
	if _, err := c.ListChain(table, "probe"); err != nil {
		t.Fatalf("chain probe after Ensure: %v; want it kept", err)
	}

	for _, id := range []string{"live", "dead"} {
		if err := Ensure(c, id); err != nil {
			t.Fatalf("Ensure(%s): %v", id, err)
		}
	}
	want := append(slices.Clone(foreign), "1 trafficlab_dead", "1 trafficlab_live", "1 trafficlab_mine", "2 trafficlab_old")
	slices.Sort(want)
	if diff := cmp.Diff(want, listTables(t, c)); diff != "" {
		t.Fatalf("tables after Ensure (-want +got):\n%s", diff)
	}

	deleted, err := Sweep(c, func(name string) bool { return name == "trafficlab_live" || name == "trafficlab_mine" })
	if err != nil {
		t.Fatalf("Sweep: %v", err)
	}
	slices.Sort(deleted)
	if diff := cmp.Diff([]string{"inet trafficlab_dead", "ip trafficlab_old"}, deleted); diff != "" {
		t.Errorf("swept (-want +got):\n%s", diff)
	}
	want = append(slices.Clone(foreign), "1 trafficlab_live", "1 trafficlab_mine")
	slices.Sort(want)
	if diff := cmp.Diff(want, listTables(t, c)); diff != "" {
		t.Fatalf("tables after Sweep (-want +got):\n%s", diff)
	}

	// Twice each: the second delete finds nothing and must still succeed.
	for _, id := range []string{"mine", "live", "mine", "live", "neverexisted"} {
		if err := Delete(c, id); err != nil {
			t.Fatalf("Delete(%s): %v", id, err)
		}
	}
	if diff := cmp.Diff(foreign, listTables(t, c)); diff != "" {
		t.Errorf("tables after Delete (-want +got):\n%s", diff)
	}
}

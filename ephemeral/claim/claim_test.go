package claim

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

func TestConflict(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 18, 2, 11, 0, time.UTC)
	claim := func(session, verb, filter string, at int) Claim {
		return Claim{Agent: "trafficlab-agent-1", Instance: "i1", Session: session, User: "alice", Host: "laptop",
			Verb: verb, Port: 8080, Filter: filter, Since: t0.Add(time.Duration(at) * time.Second)}
	}
	filtA := claim("aaa", VerbSteal, `header "^X-Dev: a$"`, 0)
	filtB := claim("bbb", VerbSteal, `header "^X-Dev: b$"`, 1)
	whole := claim("www", VerbSteal, "", 0)
	mirror := claim("mmm", VerbMirror, "", 0)
	other := claim("ooo", VerbSteal, `header "x"`, 0)
	other.Instance, other.Agent, other.User, other.Host = "i2", "trafficlab-agent-2", "", ""
	otherPort := filtA
	otherPort.Port = 9090
	for _, tc := range []struct {
		name   string
		want   Claim
		held   []Claim
		shared []string
		err    string // the whole line
	}{
		{name: "first filtered", want: filtA},
		{name: "first whole", want: whole},
		{name: "filtered shares with filtered, first registered first", want: claim("ccc", VerbSteal, `path "^/c"`, 5), held: []Claim{filtB, filtA}, shared: []string{"aaa", "bbb"}},
		{name: "own session's claims ignored", want: filtA, held: []Claim{filtA}},
		{name: "other ports ignored", want: whole, held: []Claim{otherPort}},
		{name: "whole over filtered", want: whole, held: []Claim{filtA},
			err: `port 8080 is already stolen by session aaa (alice on laptop, filter header "^X-Dev: a$", since 18:02:11 UTC): a whole-port steal would take its requests; steal with a filter (--header-filter, --path-filter, --method) or wait until it ends`},
		{name: "whole over whole", want: claim("w2", VerbSteal, "", 3), held: []Claim{whole},
			err: `port 8080 is already stolen by session www (alice on laptop, every connection, since 18:02:11 UTC): a whole-port steal would take its requests; steal with a filter (--header-filter, --path-filter, --method) or wait until it ends`},
		{name: "filtered over whole", want: filtB, held: []Claim{whole},
			err: `port 8080 is stolen whole by session www (alice on laptop, every connection, since 18:02:11 UTC): no other steal can share it until that one ends`},
		{name: "filtered steal shares with a redirect mirror, which it is not told of", want: filtB, held: []Claim{mirror, filtA}, shared: []string{"aaa"}},
		{name: "redirect mirror shares with filtered steals", want: claim("m2", VerbMirror, "", 4), held: []Claim{filtA, filtB}, shared: []string{"aaa", "bbb"}},
		{name: "redirect mirrors share", want: claim("m2", VerbMirror, "", 4), held: []Claim{mirror}},
		{name: "whole over redirect mirror", want: claim("w2", VerbSteal, "", 3), held: []Claim{mirror},
			err: `port 8080 is mirrored with a redirect by session mmm (alice on laptop, redirect mirror, since 18:02:11 UTC): a whole-port steal would take its connections from the mirror; steal with a filter (--header-filter, --path-filter, --method) or wait until it ends`},
		{name: "redirect mirror over whole", want: claim("m2", VerbMirror, "", 4), held: []Claim{whole},
			err: `port 8080 is stolen whole by session www (alice on laptop, every connection, since 18:02:11 UTC): a redirect mirror cannot share it until that steal ends; use --mode sniff`},
		{name: "redirect mirror over another agent's redirect mirror", want: claim("m2", VerbMirror, "", 4), held: []Claim{func() Claim { m := mirror; m.Instance, m.Agent = "i2", "trafficlab-agent-2"; return m }()},
			err: `port 8080 is held by session mmm (alice on laptop, redirect mirror, since 18:02:11 UTC) in agent container "trafficlab-agent-2", another agent in this pod: sessions of different agents cannot share a port`},
		{name: "another agent's claim, even filtered", want: filtB, held: []Claim{other},
			err: `port 8080 is held by session ooo (filter header "x", since 18:02:11 UTC) in agent container "trafficlab-agent-2", another agent in this pod: sessions of different agents cannot share a port`},
		{name: "the earliest conflict is named", want: whole, held: []Claim{filtB, filtA},
			err: `port 8080 is already stolen by session aaa (alice on laptop, filter header "^X-Dev: a$", since 18:02:11 UTC): a whole-port steal would take its requests; steal with a filter (--header-filter, --path-filter, --method) or wait until it ends`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			shared, err := Conflict(tc.want, tc.held)
			got := ""
			if err != nil {
				got = err.Error()
				if !errors.Is(err, wire.ErrUnsupported) {
					t.Errorf("error %v is not wire.ErrUnsupported", err)
				}
			}
			if diff := cmp.Diff(tc.err, got); diff != "" {
				t.Errorf("error (-want +got):\n%s", diff)
			}
			var ids []string
			for _, c := range shared {
				ids = append(ids, c.Session)
			}
			if diff := cmp.Diff(tc.shared, ids); diff != "" {
				t.Errorf("shared (-want +got):\n%s", diff)
			}
		})
	}
}

func randomSession(t *testing.T) string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

// TestHoldList: a held claim is listed with what it says, and gone once released. The port is one
// no other test uses, and the sessions random, since abstract names are shared by the whole netns.
func TestHoldList(t *testing.T) {
	const port = 61999
	since := time.Now().UTC().Truncate(time.Second)
	a := Claim{Agent: "trafficlab-agent-1", Instance: "i1", Session: randomSession(t), User: "alice", Verb: VerbSteal, Port: port, Filter: `header "a"`, Since: since}
	b := a
	b.Session, b.Since = randomSession(t), since.Add(time.Second)
	ha, err := Hold(a)
	if err != nil {
		t.Fatal(err)
	}
	defer ha.Close()
	hb, err := Hold(b)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Hold(a); err == nil {
		t.Error("a second hold of the same claim succeeded")
	}
	got, err := List(port)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]Claim{a, b}, got); diff != "" {
		t.Errorf("claims (-want +got):\n%s", diff)
	}
	hb.Close()
	got, err = List(port)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]Claim{a}, got); diff != "" {
		t.Errorf("claims after one was released (-want +got):\n%s", diff)
	}
	if other, err := List(port + 1); err != nil || len(other) != 0 {
		t.Errorf("claims of another port: %v, %v", other, err)
	}
}

func TestClaimNames(t *testing.T) {
	listing := `Num       RefCount Protocol Flags    Type St Inode Path
00000000c3e96a55: 00000002 00000000 00010000 0001 01 15811589 @trafficlab-claim.8080.abc
00000000c3e96a56: 00000003 00000000 00000000 0001 03 15811590 @trafficlab-claim.8080.abc
00000000c3e96a57: 00000002 00000000 00010000 0001 01 15811591 @trafficlab-claim.80800.abc
00000000c3e96a58: 00000002 00000000 00010000 0001 01 15811592 @trafficlab-claim.8080.def
00000000c3e96a59: 00000002 00000000 00010000 0001 01 15811593 /run/trafficlab-claim.8080.x
00000000c3e96a5a: 00000002 00000000 00010000 0001 01 15811594
`
	got, err := claimNames(strings.NewReader(listing), 8080)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"@trafficlab-claim.8080.abc", "@trafficlab-claim.8080.def"}, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func FuzzClaimNames(f *testing.F) {
	f.Add("00000000c3e96a55: 00000002 00000000 00010000 0001 01 15811589 @trafficlab-claim.8080.abc\n", 8080)
	f.Add("Num RefCount\n\x00 a b 00010000 c d e @trafficlab-claim.1.\n", 1)
	f.Fuzz(func(t *testing.T, listing string, port int) {
		names, err := claimNames(strings.NewReader(listing), port)
		if err != nil {
			return
		}
		for _, n := range names {
			if !strings.HasPrefix(n, address(port, "")) {
				t.Errorf("name %q is not a claim of port %d", n, port)
			}
		}
	})
}

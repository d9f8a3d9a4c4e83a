package wire

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseAgentSessions(t *testing.T) {
	since := time.Date(2026, 12, 7, 18, 0, 0, 0, time.UTC)
	good := AgentSessions{Version: "v1.2.3", Started: since, IdleTimeout: Millis(time.Minute), Sessions: []SessionInfo{{
		ID: "0123456789ab", User: "alice", Host: "laptop", Verbs: []string{KindSteal}, Ports: []int{8080},
		Filters: []string{"header=^X-Dev: alice$"}, Since: since, Bytes: 10, Connections: 1, Requests: 2}}}
	b, err := json.Marshal(good)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseAgentSessions(b)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(good, got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	for _, tt := range []struct{ name, in, want string }{
		{"not json", `sessions: none`, "invalid character"},
		{"bad id", `{"sessions":[{"id":"../x"}]}`, `session id "../x"`},
		{"port 0", `{"sessions":[{"id":"0123456789ab","ports":[0]}]}`, "port 0"},
		{"negative bytes", `{"sessions":[{"id":"0123456789ab","bytes":-1}]}`, "negative count"},
		{"negative requests", `{"sessions":[{"id":"0123456789ab","requests":-1}]}`, "negative count"},
		{"escape in a user", `{"sessions":[{"id":"0123456789ab","user":"\u001b[2Jalice"}]}`, "not printable"},
		{"negative idle timeout", `{"idleTimeoutMs":-5}`, "idle timeout"},
		{"too long", `{"version":"` + strings.Repeat("v", maxAgentSessions) + `"}`, "more than"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseAgentSessions([]byte(tt.in))
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ParseAgentSessions(%.40q) = %v, want a malformed error with %q", tt.in, err, tt.want)
			}
		})
	}
}

func TestFilterLabels(t *testing.T) {
	f := &HTTPFilter{Headers: []string{"^X-Dev: a$"}, Paths: []string{"^/api"}, Methods: []string{"POST"}, Match: MatchAny}
	if diff := cmp.Diff([]string{"header=^X-Dev: a$", "path=^/api", "method=POST", "match=any"}, f.FilterLabels()); diff != "" {
		t.Errorf("FilterLabels (-want +got):\n%s", diff)
	}
	var none *HTTPFilter
	if got := none.FilterLabels(); got != nil {
		t.Errorf("no filter: %q, want none", got)
	}
}

// FuzzParseAgentSessions: whatever an agent prints, the plugin either refuses it or holds only ids of the
// agent's form, valid ports and printable labels, and the accepted answer survives a round trip.
func FuzzParseAgentSessions(f *testing.F) {
	f.Add([]byte(`{"version":"v1","started":"2026-12-07T18:00:00Z","idleTimeoutMs":60000,"sessions":[{"id":"0123456789ab","user":"alice","host":"h","verbs":["steal"],"ports":[80],"filters":["path=^/"],"since":"2026-12-07T18:00:00Z","bytes":1,"connections":2,"requests":3}]}`))
	f.Add([]byte(`{"exitsAt":"2026-12-07T18:10:00Z","sessions":[]}`))
	f.Add([]byte(`{"sessions":[{"id":"0123456789ab","user":"\u0007"}]}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		a, err := ParseAgentSessions(in)
		if err != nil {
			return
		}
		for _, s := range a.Sessions {
			if !ValidSessionID(s.ID) {
				t.Fatalf("accepted session id %q", s.ID)
			}
			for _, l := range append([]string{s.User, s.Host}, s.Filters...) {
				if CheckLabel("label", l) != nil {
					t.Fatalf("accepted label %q", l)
				}
			}
		}
		b, err := json.Marshal(a)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseAgentSessions(b); err != nil {
			t.Fatalf("an accepted answer does not parse again: %v", err)
		}
	})
}

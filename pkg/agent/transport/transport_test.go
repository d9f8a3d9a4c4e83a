package transport

import (
	"errors"
	"fmt"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/util/exec"
)

func TestSPDYRefused(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"forbidden upgrade", apierrors.NewForbidden(schema.GroupResource{Resource: "pods/portforward"}, "web", errors.New("no create")), true},
		{"upgrade refused by a proxy", errors.New("unable to upgrade connection: 400 Bad Request"), true},
		{"websocket handshake failure", fmt.Errorf("dial: %w", &httpstream.UpgradeFailureError{Cause: errors.New("bad handshake")}), true},
		{"the command ran and failed", exec.CodeExitError{Err: errors.New("command terminated with exit code 1"), Code: 1}, false},
		{"network error", errors.New("dial tcp 127.0.0.1:6443: connect: connection refused"), false},
		{"success", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := spdyRefused(tt.err); got != tt.want {
				t.Errorf("spdyRefused(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

func TestParseProtocolAndVerbs(t *testing.T) {
	for in, want := range map[string][]string{"auto": {"create", "get"}, "SPDY": {"create"}, "websocket": {"get"}} {
		p, err := ParseProtocol(in)
		if err != nil {
			t.Fatal(err)
		}
		if got := p.RBACVerbs(); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s verbs = %v, want %v", in, got, want)
		}
	}
	if _, err := ParseProtocol("http3"); err == nil || err.Error() != `unknown transport protocol "http3": use auto, spdy or websocket` {
		t.Errorf("ParseProtocol(http3) error = %v", err)
	}
}

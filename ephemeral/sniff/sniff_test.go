package sniff

import (
	"errors"
	"testing"

	"github.com/trafficlab/kubectl-trafficlab/capture"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

func TestOpenRefusesBadFilter(t *testing.T) {
	_, err := Open(wire.DumpSpec{Filter: "tcp prot 80"}, nil)
	if !errors.Is(err, wire.ErrBadRequest) {
		t.Fatalf("Open with a bad filter: %v, want a bad request", err)
	}
	var ee *capture.ExprError
	if !errors.As(err, &ee) {
		t.Errorf("error %v does not carry the filter's position", err)
	}
}

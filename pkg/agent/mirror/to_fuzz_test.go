package mirror

import (
	"net"
	"strconv"
	"strings"
	"testing"
)

// FuzzParseTo: an accepted --to is either a Service (svc/NAME[:PORT] or service/NAME[:PORT], PORT a
// number or a name) or a HOST:PORT with a port number in 1-65535, never both; a refused one is named
// in the refusal.
func FuzzParseTo(f *testing.F) {
	for _, s := range []string{"svc/web:80", "service/web:http", "127.0.0.1:8080", "[::1]:9", "web", "svc/:80", "host:0", "host:65536", "svc/a:b:c", "svc/web", "svc/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, to string) {
		svc, svcPort, hostport, err := parseTo(to)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "--to "+strconv.Quote(to)) {
				t.Fatalf("refusal of %q does not name it: %v", to, err)
			}
			return
		}
		if (svc == "") == (hostport == "") {
			t.Fatalf("%q: svc %q, hostport %q", to, svc, hostport)
		}
		if svc != "" {
			joined := svc
			if svcPort != "" {
				joined = net.JoinHostPort(svc, svcPort)
			}
			if to != "svc/"+joined && to != "service/"+joined {
				t.Fatalf("%q: svc %q port %q", to, svc, svcPort)
			}
			if strings.Contains(svc, ":") || strings.Contains(svcPort, ":") {
				t.Fatalf("%q: svc %q port %q", to, svc, svcPort)
			}
			return
		}
		if svcPort != "" {
			t.Fatalf("%q: a port %q without a Service", to, svcPort)
		}
		_, port, err := net.SplitHostPort(hostport)
		if n, perr := strconv.Atoi(port); hostport != to || err != nil || perr != nil || n < 1 || n > 65535 {
			t.Fatalf("%q: hostport %q", to, hostport)
		}
	})
}

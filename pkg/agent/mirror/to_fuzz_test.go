package mirror

import (
	"net"
	"strconv"
	"strings"
	"testing"
)

// FuzzParseTo: an accepted --to is either a Service (svc/NAME:PORT or service/NAME:PORT, PORT a
// number or a name) or a HOST:PORT with a port number in 1-65535, never both; a refused one is named
// in the refusal.
func FuzzParseTo(f *testing.F) {
	for _, s := range []string{"svc/web:80", "service/web:http", "127.0.0.1:8080", "[::1]:9", "web", "svc/:80", "host:0", "host:65536", "svc/a:b:c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, to string) {
		svc, hostport, err := parseTo(to)
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
			if to != "svc/"+svc && to != "service/"+svc {
				t.Fatalf("%q: svc %q", to, svc)
			}
			if name, port, err := net.SplitHostPort(svc); err != nil || name == "" || port == "" {
				t.Fatalf("%q: svc %q is not NAME:PORT", to, svc)
			}
			return
		}
		_, port, err := net.SplitHostPort(hostport)
		if n, perr := strconv.Atoi(port); hostport != to || err != nil || perr != nil || n < 1 || n > 65535 {
			t.Fatalf("%q: hostport %q", to, hostport)
		}
	})
}

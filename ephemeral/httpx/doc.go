// Package httpx is the HTTP layer of steal: it tells HTTP/1.x, h2c and other protocols apart from a
// connection's first bytes, and proxies HTTP one request (or HTTP/2 stream) at a time to either the
// developer's local process or the pod's own app, as a caller-supplied decision says.
//
// The agent redirects a port's connections to itself, then for each connection:
//
//	pk, err := httpx.Peek(conn, time.Second) // bytes read are in pk.Prefix, to be replayed
//	switch pk.Proto {
//	case httpx.ProtoHTTP1:
//		err = httpx.ServeHTTP1(ctx, conn, pk.Prefix, route)
//	case httpx.ProtoH2C:
//		err = httpx.ServeH2C(ctx, conn, pk.Prefix, route)
//	default: // not HTTP, or a server-first protocol that sent nothing within the timeout
//		err = httpx.ServeRaw(ctx, conn, pk.Prefix, route.App)
//	}
//
// Filtered steal sets route.Steal to a compiled Filter's Match (and, unless probes are to be stolen
// too, not probe.Rule's IsProbe of the head's ProbeRequest). Whole-port steal can do the same with a
// Steal that only checks for probes, or, cheaper, decide once per connection from pk.First and relay
// the connection raw with ServeRaw: kubelet probes open a connection per probe.
//
// HTTP/1 is proxied with its own small parser rather than net/http, so that heads and bodies are
// forwarded byte for byte (header case and order, chunk extensions, trailers) and so that keep-alive
// connections can carry requests for both sides without net/http's pooling in between. HTTP/2 is
// terminated on both ends with net/http's HTTP/2, because per-stream decisions need the frames of
// each stream sorted out anyway.
package httpx

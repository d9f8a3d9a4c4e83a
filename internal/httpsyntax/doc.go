// Package httpsyntax is HTTP/1 message syntax (RFC 9110, RFC 9112) written once for both sides:
// the agent's HTTP engine (ephemeral/httpx), which relays requests and must frame them exactly as
// the app behind it will, and the capture decoder (capture), which watches traffic. Where the RFCs
// let a recipient choose, it takes the strict reading that net/http, the app most often behind a
// steal, also takes: a message one side reads differently from the app is a message whose body the
// other side can take for the next request.
//
// It is a leaf: it imports only the standard library, so that both sides may import it.
package httpsyntax

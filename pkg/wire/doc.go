// Package wire is the protocol shared by the kubectl-trafficlab plugin and the trafficlab agent: the
// control channel (exec stdin/stdout), the data-connection preamble, the yamux tunnel carried by data
// connections, the per-stream open handshake, stream framing with optional compression, and UDP
// datagram framing. docs/protocol.md is the normative description; the golden tests in this package
// pin the bytes.
//
// The package must stay importable by the agent, which never links k8s.io/*: it depends only on the
// standard library, hashicorp/yamux, klauspost/compress and dlclark/regexp2 (the HTTP filter's
// patterns, compiled alike on both sides).
package wire

package mirror

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"

	"github.com/trafficlab/kubectl-trafficlab/capture"
	"github.com/trafficlab/kubectl-trafficlab/internal/httpsyntax"
)

// compare lists how the copy's answer differs from the pod's: the status, the chosen headers, gRPC's
// status (a trailer, or a header in a trailers-only answer), and the body. Bodies longer than the
// limit are compared on what both sides kept.
func compare(local *answer, pod *capture.Exchange, headers []string) []string {
	var diffs []string
	if local.status != pod.Status {
		diffs = append(diffs, fmt.Sprintf("status %d, pod %d", local.status, pod.Status))
	}
	resp := pod.Response
	if resp == nil {
		resp = &capture.Response{}
	}
	podHeader := headerOf(resp.Header)
	for _, name := range headers {
		l, p := strings.Join(local.header.Values(name), ", "), strings.Join(podHeader.Values(name), ", ")
		if l != p {
			diffs = append(diffs, fmt.Sprintf("header %s %q, pod %q", http.CanonicalHeaderKey(name), l, p))
		}
	}
	podTrailer := headerOf(resp.Trailer)
	if lg, pg := grpcStatus(local.header, local.trailer), grpcStatus(podHeader, podTrailer); lg != pg {
		diffs = append(diffs, fmt.Sprintf("grpc-status %q, pod %q", lg, pg))
	}
	lb, pb := local.body, resp.Body
	if !bytes.Equal(lb, pb) {
		if d := bodyDiff(lb, pb, resp.Truncated); d != "" {
			diffs = append(diffs, d)
		}
	}
	return diffs
}

func bodyDiff(l, p []byte, podTruncated bool) string {
	if podTruncated && len(l) >= len(p) && bytes.Equal(l[:len(p)], p) {
		return ""
	}
	i := 0
	for i < len(l) && i < len(p) && l[i] == p[i] {
		i++
	}
	return fmt.Sprintf("body differs from byte %d (%d B, pod %d B): %q, pod %q", i, len(l), len(p), excerpt(l, i), excerpt(p, i))
}

// excerpt is a few bytes around the first difference, enough to recognise it.
func excerpt(b []byte, at int) string {
	end := min(at+24, len(b))
	s := string(b[at:end])
	if end < len(b) {
		s += "..."
	}
	return s
}

func grpcStatus(h, t http.Header) string {
	if v := t.Get("Grpc-Status"); v != "" {
		return v
	}
	return h.Get("Grpc-Status")
}

func headerOf(lines []string) http.Header {
	h := http.Header{}
	for _, line := range lines {
		if name, value, ok := httpsyntax.SplitFieldLine(line); ok {
			h.Add(name, value)
		}
	}
	return h
}

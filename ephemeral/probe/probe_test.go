package probe

import "testing"

func TestRuleIsProbe(t *testing.T) {
	tests := []struct {
		name   string
		header []string
		want   bool
	}{
		{"kubelet httpGet", []string{"Host: 10.0.0.1:8080", "User-Agent: kube-probe/1.33", "Accept: */*"}, true},
		{"kubelet gRPC", []string{"user-agent: kube-probe/1.30 grpc-go/1.62.1"}, true},
		{"value case", []string{"User-Agent: Kube-Probe/1.33"}, true},
		{"name case", []string{"USER-AGENT: kube-probe/1.33"}, true},
		{"no space after the colon", []string{"User-Agent:kube-probe/1.33"}, true},
		{"white space around the value", []string{"User-Agent: \t kube-probe/1.33 \t"}, true},
		{"any of two user agents", []string{"User-Agent: curl/8.5.0", "User-Agent: kube-probe/1.33"}, true},
		{"curl", []string{"User-Agent: curl/8.5.0"}, false},
		{"no user agent", []string{"Accept: */*"}, false},
		{"no header", nil, false},
		{"empty user agent", []string{"User-Agent: "}, false},
		{"no version", []string{"User-Agent: kube-probe"}, false},
		{"in a comment", []string{"User-Agent: Mozilla/5.0 (kube-probe/1.33)"}, false},
		{"another field's value", []string{"X-Forwarded-For: kube-probe/1.33", "Referer: kube-probe/1.33"}, false},
		{"a longer name", []string{"X-User-Agent: kube-probe/1.33"}, false},
		{"a Unicode look-alike name", []string{"U\u017fer-Agent: kube-probe/1.33"}, false}, // long s: strings.EqualFold would match
		{"a line without a colon", []string{"User-Agent kube-probe/1.33"}, false},
	}
	for _, tt := range tests {
		if got := (Rule{}).IsProbe(Request{Path: "/healthz", Header: tt.header}); got != tt.want {
			t.Errorf("%s: IsProbe(%q) = %v, want %v", tt.name, tt.header, got, tt.want)
		}
	}
}

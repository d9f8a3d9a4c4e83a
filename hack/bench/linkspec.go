package main

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// linkSpec is one laptop link: the rate of the veth in each direction (tbf) and the round-trip time
// the proxy in front of the apiserver adds (toxiproxy's latency toxic).
type linkSpec struct {
	rate uint64 // bits per second, each direction
	rtt  time.Duration
}

// linkRateUnits are tc's decimal rate units (tc(8): "mbit" is 10^6 bits per second).
var linkRateUnits = []struct {
	name string
	bits uint64
}{{"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}}

const (
	minLinkRate = 1e6  // below this a transfer of a few seconds is too small to measure a forwarder
	maxLinkRate = 1e10 // far above what a veth carries on a 2-core machine
	maxLinkRTT  = 2 * time.Second
)

var linkRateRE = regexp.MustCompile(`^([0-9]{1,12})(kbit|mbit|gbit)$`)

// parseLinks parses --links: comma-separated RATE/RTT, e.g. "100mbit/30ms,1gbit/5ms".
func parseLinks(s string) ([]linkSpec, error) {
	var links []linkSpec
	for part := range strings.SplitSeq(s, ",") {
		l, err := parseLink(strings.TrimSpace(part))
		if err != nil {
			return nil, err
		}
		links = append(links, l)
	}
	return links, nil
}

// parseLink parses one RATE/RTT: RATE a whole number of kbit, mbit or gbit (tc's units), RTT a
// Go duration in whole milliseconds (toxiproxy's latency unit), from 0 to 2s.
func parseLink(s string) (linkSpec, error) {
	rate, rtt, ok := strings.Cut(s, "/")
	if !ok {
		return linkSpec{}, fmt.Errorf("--links: %q is not RATE/RTT (e.g. 100mbit/30ms)", s)
	}
	m := linkRateRE.FindStringSubmatch(rate)
	if m == nil {
		return linkSpec{}, fmt.Errorf("--links: rate %q is not a whole number of kbit, mbit or gbit", rate)
	}
	n, err := strconv.ParseUint(m[1], 10, 64)
	if err != nil {
		return linkSpec{}, fmt.Errorf("--links: rate %q: %w", rate, err)
	}
	var l linkSpec
	for _, u := range linkRateUnits {
		if u.name == m[2] {
			l.rate = n * u.bits // n < 10^12 and bits ≤ 10^9: no overflow
		}
	}
	if l.rate < minLinkRate || l.rate > maxLinkRate {
		return linkSpec{}, fmt.Errorf("--links: rate %q is outside 1mbit..10gbit", rate)
	}
	if l.rtt, err = time.ParseDuration(rtt); err != nil {
		return linkSpec{}, fmt.Errorf("--links: round-trip time %q: %w", rtt, err)
	}
	if l.rtt < 0 || l.rtt > maxLinkRTT || l.rtt%time.Millisecond != 0 {
		return linkSpec{}, fmt.Errorf("--links: round-trip time %q is not a whole number of milliseconds from 0 to 2s", rtt)
	}
	return l, nil
}

// String is the link as --links takes it, in the largest unit that keeps the rate whole.
func (l linkSpec) String() string {
	for _, u := range linkRateUnits {
		if l.rate%u.bits == 0 {
			return fmt.Sprintf("%d%s/%s", l.rate/u.bits, u.name, l.rtt)
		}
	}
	return fmt.Sprintf("%dbit/%s", l.rate, l.rtt)
}

// bytesPerSecond is the link's rate in bytes.
func (l linkSpec) bytesPerSecond() uint64 { return l.rate / 8 }

// transferBytes is the size of one bulk download on the link: what the link carries in the given
// time at its rate, in whole MiB, so that a transfer lasts long enough to measure on a narrow link and
// no longer than needed on a wide one.
func (l linkSpec) transferBytes(d time.Duration) int64 {
	b := int64(float64(l.bytesPerSecond()) * d.Seconds())
	return max(1, b>>20) << 20
}

// tbfArgs is the tc command (after "tc") that limits dev's egress to the link's rate. tbf shapes one
// direction; the bench puts one on each end of the veth, so each direction gets the rate.
//   - burst: the bucket holds 2 ms at the rate, and at least 64 KiB: a whole GSO packet of the veth
//     passes unsplit, and a timer that fires late on the busy machine does not cost rate.
//   - limit: the queue holds 50 ms at the rate on top of the burst. Local TCP senders stay far
//     below it (TCP small queues), so it costs no drop, and nothing but the bench uses the link.
func tbfArgs(dev string, l linkSpec) []string {
	bps := l.bytesPerSecond()
	burst := max(64<<10, bps*2/1000)
	limit := burst + bps*50/1000
	return []string{"qdisc", "add", "dev", dev, "root", "tbf",
		"rate", strconv.FormatUint(l.rate, 10) + "bit",
		"burst", strconv.FormatUint(burst, 10), "limit", strconv.FormatUint(limit, 10)}
}

// toxiproxyProxy is the body of toxiproxy's POST /proxies.
type toxiproxyProxy struct {
	Name     string `json:"name"`
	Listen   string `json:"listen"`
	Upstream string `json:"upstream"`
	Enabled  bool   `json:"enabled"`
}

// toxic is the body of toxiproxy's POST /proxies/{name}/toxics.
type toxic struct {
	Name       string         `json:"name"`
	Type       string         `json:"type"`
	Stream     string         `json:"stream"`
	Toxicity   float64        `json:"toxicity"`
	Attributes map[string]int `json:"attributes"`
}

// latencyToxics split the link's round-trip time over toxiproxy's two streams, in whole
// milliseconds: upstream (to the apiserver) gets the lower half, downstream the rest. toxiproxy
// delays each chunk by the latency from the moment it was read, so the delay does not limit the
// rate. A link without a round-trip time gets none. The bandwidth toxic is not used: it limits
// each connection on its own, where a link limits them all together (tbf on the veth does that).
func latencyToxics(rtt time.Duration) []toxic {
	if rtt == 0 {
		return nil
	}
	ms := int(rtt / time.Millisecond)
	up := ms / 2
	return []toxic{
		{Name: "latency_upstream", Type: "latency", Stream: "upstream", Toxicity: 1, Attributes: map[string]int{"latency": up, "jitter": 0}},
		{Name: "latency_downstream", Type: "latency", Stream: "downstream", Toxicity: 1, Attributes: map[string]int{"latency": ms - up, "jitter": 0}},
	}
}

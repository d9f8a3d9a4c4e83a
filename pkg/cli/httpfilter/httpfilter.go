// Package httpfilter holds the HTTP filter flags that steal, mirror and exec share, so that the same
// flag means the same thing, with the same refusal, in every verb.
package httpfilter

import (
	"errors"
	"fmt"

	"github.com/spf13/pflag"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// Flags are the filter flags as given.
type Flags struct {
	Headers []string
	Paths   []string
	Methods []string
	Match   string
}

// AddFlags registers the flags; verb says what a match does ("Steal", "Mirror").
func (f *Flags) AddFlags(fs *pflag.FlagSet, verb string) {
	if f.Match == "" {
		f.Match = wire.MatchAll
	}
	fs.StringArrayVar(&f.Headers, "header-filter", nil, verb+" only HTTP requests with a header line (\"Name: value\") matching this regular expression (case-insensitive, look-ahead allowed). Repeatable.")
	fs.StringArrayVar(&f.Paths, "path-filter", nil, verb+" only HTTP requests whose path and query match this regular expression. Repeatable.")
	fs.StringSliceVar(&f.Methods, "method", nil, verb+" only HTTP requests with one of these methods (comma separated).")
	fs.StringVar(&f.Match, "match", f.Match, "How filters combine: all (every filter must match) or any.")
}

// Filter is the wire filter the flags mean.
func (f *Flags) Filter() *wire.HTTPFilter {
	return &wire.HTTPFilter{Headers: f.Headers, Paths: f.Paths, Methods: f.Methods, Match: f.Match}
}

// Validate refuses a bad flag in one line that names it; no I/O.
func (f *Flags) Validate() error {
	if f.Match != wire.MatchAll && f.Match != wire.MatchAny {
		return fmt.Errorf("--match must be all or any, not %q", f.Match)
	}
	for _, p := range f.Headers {
		if err := (&wire.HTTPFilter{Headers: []string{p}}).Validate(); err != nil {
			return fmt.Errorf("--header-filter %q is not a valid regular expression: %w", p, errors.Unwrap(err))
		}
	}
	for _, p := range f.Paths {
		if err := (&wire.HTTPFilter{Paths: []string{p}}).Validate(); err != nil {
			return fmt.Errorf("--path-filter %q is not a valid regular expression: %w", p, errors.Unwrap(err))
		}
	}
	if err := (&wire.HTTPFilter{Methods: f.Methods}).Validate(); err != nil {
		return fmt.Errorf("--method: %w", err)
	}
	return nil
}

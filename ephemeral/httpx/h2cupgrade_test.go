package httpx

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c" //nolint:staticcheck // SA1019: the one server at hand that still takes h2c upgrades
)

// h2cHandler serves HTTP/1.1 and takes HTTP/1.1 upgrades to h2c. net/http's own unencrypted HTTP/2
// only does prior knowledge, so the deprecated x/net package is the one server at hand that still
// implements the upgrade the proxy must decline.
func h2cHandler(h http.Handler) http.Handler {
	return h2c.NewHandler(h, &http2.Server{}) //nolint:staticcheck // SA1019: the upgrade is what is under test
}

func whoServerHandler(t *testing.T, h http.Handler) string {
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return s.URL
}

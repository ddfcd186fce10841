package testutil

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// Scrape fetches a Prometheus page at url (http://…/metrics) and fails the
// test unless it holds every line of want, whole; it returns the page.
func Scrape(t testing.TB, url string, want ...string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range want {
		if !strings.Contains(string(body), w+"\n") {
			t.Errorf("%s lacks %s", url, w)
		}
	}
	return string(body)
}

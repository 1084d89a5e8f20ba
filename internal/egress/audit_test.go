package egress

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/bottle-dev/bottle/internal/audit"
	"github.com/bottle-dev/bottle/internal/testutil"
)

// TestFilterRecordsEachDecision: one record per connection, allowed or denied, with
// host, port, verdict, reason and byte counts.
func TestFilterRecordsEachDecision(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "plain ok") }))
	defer up.Close()
	port := portOf(t, up.Listener.Addr())
	cfg, _ := testFilterConfig(t, port)
	rec := &testutil.Recorder{}
	cfg.Recorder = rec
	addr := startFilter(t, cfg, nil)
	client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: addr})}}
	for _, u := range []string{fmt.Sprintf("http://api.example.test:%d/p?q=1", port), fmt.Sprintf("http://evil.invalid:%d/", port)} {
		resp, err := client.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	got := rec.Wait(t, 2)
	allow, deny := got[0].(audit.FilterDecision), got[1].(audit.FilterDecision)
	if allow.Verdict != "allow" || allow.Host != "api.example.test" || allow.Port != port || allow.Status != 200 || allow.BytesDown != 8 || allow.Method != "GET" {
		t.Errorf("allowed connection recorded as %+v", allow)
	}
	if deny.Verdict != "deny" || deny.Host != "evil.invalid" || deny.Status != http.StatusForbidden || !strings.Contains(deny.Reason, "not in the allowlist") {
		t.Errorf("denied connection recorded as %+v", deny)
	}
}

// TestProxyRecordsRequestsWithoutSecrets: route, method, the path without its query,
// status, and whether the credential was injected; never the credential or the query.
func TestProxyRecordsRequestsWithoutSecrets(t *testing.T) {
	ca := newTestCA(t)
	up := newTLSUpstream(t, ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }), "api.example.test")
	rec := &testutil.Recorder{}
	addr := startProxy(t, ProxyConfig{Recorder: rec, Routes: []Route{{Host: "api.example.test", TokenRef: "T", Upstream: up.URL, CAFile: ca.file(t)}}},
		map[string]string{"T": testToken}, nil)
	for _, p := range []string{"/api.example.test/v1/messages?key=query-secret", "/nowhere.example.test/x"} {
		resp, err := http.Post("http://"+addr+p, "text/plain", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	got := rec.Wait(t, 2)
	ok, miss := got[0].(audit.ProxyRequest), got[1].(audit.ProxyRequest)
	if ok.Route != "api.example.test" || ok.Method != "POST" || ok.Path != "/v1/messages" || ok.Status != 200 || !ok.Credential || ok.BytesOut != 2 {
		t.Errorf("forwarded request recorded as %+v", ok)
	}
	if miss.Route != "" || miss.Status != http.StatusNotFound || miss.Credential {
		t.Errorf("unrouted request recorded as %+v", miss)
	}
	if s := fmt.Sprintf("%+v", got); strings.Contains(s, testToken) || strings.Contains(s, "query-secret") {
		t.Errorf("records hold a secret or a query: %s", s)
	}
}

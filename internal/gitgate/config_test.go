package gitgate

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
)

func TestConfigJSON(t *testing.T) {
	const doc = `{
	  "listen": ":8080",
	  "ca_file": "",
	  "remotes": [
	    {"name": "origin", "url": "https://github.com/org/repo.git", "kind": "https", "token_env": "GH_TOKEN",
	     "push": [{"ref": "refs/heads/bottle/*"}, {"ref": "refs/heads/scratch/*", "force": true, "delete": true}]},
	    {"name": "infra", "url": "git@gitlab.example.com:org/infra.git", "ssh_key_env": "INFRA_KEY",
	     "known_hosts": "gitlab.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"}
	  ]
	}`
	var cfg Config
	dec := json.NewDecoder(strings.NewReader(doc))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := sshKeyPair(t)
	g, err := New(cfg, func(k string) string {
		return map[string]string{"GH_TOKEN": "tok", "INFRA_KEY": keyPEM}[k]
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(g.Remotes(), ","); got != "infra,origin" {
		t.Fatalf("remotes = %s", got)
	}
	if cfg.Listen != ":8080" || len(g.remotes["origin"].rules) != 2 {
		t.Fatalf("config not applied: %+v", g)
	}
	if r := g.remotes["infra"].rules; len(r) != 1 || r[0] != DefaultPushRules[0] {
		t.Fatalf("infra rules = %+v, want the default", r)
	}
}

func TestConfigErrors(t *testing.T) {
	keyPEM, _ := sshKeyPair(t)
	const secretToken = "s3cr3t-token-value"
	env := map[string]string{"TOK": secretToken, "KEY": keyPEM, "BADKEY": "not a key " + secretToken}
	kh := "host.example ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
	https := func(mod func(*Remote)) Config {
		r := Remote{Name: "origin", URL: "https://host.example/r.git", TokenEnv: "TOK"}
		mod(&r)
		return Config{Remotes: []Remote{r}}
	}
	ssh := func(mod func(*Remote)) Config {
		r := Remote{Name: "origin", URL: "ssh://git@host.example/r.git", SSHKeyEnv: "KEY", KnownHosts: kh}
		mod(&r)
		return Config{Remotes: []Remote{r}}
	}
	for name, tc := range map[string]struct {
		cfg  Config
		want string
	}{
		"no remotes":          {Config{}, "no remotes"},
		"bad name":            {https(func(r *Remote) { r.Name = "a/b" }), `"a/b"`},
		"name ends in .git":   {https(func(r *Remote) { r.Name = "x.git" }), "not ending in .git"},
		"duplicate":           {Config{Remotes: append(https(func(*Remote) {}).Remotes, https(func(*Remote) {}).Remotes...)}, "declared twice"},
		"missing token":       {https(func(r *Remote) { r.TokenEnv = "NOPE" }), "environment variable NOPE (token_env) is unset"},
		"no token_env":        {https(func(r *Remote) { r.TokenEnv = "" }), "token_env is required"},
		"token in url":        {https(func(r *Remote) { r.URL = "https://u:p@host.example/r.git" }), "user information"},
		"http url":            {https(func(r *Remote) { r.URL = "http://host.example/r.git" }), "unsupported scheme"},
		"kind mismatch":       {https(func(r *Remote) { r.Kind = "ssh" }), "does not match"},
		"bad kind":            {https(func(r *Remote) { r.Kind = "ftp" }), `kind "ftp"`},
		"bad rule":            {https(func(r *Remote) { r.Push = []PushRule{{Ref: "heads/x"}} }), "must start with refs/"},
		"read_only and rules": {https(func(r *Remote) { r.ReadOnly = true; r.Push = DefaultPushRules }), "read_only"},
		"empty push option":   {https(func(r *Remote) { r.PushOptions = []string{""} }), "push_options[0]"},
		"push option newline": {https(func(r *Remote) { r.PushOptions = []string{"ci.skip", "a\nb"} }), "push_options[1]"},
		"push option unicode": {https(func(r *Remote) { r.PushOptions = []string{"ci.skip\u00a0"} }), "push_options[0]"},
		"many push options":   {https(func(r *Remote) { r.PushOptions = slices.Repeat([]string{"o"}, 21) }), "at most 20"},
		"ssh key on https":    {https(func(r *Remote) { r.SSHKeyEnv = "KEY" }), "ssh remotes only"},
		"missing key":         {ssh(func(r *Remote) { r.SSHKeyEnv = "NOKEY" }), "environment variable NOKEY (ssh_key_env) is unset"},
		"bad key":             {ssh(func(r *Remote) { r.SSHKeyEnv = "BADKEY" }), "BADKEY (ssh_key_env) does not hold"},
		"no known_hosts":      {ssh(func(r *Remote) { r.KnownHosts = "" }), "known_hosts is required"},
		"bad known_hosts":     {ssh(func(r *Remote) { r.KnownHosts = "host.example garbage" }), "known_hosts"},
		"no user":             {ssh(func(r *Remote) { r.URL = "ssh://host.example/r.git" }), "names no user"},
		"ssh no path":         {ssh(func(r *Remote) { r.URL = "ssh://git@host.example" }), "ssh://user@host"},
		"token on ssh":        {ssh(func(r *Remote) { r.TokenEnv = "TOK" }), "https remotes only"},
		"scp garbage":         {ssh(func(r *Remote) { r.URL = "host.example:r.git" }), "write it as"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := New(tc.cfg, func(k string) string { return env[k] }, nil)
			if err == nil {
				t.Fatalf("no error, want %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q lacks %q", err, tc.want)
			}
			if strings.Contains(err.Error(), secretToken) || strings.Contains(err.Error(), "PRIVATE KEY") {
				t.Fatalf("error shows a credential: %v", err)
			}
		})
	}
}

func TestParseRemoteURL(t *testing.T) {
	for raw, want := range map[string]string{
		"ssh://git@host.example/org/r.git":      "ssh git host.example 22 /org/r.git",
		"ssh://git@host.example:2222/org/r.git": "ssh git host.example 2222 /org/r.git",
		"ssh://git@host.example/~me/r.git":      "ssh git host.example 22 ~me/r.git",
		"git@github.com:org/r.git":              "ssh git github.com 22 org/r.git",
		"git@[::1]:/srv/r.git":                  "ssh git ::1 22 /srv/r.git",
		"https://host.example:8443/org/r.git/":  "https https://host.example:8443/org/r.git",
	} {
		a, err := parseRemoteURL(raw)
		if err != nil {
			t.Errorf("%s: %v", raw, err)
			continue
		}
		got := a.kind + " " + a.user + " " + a.host + " " + a.port + " " + a.path
		if a.kind == kindHTTPS {
			got = a.kind + " " + a.base.String()
		}
		if got != want {
			t.Errorf("%s: got %q, want %q", raw, got, want)
		}
	}
}

func TestSSHCommandQuoting(t *testing.T) {
	if got := sshCommand("git-upload-pack", "/a b/it's!.git"); got != `git-upload-pack '/a b/it'\''s'\!'.git'` {
		t.Fatalf("sshCommand = %s", got)
	}
}

func TestGlobAndJudge(t *testing.T) {
	for _, tc := range []struct {
		pattern, name string
		want          bool
	}{
		{"refs/heads/bottle/*", "refs/heads/bottle/x", true},
		{"refs/heads/bottle/*", "refs/heads/bottle/a/b", true},
		{"refs/heads/bottle/*", "refs/heads/bottle", false},
		{"refs/heads/bottle/*", "refs/heads/bottlex", false},
		{"refs/heads/main", "refs/heads/main", true},
		{"refs/heads/main", "refs/heads/main2", false},
		{"refs/heads/*/wip", "refs/heads/a/b/wip", true},
		{"refs/heads/*/wip", "refs/heads/a/b/wipx", false},
	} {
		if got := globMatch(tc.pattern, tc.name); got != tc.want {
			t.Errorf("globMatch(%q, %q) = %v", tc.pattern, tc.name, got)
		}
	}
	rules := []PushRule{{Ref: "refs/heads/bottle/*"}, {Ref: "refs/heads/bottle/scratch/*", Force: true, Delete: true}}
	z, a, b := strings.Repeat("0", 40), strings.Repeat("a", 40), strings.Repeat("b", 40)
	for _, tc := range []struct {
		ref, old, new string
		allowed       bool
		needFF        bool
	}{
		{"refs/heads/bottle/x", z, a, true, false},
		{"refs/heads/bottle/x", a, b, true, true},
		{"refs/heads/bottle/x", a, z, false, false},
		{"refs/heads/bottle/scratch/y", a, b, true, false},
		{"refs/heads/bottle/scratch/y", a, z, true, false},
		{"refs/heads/main", z, a, false, false},
		{"refs/heads/bottle/../main", z, a, false, false},
		{"refs/heads/bottle/z\u00a0", z, a, false, false},
		{"refs/heads/bottle/x.lock/y", z, a, false, false},
		{"refs/heads/bottle/.x", z, a, false, false},
		{"refs/heads/bottle//x", z, a, false, false},
		{"refs/heads/bottle/x/", z, a, false, false},
		{"refs/heads/bottle/x.", z, a, false, false},
		{"refs/heads/bottle/x@{1}", z, a, false, false},
		{"refs/heads/bottle/a b", z, a, false, false},
		{"refs/heads/bottle/x\x7f", z, a, false, false},
		{"refs/heads/bottle/x.y-z_1@", z, a, true, false},
		{"refs/tags/v1", z, a, false, false},
	} {
		u := &refUpdate{Ref: tc.ref, Old: tc.old, New: tc.new, Action: map[bool]string{true: "delete", false: "update"}[tc.new == z]}
		if tc.old == z {
			u.Action = "create"
		}
		v := judge(rules, false, u)
		if v.allowed != tc.allowed || v.needFF != tc.needFF {
			t.Errorf("%s %s->%s: %+v", tc.ref, tc.old[:1], tc.new[:1], v)
		}
		if !v.allowed && v.reason == "" {
			t.Errorf("%s: refused without a reason", tc.ref)
		}
	}
	if v := judge(rules, true, &refUpdate{Ref: "refs/heads/bottle/x", Old: z, New: a, Action: "create"}); v.allowed {
		t.Error("read-only remote allowed a push")
	}
}

func TestParsePushRequest(t *testing.T) {
	a, b := strings.Repeat("a", 40), strings.Repeat("b", 40)
	body := string(pkt("shallow "+a+"\n")) +
		string(pkt(a+" "+b+" refs/heads/bottle/x\x00report-status side-band-64k push-options object-format=sha1\n")) +
		string(pkt(strings.Repeat("0", 40)+" "+b+" refs/heads/bottle/y\n")) + flushPkt +
		string(pkt("ci.skip\n")) + flushPkt
	req, err := parsePushRequest(strings.NewReader(body + "PACK..."))
	if err != nil {
		t.Fatal(err)
	}
	if len(req.updates) != 2 || req.updates[0].Action != "update" || req.updates[1].Action != "create" {
		t.Fatalf("updates = %+v", req.updates)
	}
	if req.packOffset != int64(len(body)) || !req.has("side-band-64k") || req.hashLen != 20 {
		t.Fatalf("packOffset %d (want %d), caps %v", req.packOffset, len(body), req.caps)
	}
	if len(req.options) != 1 || req.options[0] != "ci.skip" {
		t.Fatalf("options = %q", req.options)
	}
	// The ref is every byte after the second space, as receive-pack reads it; git's
	// own leading space before the capabilities is fine.
	nbsp := string(pkt(a+" "+b+" refs/heads/bottle/z\u00a0\x00 report-status side-band-64k\n")) + flushPkt
	if req, err := parsePushRequest(strings.NewReader(nbsp)); err != nil || req.updates[0].Ref != "refs/heads/bottle/z\u00a0" || !req.has("report-status") {
		t.Fatalf("ref with a trailing U+00A0: %v, %+v", err, req)
	}
	// Deletions only: no pack follows.
	del := string(pkt(a+" "+strings.Repeat("0", 40)+" refs/heads/bottle/x\x00report-status\n")) + flushPkt
	if req, err := parsePushRequest(strings.NewReader(del)); err != nil || req.packOffset != -1 {
		t.Fatalf("delete-only: %v, %+v", err, req)
	}
	signed := string(pkt("push-cert\x00report-status side-band-64k\n")) + flushPkt
	if req, err := parsePushRequest(strings.NewReader(signed)); err != errSignedPush || req == nil || !req.has("side-band-64k") {
		t.Fatalf("signed push: %v, %+v", err, req)
	}
	for name, bad := range map[string]string{
		"empty":       flushPkt,
		"signed push": string(pkt("push-cert\x00report-status\n")) + flushPkt,
		"short id":    string(pkt("abc "+b+" refs/heads/x\x00\n")) + flushPkt,
		"bad length":  "zzzz",
		"two spaces":  string(pkt(a+"  "+b+" refs/heads/x\n")) + flushPkt,
		"upper hex":   string(pkt(strings.ToUpper(a)+" "+b+" refs/heads/x\n")) + flushPkt,
		"tab":         string(pkt(a+"\t"+b+" refs/heads/x\n")) + flushPkt,
		"no ref":      string(pkt(a+" "+b+" \n")) + flushPkt,
		"late caps":   string(pkt(a+" "+b+" refs/heads/x\n")) + string(pkt(a+" "+b+" refs/heads/y\x00push-options\n")) + flushPkt,
		"caps tab":    string(pkt(a+" "+b+" refs/heads/x\x00report-status\tpush-options\n")) + flushPkt,
		"caps nbsp":   string(pkt(a+" "+b+" refs/heads/x\x00report-status\u00a0push-options\n")) + flushPkt,
		"bad shallow": string(pkt("shallow xyz\n")) + string(pkt(a+" "+b+" refs/heads/x\n")) + flushPkt,
		"bad format":  string(pkt(a+" "+b+" refs/heads/x\x00object-format=md5\n")) + flushPkt,
		"options cut": string(pkt(a+" "+b+" refs/heads/x\x00push-options\n")) + flushPkt + string(pkt("ci.skip\n")),
	} {
		if _, err := parsePushRequest(strings.NewReader(bad)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// TestReportStatusSideband checks the refusal answer's framing: band 2 messages, the
// report in band 1, a final flush.
func TestReportStatusSideband(t *testing.T) {
	req := &pushRequest{caps: map[string]string{"report-status": "", "side-band-64k": ""}, updates: []*refUpdate{
		{Ref: "refs/heads/main", Verdict: "refused", Reason: "ref not pushable"},
		{Ref: "refs/heads/bottle/x", Verdict: "refused", Reason: reasonOtherRefused},
	}}
	out := reportStatus(req, "origin")
	c := &reportCapture{buf: out}
	unpack, refs := c.upstreamReport(true)
	if unpack != "ok" || len(refs) != 2 || !strings.Contains(refs[0], "rejected: git-gate: ref not pushable") {
		t.Fatalf("report parsed as %q %q", unpack, refs)
	}
	if !bytes.Contains(out, []byte("\x02git-gate: push to remote \"origin\" refused")) || !bytes.HasSuffix(out, []byte(flushPkt)) {
		t.Fatalf("answer framing: %q", out)
	}
	req.caps = map[string]string{"report-status": ""}
	if _, refs := (&reportCapture{buf: reportStatus(req, "origin")}).upstreamReport(false); len(refs) != 2 {
		t.Fatalf("plain report: %q", refs)
	}
}

// TestGzipPushRefused: a gzip-encoded push request is decoded and judged.
func TestGzipPushRefused(t *testing.T) {
	f := newHTTPSFixture(t, nil)
	old := f.h.revParse(f.bare, "refs/heads/main")
	body := string(pkt(old+" "+strings.Repeat("1", 40)+" refs/heads/main\x00report-status\n")) + flushPkt + "PACK"
	var zb bytes.Buffer
	zw := gzip.NewWriter(&zb)
	_, _ = io.WriteString(zw, body)
	_ = zw.Close()
	req, _ := http.NewRequest(http.MethodPost, f.gateURL+"/origin.git/git-receive-pack", &zb)
	req.Header.Set("Content-Type", "application/x-git-receive-pack-request")
	req.Header.Set("Content-Encoding", "gzip")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(out), "ng refs/heads/main git-gate: ref not pushable") {
		t.Fatalf("answer: %q", out)
	}
	if got := f.h.revParse(f.bare, "refs/heads/main"); got != old {
		t.Fatalf("main moved to %s", got)
	}
}

// TestServeHTTPRouting covers the non-git paths.
func TestServeHTTPRouting(t *testing.T) {
	g, err := New(Config{Remotes: []Remote{{Name: "origin", URL: "https://host.example/r.git", TokenEnv: "T"}}},
		func(string) string { return "tok" }, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		method, path string
		status       int
	}{
		{http.MethodGet, "/healthz", http.StatusOK},
		{http.MethodGet, "/other.git/info/refs?service=git-upload-pack", http.StatusNotFound},
		{http.MethodGet, "/origin.git/info/refs", http.StatusForbidden}, // dumb HTTP
		{http.MethodGet, "/origin.git/objects/info/packs", http.StatusNotFound},
		{http.MethodGet, "/origin.git/git-upload-pack", http.StatusNotFound},
		{http.MethodGet, "/", http.StatusNotFound},
	} {
		rec := httptest.NewRecorder()
		g.ServeHTTP(rec, httptest.NewRequest(tc.method, tc.path, nil))
		if rec.Code != tc.status {
			t.Errorf("%s %s: %d, want %d", tc.method, tc.path, rec.Code, tc.status)
		}
	}
}

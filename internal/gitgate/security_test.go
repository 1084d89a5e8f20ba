package gitgate

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// input runs git with stdin and fails the test on error.
func (h *gitHarness) input(dir, stdin string, args ...string) string {
	h.t.Helper()
	cmd := exec.Command(h.git, args...)
	cmd.Dir, cmd.Env = dir, h.env
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		h.t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// refsUnder lists an upstream's refs starting with prefix, with their ids.
func (h *gitHarness) refsUnder(bare, prefix string) string {
	h.t.Helper()
	return h.run(bare, "for-each-ref", "--format=%(refname) %(objectname)", prefix)
}

// postPush sends a raw receive-pack request body and returns the answer.
func postPush(t *testing.T, client *http.Client, repoURL string, body []byte, auth bool) string {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, repoURL+"/git-receive-pack", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-git-receive-pack-request")
	req.Header.Set("User-Agent", "git/2.39.5")
	if auth {
		req.SetBasicAuth(DefaultTokenUser, testToken)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return string(out)
}

// upstreamClient talks straight to the HTTPS fixture's upstream (the control path
// around the gate).
func (f *upstreamFixture) upstreamClient(t *testing.T) *http.Client {
	t.Helper()
	pem, err := os.ReadFile(f.cfg.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
}

// TestGateCraftedLateParent: a commit whose header carries an extra "parent <old>"
// after the committer line. git counts only the parent lines right after "tree", so
// for git the push rewrites history; a gate that counted every parent line would take
// it for a fast-forward and let it through without force.
func TestGateCraftedLateParent(t *testing.T) {
	for name, newFixture := range map[string]func(*testing.T, []PushRule) *upstreamFixture{"https": newHTTPSFixture, "ssh": newSSHFixture} {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, nil) // no force anywhere
			h := f.h
			work := f.clone(t)
			old := h.revParse(f.bare, "refs/heads/bottle/existing")
			base := h.run(work, "rev-parse", "origin/bottle/existing~1")
			tree := h.run(work, "rev-parse", base+"^{tree}")
			crafted := h.input(work, fmt.Sprintf("tree %s\nparent %s\nauthor A <a@bottle.invalid> 1700000000 +0000\n"+
				"committer A <a@bottle.invalid> 1700000000 +0000\nparent %s\n\nrewrite\n", tree, base, old),
				"hash-object", "-t", "commit", "-w", "--literally", "--stdin")
			// Control: for git the crafted commit has one parent and does not descend from old.
			if got := h.run(work, "rev-list", "--parents", "-n1", crafted); got != crafted+" "+base {
				t.Fatalf("git reads the crafted commit's parents as %q, want only %s", got, base)
			}
			if _, err := h.try(work, "merge-base", "--is-ancestor", old, crafted); err == nil {
				t.Fatal("control: git says the crafted commit descends from bottle/existing")
			}

			out, err := h.try(work, "push", "--force", "origin", crafted+":refs/heads/bottle/existing")
			t.Logf("git output:\n%s", out)
			if err == nil {
				t.Fatalf("the crafted rewrite was pushed")
			}
			if !strings.Contains(out, "git-gate") || !strings.Contains(out, "malformed commit") {
				t.Errorf("git output does not explain the refusal:\n%s", out)
			}
			if got := h.revParse(f.bare, "refs/heads/bottle/existing"); got != old {
				t.Fatalf("upstream bottle/existing moved to %s", got)
			}
			// A well-formed fast-forward on top of old still passes.
			h.run(work, "checkout", "-q", "-b", "ff", "origin/bottle/existing")
			c := h.commit(work, "ff.txt", "ff\n")
			h.run(work, "push", "-q", "origin", "HEAD:refs/heads/bottle/existing")
			if got := h.revParse(f.bare, "refs/heads/bottle/existing"); got != c {
				t.Fatalf("fast-forward after the refusal: upstream has %s, want %s", got, c)
			}
		})
	}
}

// TestGateRefNameExactBytes: a ref name with a trailing no-break space (U+00A0). Split
// on Unicode whitespace it reads as refs/heads/bottle/z; git creates it with the extra
// bytes. The gate judges the bytes it forwards and takes printable ASCII ref names only.
func TestGateRefNameExactBytes(t *testing.T) {
	f := newHTTPSFixture(t, nil)
	h := f.h
	work := f.clone(t)
	main := h.revParse(f.bare, "refs/heads/main")
	zero := strings.Repeat("0", 40)
	pack := packObjects(t, h, work, "") // the commit is upstream already: an empty pack
	body := func(ref string) []byte {
		b := pkt(zero + " " + main + " " + ref + "\x00report-status agent=git/2.39.5\n")
		b = append(b, flushPkt...)
		return append(b, pack...)
	}
	for _, ref := range []string{"refs/heads/bottle/z\u00a0", "refs/heads/bottle/z\u00a0refs/heads/main", "refs/heads/bottle/z\u2003"} {
		out := postPush(t, http.DefaultClient, f.gateURL+"/origin.git", body(ref), false)
		t.Logf("gate answer for %q: %q", ref, out)
		if strings.Contains(out, "ok refs/") || !strings.Contains(out, "git-gate") {
			t.Errorf("push of %q not refused: %q", ref, out)
		}
	}
	if got := h.refsUnder(f.bare, "refs/heads/bottle/"); strings.Contains(got, "bottle/z") {
		t.Fatalf("a refused ref reached the upstream:\n%s", got)
	}
	// Control: the same request sent straight to the upstream creates the ref, so the
	// name is one git accepts and only the gate stopped it.
	out := postPush(t, f.upstreamClient(t), f.cfg.Remotes[0].URL, body("refs/heads/bottle/z\u00a0"), true)
	if got := h.revParse(f.bare, "refs/heads/bottle/z\u00a0"); got != main {
		t.Fatalf("control: the upstream did not create the ref (%q): %q", got, out)
	}
}

// TestGatePushOptionsRefused: push options reach a forge's server-side logic (some
// merge or skip CI with them), so the gate refuses them unless the remote lists them.
func TestGatePushOptionsRefused(t *testing.T) {
	for name, newFixture := range map[string]func(*testing.T, []PushRule) *upstreamFixture{"https": newHTTPSFixture, "ssh": newSSHFixture} {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, nil)
			h := f.h
			h.run(f.bare, "config", "receive.advertisePushOptions", "true")
			optLog := filepath.Join(t.TempDir(), "push-options.log")
			hook := "#!/bin/sh\nenv | grep '^GIT_PUSH_OPTION_[0-9]' | sort >> '" + optLog + "'\n"
			if err := os.WriteFile(filepath.Join(f.bare, "hooks", "pre-receive"), []byte(hook), 0o755); err != nil {
				t.Fatal(err)
			}
			readLog := func() string { b, _ := os.ReadFile(optLog); return string(b) }
			work := f.clone(t)
			h.run(work, "checkout", "-q", "-b", "o", "origin/bottle/existing")
			c := h.commit(work, "o.txt", "o\n")
			old := h.revParse(f.bare, "refs/heads/bottle/existing")

			// A remote that allows none does not advertise them, so git refuses -o itself.
			if adv := advertisement(t, f.gateURL); strings.Contains(adv, "push-options") {
				t.Errorf("push-options advertised for a remote that allows none: %q", adv)
			}
			out, err := h.try(work, "push", "-o", "ci.skip", "origin", "HEAD:refs/heads/bottle/existing")
			if err == nil || !strings.Contains(out, "push options") {
				t.Fatalf("push -o to a remote without push_options: err=%v\n%s", err, out)
			}
			// A raw request that sends them anyway is refused by the gate.
			pack := packObjects(t, h, work, c+"\n^"+old+"\n")
			raw := pkt(old + " " + c + " refs/heads/bottle/existing\x00report-status push-options agent=git/2.39.5\n")
			raw = append(append(append(raw, flushPkt...), pkt("ci.skip\n")...), flushPkt...)
			answer := postPush(t, http.DefaultClient, f.gateURL+"/origin.git", append(raw, pack...), false)
			if !strings.Contains(answer, "ng refs/heads/bottle/existing git-gate: push option") {
				t.Errorf("raw push with an option: %q", answer)
			}
			if got := h.revParse(f.bare, "refs/heads/bottle/existing"); got != old || readLog() != "" {
				t.Fatalf("a refused push reached the upstream: bottle/existing %s, options %q", got, readLog())
			}

			// A remote that lists ci.skip: exactly that option passes and reaches the upstream.
			cfg := f.cfg
			cfg.Remotes = append([]Remote(nil), cfg.Remotes...)
			cfg.Remotes[0].PushOptions = []string{"ci.skip"}
			url, logs := f.startNew(cfg)
			defer func() {
				if t.Failed() {
					t.Logf("gate log:\n%s", logs.String())
				}
			}()
			h.run(work, "remote", "add", "opts", url+"/origin.git")
			if adv := advertisement(t, url); !strings.Contains(adv, " push-options") {
				t.Errorf("push-options not advertised for a remote that allows ci.skip: %q", adv)
			}
			for _, opts := range [][]string{{"note=x"}, {"ci.skip", "note=x"}, {"ci.skip=1"}, {"CI.SKIP"}} {
				args := []string{"push"}
				for _, o := range opts {
					args = append(args, "-o", o)
				}
				out, err := h.try(work, append(args, "opts", "HEAD:refs/heads/bottle/existing")...)
				if err == nil || !strings.Contains(out, "push option") || !strings.Contains(out, "not allowed") {
					t.Errorf("push %v: err=%v\n%s", opts, err, out)
				}
			}
			if got := h.revParse(f.bare, "refs/heads/bottle/existing"); got != old || readLog() != "" {
				t.Fatalf("a refused push reached the upstream: bottle/existing %s, options %q", got, readLog())
			}
			h.run(work, "push", "-q", "-o", "ci.skip", "opts", "HEAD:refs/heads/bottle/existing")
			if got := h.revParse(f.bare, "refs/heads/bottle/existing"); got != c {
				t.Fatalf("upstream bottle/existing = %q, want %s", got, c)
			}
			if got := readLog(); got != "GIT_PUSH_OPTION_0=ci.skip\n" {
				t.Fatalf("the upstream's hook saw options %q, want ci.skip", got)
			}
		})
	}
}

// advertisement returns the capability list the gate advertises for pushes.
func advertisement(t *testing.T, gateURL string) string {
	t.Helper()
	resp, err := http.Get(gateURL + "/origin.git/info/refs?service=git-receive-pack")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	_, caps, ok := strings.Cut(string(body), "\x00")
	if !ok {
		t.Fatalf("no capability list in %q", body)
	}
	caps, _, _ = strings.Cut(caps, "\n")
	return caps
}

// TestWithoutCapability: only the capability word goes (with or without a value);
// the framing and every other line stay as they were.
func TestWithoutCapability(t *testing.T) {
	a, b, z := strings.Repeat("a", 40), strings.Repeat("b", 40), strings.Repeat("0", 40)
	head := append(pkt("# service=git-receive-pack\n"), flushPkt...)
	for name, tc := range map[string]struct{ in, want []byte }{
		"refs": {
			append(append(append(head, pkt("version 1\n")...), pkt(a+" refs/heads/main\x00report-status push-options push-options=x xpush-options agent=git/2\n")...), pkt(b+" refs/heads/x\n")...),
			append(append(append(head, pkt("version 1\n")...), pkt(a+" refs/heads/main\x00report-status xpush-options agent=git/2\n")...), pkt(b+" refs/heads/x\n")...),
		},
		"empty repository": {
			append(head, pkt(z+" capabilities^{}\x00push-options report-status")...),
			append(head, pkt(z+" capabilities^{}\x00report-status")...),
		},
		"error": {pkt("ERR no such repository\n"), pkt("ERR no such repository\n")},
	} {
		in := append(bytes.Clone(tc.in), flushPkt...)
		r, err := withoutCapability(bytes.NewReader(in), "push-options")
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got, _ := io.ReadAll(r)
		if want := append(bytes.Clone(tc.want), flushPkt...); !bytes.Equal(got, want) {
			t.Errorf("%s:\n got %q\nwant %q", name, got, want)
		}
	}
	if _, err := withoutCapability(strings.NewReader("00zz"), "push-options"); err == nil {
		t.Error("a malformed advertisement passed")
	}
}

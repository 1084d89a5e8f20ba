package gitgate

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
)

// refUpdate is one command of a receive-pack request.
type refUpdate struct {
	Ref     string `json:"ref"`
	Old     string `json:"old"`
	New     string `json:"new"`
	Action  string `json:"action"` // create, update, delete
	Verdict string `json:"verdict"`
	Reason  string `json:"reason,omitempty"`
}

// pushRequest is the parsed head of a receive-pack request body.
type pushRequest struct {
	updates []*refUpdate
	caps    map[string]string
	// packOffset is where the packfile starts in the body (-1: no pack expected).
	packOffset int64
	hashLen    int
}

func (p *pushRequest) has(capability string) bool {
	_, ok := p.caps[capability]
	return ok
}

// parsePushRequest reads the command list (and push options) from the start of a
// receive-pack request body. On error it still returns what it read (the client's
// capabilities decide how to frame the error answer).
func parsePushRequest(r io.Reader) (*pushRequest, error) {
	cr := &countingReader{r: bufio.NewReader(r)}
	req := &pushRequest{caps: map[string]string{}, packOffset: -1}
	first := true
	needPack := false
	for {
		line, err := readPkt(cr)
		if errors.Is(err, errFlush) {
			break
		}
		if err != nil {
			return req, fmt.Errorf("push command list: %w", err)
		}
		line = trimLF(line)
		if bytes.HasPrefix(line, []byte("shallow ")) {
			continue
		}
		if first {
			cmd, caps, _ := bytes.Cut(line, []byte{0})
			line = cmd
			for _, c := range strings.Fields(string(caps)) {
				k, v, _ := strings.Cut(c, "=")
				req.caps[k] = v
			}
			req.hashLen = 20
			if req.caps["object-format"] == "sha256" {
				req.hashLen = 32
			}
			first = false
			if string(line) == "push-cert" {
				return req, errSignedPush
			}
		}
		f := strings.Fields(string(line))
		if len(f) != 3 || len(f[0]) != 2*req.hashLen || len(f[1]) != 2*req.hashLen || !isHex(f[0]) || !isHex(f[1]) {
			return req, fmt.Errorf("push command list: malformed command %q", truncate(string(line), 200))
		}
		u := &refUpdate{Old: f[0], New: f[1], Ref: f[2]}
		switch {
		case isZeroID(u.New):
			u.Action = "delete"
		case isZeroID(u.Old):
			u.Action, needPack = "create", true
		default:
			u.Action, needPack = "update", true
		}
		req.updates = append(req.updates, u)
	}
	if len(req.updates) == 0 {
		return req, fmt.Errorf("push command list is empty")
	}
	if req.has("push-options") {
		for {
			_, err := readPkt(cr)
			if errors.Is(err, errFlush) {
				break
			}
			if err != nil {
				return req, fmt.Errorf("push options: %w", err)
			}
		}
	}
	if needPack {
		req.packOffset = cr.n
	}
	return req, nil
}

const reasonOtherRefused = "another ref in this push was refused"

var errSignedPush = errors.New("signed pushes (push certificates) are not supported through git-gate; push without --signed")

func isZeroID(id string) bool { return strings.Trim(id, "0") == "" }

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// ruleVerdict is what the push rules say about one command.
type ruleVerdict struct {
	allowed bool
	needFF  bool
	reason  string
}

// judge applies the remote's push rules to one command (without the fast-forward
// check, which needs the pack).
func judge(rules []PushRule, readOnly bool, u *refUpdate) ruleVerdict {
	if readOnly {
		return ruleVerdict{reason: "remote is read-only"}
	}
	if err := checkRefName(u.Ref); err != nil {
		return ruleVerdict{reason: "invalid ref name"}
	}
	var match, force, del bool
	for _, r := range rules {
		if globMatch(r.Ref, u.Ref) {
			match = true
			force = force || r.Force
			del = del || r.Delete
		}
	}
	if !match {
		return ruleVerdict{reason: "ref not pushable (allowed: " + patternList(rules) + ")"}
	}
	switch u.Action {
	case "delete":
		if !del {
			return ruleVerdict{reason: "deleting this ref is not allowed"}
		}
	case "update":
		if !force {
			return ruleVerdict{allowed: true, needFF: true}
		}
	}
	return ruleVerdict{allowed: true}
}

func patternList(rules []PushRule) string {
	ps := make([]string, len(rules))
	for i, r := range rules {
		ps[i] = r.Ref
	}
	return strings.Join(ps, ", ")
}

// reportStatus builds a receive-pack response refusing the push: "unpack ok" and one
// "ng" line per command, inside side-band 1 when the client asked for side-band, with
// the reasons also printed as "remote:" lines.
func reportStatus(req *pushRequest, remote string) []byte {
	var status []byte
	status = appendPkt(status, []byte("unpack ok\n"))
	for _, u := range req.updates {
		reason := u.Reason
		if reason == "" {
			reason = reasonOtherRefused
		}
		status = appendPkt(status, []byte("ng "+u.Ref+" git-gate: "+reason+"\n"))
	}
	status = append(status, flushPkt...)
	band := ""
	switch {
	case req.has("side-band-64k"):
		band = "64k"
	case req.has("side-band"):
		band = "small"
	}
	if band == "" {
		return status
	}
	chunk := maxPktPayload - 1
	if band == "small" {
		chunk = 999 - 4 - 1
	}
	// Printed as "remote: ..." even under --quiet, like a hook's refusal.
	var out []byte
	for _, u := range req.updates {
		if u.Verdict == "refused" && u.Reason != reasonOtherRefused {
			msg := fmt.Sprintf("git-gate: push to remote %q refused: %s: %s\n", remote, u.Ref, u.Reason)
			out = appendPkt(out, append([]byte{2}, truncate(msg, chunk-1)...))
		}
	}
	for len(status) > 0 {
		n := min(len(status), chunk)
		out = appendPkt(out, append([]byte{1}, status[:n]...))
		status = status[n:]
	}
	return append(out, flushPkt...)
}

// reportCapture keeps the start of an upstream receive-pack answer so the log can
// say what the upstream did with each ref.
type reportCapture struct {
	buf []byte
}

const maxReportCapture = 1 << 20

func (c *reportCapture) Write(p []byte) (int, error) {
	if room := maxReportCapture - len(c.buf); room > 0 {
		c.buf = append(c.buf, p[:min(len(p), room)]...)
	}
	return len(p), nil
}

// upstreamReport parses the captured report-status ("unpack ok", "ok <ref>",
// "ng <ref> <reason>"), demultiplexing side-band 1 when used. It returns one line per
// ref, e.g. "refs/heads/bottle/x: ok", and the unpack status.
func (c *reportCapture) upstreamReport(sideband bool) (unpack string, refs []string) {
	report := c.buf
	if sideband {
		var inner []byte
		r := bytes.NewReader(c.buf)
		for {
			p, err := readPkt(r)
			if errors.Is(err, errFlush) || err != nil {
				break
			}
			if len(p) > 0 && p[0] == 1 {
				inner = append(inner, p[1:]...)
			}
		}
		report = inner
	}
	r := bytes.NewReader(report)
	for {
		p, err := readPkt(r)
		if err != nil {
			break
		}
		line := string(trimLF(p))
		switch {
		case strings.HasPrefix(line, "unpack "):
			unpack = strings.TrimPrefix(line, "unpack ")
		case strings.HasPrefix(line, "ok "):
			refs = appendCapped(refs, strings.TrimPrefix(line, "ok ")+": ok")
		case strings.HasPrefix(line, "ng "):
			ref, reason, _ := strings.Cut(strings.TrimPrefix(line, "ng "), " ")
			refs = appendCapped(refs, ref+": rejected: "+reason)
		}
	}
	return unpack, refs
}

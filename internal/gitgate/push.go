package gitgate

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
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
	// options are the push options (git push -o) sent after the commands.
	options []string
	// packOffset is where the packfile starts in the body (-1: no pack expected).
	packOffset int64
	hashLen    int
}

func (p *pushRequest) has(capability string) bool {
	_, ok := p.caps[capability]
	return ok
}

// maxPushOptions caps the push options read from one request.
const maxPushOptions = 100

// parsePushRequest reads the command list and push options from the start of a
// receive-pack request body, byte for byte as receive-pack does, so the gate judges
// exactly what the upstream will act on: "<old> SP <new> SP <ref>" per pkt-line, the
// capability list after a NUL on the first command only, single-space separated.
// Anything else is refused rather than interpreted. On error it still returns what
// it read (the client's capabilities decide how to frame the error answer).
func parsePushRequest(r io.Reader) (*pushRequest, error) {
	cr := &countingReader{r: bufio.NewReader(r)}
	req := &pushRequest{caps: map[string]string{}, packOffset: -1, hashLen: 20}
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
		if id, ok := bytes.CutPrefix(line, []byte("shallow ")); ok {
			if (len(id) != 40 && len(id) != 64) || !isHex(string(id)) {
				return req, fmt.Errorf("push command list: malformed shallow line %q", truncate(string(line), 200))
			}
			continue
		}
		cmd, caps, hasCaps := bytes.Cut(line, []byte{0})
		if hasCaps {
			if len(req.updates) > 0 {
				return req, fmt.Errorf("push command list: capabilities after the first command")
			}
			if err := req.parseCaps(string(caps)); err != nil {
				return req, err
			}
			if string(cmd) == "push-cert" {
				return req, errSignedPush
			}
		}
		u, err := parseCommand(string(cmd), req.hashLen)
		if err != nil {
			return req, err
		}
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
			opt, err := readPkt(cr)
			if errors.Is(err, errFlush) {
				break
			}
			if err != nil {
				return req, fmt.Errorf("push options: %w", err)
			}
			if len(req.options) == maxPushOptions {
				return req, fmt.Errorf("more than %d push options; send fewer", maxPushOptions)
			}
			req.options = append(req.options, string(trimLF(opt)))
		}
	}
	if needPack {
		req.packOffset = cr.n
	}
	return req, nil
}

// parseCaps reads the capability list. receive-pack finds a capability as a token
// bounded by start, end, '=' or whitespace; words of printable ASCII separated by
// spaces (as git sends them, after a leading space) leave no room for a different
// reading. Every word is recorded even on error, so the error answer is framed in the
// side-band the client asked for.
func (p *pushRequest) parseCaps(list string) error {
	bad := false
	for _, c := range strings.Split(list, " ") {
		if strings.ContainsFunc(c, func(r rune) bool { return r <= ' ' || r > '~' }) {
			bad = true
		} else if c != "" {
			k, v, _ := strings.Cut(c, "=")
			p.caps[k] = v
		}
	}
	if bad {
		return fmt.Errorf("push capability list %q is malformed: want words of printable ASCII separated by spaces", truncate(list, 200))
	}
	switch p.caps["object-format"] {
	case "", "sha1":
	case "sha256":
		p.hashLen = 32
	default:
		return fmt.Errorf("push capability list: unknown object-format %q", p.caps["object-format"])
	}
	return nil
}

// parseCommand splits "<old> SP <new> SP <ref>" as receive-pack does: the ref is every
// byte after the second space (checkRefName judges it later).
func parseCommand(line string, hashLen int) (*refUpdate, error) {
	n := 2 * hashLen
	if len(line) < 2*n+3 || line[n] != ' ' || line[2*n+1] != ' ' || !isHex(line[:n]) || !isHex(line[n+1:2*n+1]) {
		return nil, fmt.Errorf("push command list: malformed command %q; want <old-id> <new-id> <ref>", truncate(line, 200))
	}
	return &refUpdate{Old: line[:n], New: line[n+1 : 2*n+1], Ref: line[2*n+2:]}, nil
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
		return ruleVerdict{reason: "invalid ref name: " + err.Error()}
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

// optionsVerdict says why the push options of req are refused ("" when they pass):
// only options listed for the remote pass, each compared as exact bytes.
func optionsVerdict(allowed []string, req *pushRequest) string {
	if !req.has("push-options") {
		return ""
	}
	if len(allowed) == 0 {
		return "push options are not allowed for this remote; push without -o, or list the option in the remote's push_options in the manifest"
	}
	for _, o := range req.options {
		if !slices.Contains(allowed, o) {
			return fmt.Sprintf("push option %q is not allowed (allowed: %s); push without it, or add it to the remote's push_options in the manifest", truncate(o, 100), strings.Join(allowed, ", "))
		}
	}
	return ""
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

package supervise

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/bottle-dev/bottle/internal/audit"
	"github.com/bottle-dev/bottle/internal/egress"
	"github.com/bottle-dev/bottle/internal/state"
)

// Config configures the supervise sidecar.
type Config struct {
	// Listen is the TCP address it serves the agent on (internal network only).
	Listen string `json:"listen"`
	// ProposalsDir is where it writes proposals (Dirs.Proposals, mounted writable).
	ProposalsDir string `json:"proposals_dir"`
	// HostDir holds the capabilities and decisions (Dirs.Host, mounted read-only).
	HostDir string `json:"host_dir"`
	// Timeout bounds how long a proposal waits for a person; then it is denied
	// (default DefaultTimeout), so a headless run never hangs.
	Timeout egress.Duration `json:"timeout,omitempty"`
	// Recorder receives one audit record per proposal with its answer (nil: none).
	Recorder audit.Recorder `json:"-"`
}

// DefaultTimeout is how long a proposal waits for a decision by default.
const DefaultTimeout = 10 * time.Minute

// MaxApplying is how long past its deadline a proposal waits while the host applies an
// approval: more than an image build's default timeout and the agent's restart.
const MaxApplying = 30 * time.Minute

// decisionPoll is how often a waiting proposal looks for its decision.
const decisionPoll = 200 * time.Millisecond

// Paths the agent uses.
const (
	MCPPath          = "/mcp"
	CapabilitiesPath = "/v1/capabilities"
	ProposePath      = "/v1/proposals"
)

// Server is the supervise sidecar.
type Server struct {
	cfg     Config
	timeout time.Duration
	log     *slog.Logger
	mu      sync.Mutex // numbers proposals
	now     func() time.Time
}

// NewServer checks cfg and returns the server.
func NewServer(cfg Config, logger *slog.Logger) (*Server, error) {
	if cfg.ProposalsDir == "" || cfg.HostDir == "" {
		return nil, fmt.Errorf("supervise config: proposals_dir and host_dir are required")
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("supervise config: negative timeout %v", time.Duration(cfg.Timeout))
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	t := time.Duration(cfg.Timeout)
	if t == 0 {
		t = DefaultTimeout
	}
	return &Server{cfg: cfg, timeout: t, log: logger, now: time.Now}, nil
}

// Answer is what a propose call returns to the agent.
type Answer struct {
	N        int    `json:"n" jsonschema:"the proposal's number"`
	Decision string `json:"decision" jsonschema:"approved or denied"`
	Reason   string `json:"reason,omitempty" jsonschema:"the person's reason"`
	Until    string `json:"until,omitempty" jsonschema:"when an approved grant ends (RFC 3339)"`
}

// Request is a proposal as the agent sends it (plain JSON; MCP tools fill the same).
type Request struct {
	Kind          string            `json:"kind"`
	Justification string            `json:"justification"`
	Allowlist     *AllowlistChange  `json:"allowlist,omitempty"`
	Route         *RouteChange      `json:"route,omitempty"`
	GitRule       *GitRuleChange    `json:"git_rule,omitempty"`
	Dockerfile    *DockerfileChange `json:"dockerfile,omitempty"`
}

// Propose validates r, writes it for the host and waits for the decision (bounded by
// the timeout and ctx). A proposal that is not valid is refused with an error and
// written nowhere.
func (s *Server) Propose(ctx context.Context, r Request) (Answer, error) {
	caps, err := readCapabilities(filepath.Join(s.cfg.HostDir, CapabilitiesFile))
	if err != nil {
		return Answer{}, err
	}
	now := s.now().UTC()
	p := Proposal{N: 1, Kind: r.Kind, Justification: r.Justification, Created: now, Deadline: now.Add(s.timeout),
		Allowlist: r.Allowlist, Route: r.Route, GitRule: r.GitRule, Dockerfile: r.Dockerfile}
	if err := p.Validate(); err != nil {
		return Answer{}, s.refuse(&p, err)
	}
	if p.Dockerfile != nil {
		if err := CheckDockerfile(p.Dockerfile.Content, caps.AgentImage); err != nil {
			return Answer{}, s.refuse(&p, err)
		}
	}
	if err := s.write(&p); err != nil {
		return Answer{}, err
	}
	s.log.Info("proposal", "n", p.N, "kind", p.Kind)
	dec := s.wait(ctx, p.N, p.Deadline)
	s.log.Info("decision", "n", p.N, "decision", dec.Decision, "reason", dec.Reason)
	s.record(&p, dec.N, dec.Decision, dec.Reason)
	return dec, nil
}

// refuse records an invalid proposal (never shown to a person) and returns the refusal.
func (s *Server) refuse(p *Proposal, err error) error {
	s.record(p, 0, "refused", err.Error())
	return fmt.Errorf("refused: %w", err)
}

// record hands a proposal and its answer to the audit trail (the writer bounds the
// agent's strings).
func (s *Server) record(p *Proposal, n int, outcome, reason string) {
	if s.cfg.Recorder == nil {
		return
	}
	s.cfg.Recorder.Record(audit.Proposal{N: n, Change: p.Kind, Justification: p.Justification, Outcome: outcome, Reason: reason})
}

// write numbers p after the proposals already there and writes it atomically.
func (s *Server) write(p *Proposal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	des, err := os.ReadDir(s.cfg.ProposalsDir)
	if err != nil {
		return fmt.Errorf("proposals: %w", err)
	}
	for _, de := range des {
		if n, ok := proposalNumber(de.Name()); ok && n >= p.N {
			p.N = n + 1
		}
	}
	data, err := json.Marshal(p)
	if err != nil {
		return err
	}
	if len(data) > MaxProposalBytes {
		return fmt.Errorf("refused: the proposal is larger than %d bytes", MaxProposalBytes)
	}
	return state.WriteFile(filepath.Join(s.cfg.ProposalsDir, fmt.Sprintf("%d.json", p.N)), data, 0o644)
}

func (s *Server) wait(ctx context.Context, n int, deadline time.Time) Answer {
	t := time.NewTicker(decisionPoll)
	defer t.Stop()
	path, applying := decisionPath(s.cfg.HostDir, n), applyingPath(s.cfg.HostDir, n)
	for {
		if data, err := os.ReadFile(path); err == nil {
			var d Decision
			if err := json.Unmarshal(data, &d); err == nil {
				a := Answer{N: n, Decision: d.Decision, Reason: d.Reason}
				if !d.Until.IsZero() {
					a.Until = d.Until.Format(time.RFC3339)
				}
				return a
			}
		}
		if !s.now().Before(deadline) && !s.applying(applying, deadline) {
			return Answer{N: n, Decision: DecisionDenied, Reason: fmt.Sprintf("no decision within %v: denied by default", s.timeout)}
		}
		select {
		case <-ctx.Done():
			return Answer{N: n, Decision: DecisionDenied, Reason: "the request ended before a decision"}
		case <-t.C:
		}
	}
}

// applying reports whether the host is applying an approval of the proposal past its
// deadline, bounded by MaxApplying (a host killed while applying leaves the marker).
func (s *Server) applying(marker string, deadline time.Time) bool {
	_, err := os.Stat(marker)
	return err == nil && s.now().Before(deadline.Add(MaxApplying))
}

// Capabilities returns what the agent may use now (no secrets: see Capabilities).
func (s *Server) Capabilities() (*CapabilitiesView, error) {
	c, err := readCapabilities(filepath.Join(s.cfg.HostDir, CapabilitiesFile))
	if err != nil {
		return nil, err
	}
	v := &CapabilitiesView{Allowlist: c.Effective(s.now()), Routes: c.Routes, Git: c.GitInForce(), AgentImage: c.AgentImage, Dockerfile: c.Dockerfile}
	for _, g := range c.Changes.Add {
		if !g.Until.IsZero() && s.now().Before(g.Until) {
			v.Expiring = append(v.Expiring, ExpiringEntry{Pattern: g.Pattern, Until: g.Until.Format(time.RFC3339)})
		}
	}
	return v, nil
}

// CapabilitiesView is the agent's view of its capabilities.
type CapabilitiesView struct {
	Allowlist  []string        `json:"allowlist" jsonschema:"hosts reachable through the proxy"`
	Expiring   []ExpiringEntry `json:"expiring,omitempty" jsonschema:"allowlist entries granted for a limited time"`
	Routes     []RouteInfo     `json:"routes,omitempty" jsonschema:"hosts whose credential the egress-proxy injects"`
	Git        []GitInfo       `json:"git,omitempty" jsonschema:"git remotes and where pushes are allowed"`
	AgentImage string          `json:"agent_image"`
	Dockerfile string          `json:"dockerfile" jsonschema:"the agent image's Dockerfile; a proposed one must build FROM agent_image"`
}

// ExpiringEntry is a granted allowlist entry with its end.
type ExpiringEntry struct {
	Pattern string `json:"pattern"`
	Until   string `json:"until"`
}

// Handler serves MCP (Streamable HTTP) at MCPPath and the same as plain JSON.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	srv := s.mcpServer()
	mux.Handle(MCPPath, mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, &mcp.StreamableHTTPOptions{Stateless: true, JSONResponse: true}))
	mux.HandleFunc("GET "+CapabilitiesPath, func(w http.ResponseWriter, r *http.Request) {
		v, err := s.Capabilities()
		if err != nil {
			jsonError(w, http.StatusInternalServerError, err)
			return
		}
		writeJSON(w, http.StatusOK, v)
	})
	mux.HandleFunc("POST "+ProposePath, func(w http.ResponseWriter, r *http.Request) {
		var req Request
		dec := json.NewDecoder(io.LimitReader(r.Body, MaxProposalBytes+1))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			jsonError(w, http.StatusBadRequest, fmt.Errorf("refused: malformed proposal: %w", err))
			return
		}
		a, err := s.Propose(r.Context(), req)
		if err != nil {
			jsonError(w, http.StatusBadRequest, err)
			return
		}
		writeJSON(w, http.StatusOK, a)
	})
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func jsonError(w http.ResponseWriter, status int, err error) {
	writeJSON(w, status, map[string]string{"error": err.Error()})
}

// Tool names.
const (
	ToolCapabilities      = "current_capabilities"
	ToolProposeAllowlist  = "propose_allowlist_change"
	ToolProposeRoute      = "propose_route_change"
	ToolProposeGitRule    = "propose_git_rule_change"
	ToolProposeDockerfile = "propose_dockerfile_change"
	waitNote              = " The call waits until a person decides (denied if nobody does in time) and returns the decision with the person's reason."
)

type justified struct {
	Justification string `json:"justification" jsonschema:"why the change is needed, for the person who decides"`
}

func (s *Server) mcpServer() *mcp.Server {
	srv := mcp.NewServer(&mcp.Implementation{Name: "bottle-supervise", Version: "1"}, nil)
	mcp.AddTool(srv, &mcp.Tool{Name: ToolCapabilities, Description: "Show what this sandbox may use now: the network allowlist, credential routes (hosts and headers), git remotes with push rules, and the agent image's Dockerfile."},
		func(ctx context.Context, _ *mcp.CallToolRequest, _ struct{}) (*mcp.CallToolResult, *CapabilitiesView, error) {
			v, err := s.Capabilities()
			return nil, v, err
		})
	type allowIn struct {
		justified
		AllowlistChange
	}
	addPropose(srv, s, ToolProposeAllowlist, "Ask a person to add hosts to (or remove them from) the network allowlist.",
		func(in allowIn) Request {
			return Request{Kind: KindAllowlist, Justification: in.Justification, Allowlist: &in.AllowlistChange}
		})
	type routeIn struct {
		justified
		RouteChange
	}
	addPropose(srv, s, ToolProposeRoute, "Ask a person for a credential route: the egress-proxy injects the credential (held by the host, never by you) into requests to the host.",
		func(in routeIn) Request {
			return Request{Kind: KindRoute, Justification: in.Justification, Route: &in.RouteChange}
		})
	type gitIn struct {
		justified
		GitRuleChange
	}
	addPropose(srv, s, ToolProposeGitRule, "Ask a person to allow pushes to more refs of a git remote.",
		func(in gitIn) Request {
			return Request{Kind: KindGitRule, Justification: in.Justification, GitRule: &in.GitRuleChange}
		})
	type dockerIn struct {
		justified
		DockerfileChange
	}
	addPropose(srv, s, ToolProposeDockerfile, "Ask a person to rebuild your image from a new Dockerfile (the whole file; it must build FROM the current agent image, see current_capabilities). Approved, you are restarted on the new image with your workspace kept.",
		func(in dockerIn) Request {
			return Request{Kind: KindDockerfile, Justification: in.Justification, Dockerfile: &in.DockerfileChange}
		})
	return srv
}

// addPropose adds one propose tool: its input, as the model fills it, makes the request.
func addPropose[In any](srv *mcp.Server, s *Server, name, description string, request func(In) Request) {
	mcp.AddTool(srv, &mcp.Tool{Name: name, Description: description + waitNote},
		func(ctx context.Context, _ *mcp.CallToolRequest, in In) (*mcp.CallToolResult, Answer, error) {
			return s.tool(ctx, request(in))
		})
}

// tool answers a propose tool: a refusal is a tool error the model reads, not a
// protocol error.
func (s *Server) tool(ctx context.Context, r Request) (*mcp.CallToolResult, Answer, error) {
	a, err := s.Propose(ctx, r)
	if err != nil {
		return &mcp.CallToolResult{IsError: true, Content: []mcp.Content{&mcp.TextContent{Text: err.Error()}}}, Answer{}, nil
	}
	return nil, a, nil
}

// Serve serves on ln until ctx ends.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 30 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
	}()
	s.log.Info("supervise listening", "addr", ln.Addr().String(), "timeout", s.timeout.String())
	if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("supervise: %w", err)
	}
	return nil
}

package gitgate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// upstream is one real repository behind the gate.
type upstream interface {
	// advertise returns the smart-HTTP info/refs body for service.
	advertise(ctx context.Context, service, gitProtocol, userAgent string) (io.ReadCloser, error)
	// rpc sends one request body for service and returns the response body stream.
	rpc(ctx context.Context, service, gitProtocol, userAgent string, body io.Reader, size int64) (io.ReadCloser, error)
}

// httpsUpstream forwards smart-HTTP requests to an HTTPS remote with the token.
type httpsUpstream struct {
	base     *url.URL
	auth     string // secret: "Basic ..."
	tokenEnv string
	client   *http.Client
	display  string
}

func newHTTPSUpstream(addr remoteAddr, auth, tokenEnv string, cfg *Config) (*httpsUpstream, error) {
	tc, err := tlsConfig(cfg.CAFile)
	if err != nil {
		return nil, err
	}
	dial := cfg.Dial
	if dial == nil {
		dial = (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	}
	tr := &http.Transport{
		Proxy:                 nil, // the gate's network has a direct route
		DialContext:           dial,
		TLSClientConfig:       tc,
		ForceAttemptHTTP2:     true,
		TLSHandshakeTimeout:   15 * time.Second,
		MaxIdleConnsPerHost:   8,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
	}
	return &httpsUpstream{
		base:     addr.base,
		auth:     auth,
		tokenEnv: tokenEnv,
		display:  addr.display(),
		client: &http.Client{
			Transport: tr,
			// A redirect would take the credential somewhere the config does not name.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}, nil
}

func (u *httpsUpstream) endpoint(suffix string) string {
	e := *u.base
	e.Path += suffix
	return e.String()
}

func (u *httpsUpstream) do(req *http.Request, gitProtocol, userAgent, wantType string) (io.ReadCloser, error) {
	req.Header.Set("Authorization", u.auth)
	if gitProtocol != "" {
		req.Header.Set("Git-Protocol", gitProtocol)
	}
	// Forges serve the smart protocol only to user agents that start with "git/".
	if !strings.HasPrefix(userAgent, "git/") {
		userAgent = "git/2.0 (bottle git-gate)"
	}
	req.Header.Set("User-Agent", userAgent)
	resp, err := u.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the URL is named once, by the caller
		}
		return nil, fmt.Errorf("upstream %s: %w", u.display, err)
	}
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		_ = resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden:
			return nil, fmt.Errorf("upstream %s refused the token from %s (HTTP %d); check that it is valid and may access this repository", u.display, u.tokenEnv, resp.StatusCode)
		case http.StatusNotFound:
			return nil, fmt.Errorf("upstream %s: repository not found (HTTP 404), or the token from %s cannot see it", u.display, u.tokenEnv)
		case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther, http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
			return nil, fmt.Errorf("upstream %s redirects to %s; put the new address in the remote's url", u.display, resp.Header.Get("Location"))
		}
		return nil, fmt.Errorf("upstream %s answered HTTP %d", u.display, resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); ct != wantType {
		_ = resp.Body.Close()
		return nil, fmt.Errorf("upstream %s answered %q instead of %q; is it a git smart-HTTP server?", u.display, ct, wantType)
	}
	return resp.Body, nil
}

func (u *httpsUpstream) advertise(ctx context.Context, service, gitProtocol, userAgent string) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.endpoint("/info/refs")+"?service="+service, nil)
	if err != nil {
		return nil, err
	}
	return u.do(req, gitProtocol, userAgent, "application/x-"+service+"-advertisement")
}

func (u *httpsUpstream) rpc(ctx context.Context, service, gitProtocol, userAgent string, body io.Reader, size int64) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.endpoint("/"+service), body)
	if err != nil {
		return nil, err
	}
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/x-"+service+"-request")
	req.Header.Set("Accept", "application/x-"+service+"-result")
	return u.do(req, gitProtocol, userAgent, "application/x-"+service+"-result")
}

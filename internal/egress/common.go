package egress

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"
)

// Duration is a time.Duration written in JSON as a Go duration string ("2h", "90s").
type Duration time.Duration

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("duration %q: %w; write it like \"2h\" or \"90s\"", b, err)
	}
	*d = Duration(v)
	return nil
}

const (
	// headerReadTimeout bounds how long a client may take to send request headers.
	headerReadTimeout = 30 * time.Second
	// clientIdleTimeout closes idle keep-alive connections from the agent.
	clientIdleTimeout = 5 * time.Minute
	// shutdownGrace is how long Serve waits for in-flight requests after ctx ends.
	shutdownGrace = 5 * time.Second
	// dialTimeout bounds one upstream TCP connect.
	dialTimeout = 30 * time.Second
)

// serve runs srv on ln until ctx ends, then shuts it down gracefully. Requests'
// contexts derive from ctx, so hijacked tunnels end with it too.
func serve(ctx context.Context, srv *http.Server, ln net.Listener, what string) error {
	srv.BaseContext = func(net.Listener) context.Context { return ctx }
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("%s on %s stopped: %w", what, ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("%s on %s stopped: %w", what, ln.Addr(), err)
	}
	return nil
}

// newServer returns an http.Server with header timeouts but no overall read/write
// timeout: model streams legitimately last for hours.
func newServer(h http.Handler, logger *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: headerReadTimeout,
		IdleTimeout:       clientIdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
}

// serveCounted serves r with h and returns the response status and the bytes of the
// request and response bodies, for the audit log.
func serveCounted(h http.Handler, w http.ResponseWriter, r *http.Request) (status int, up, down int64) {
	body := &countingBody{ReadCloser: r.Body}
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = body
	}
	cw := &countingWriter{ResponseWriter: w}
	h.ServeHTTP(cw, r)
	return cw.status, body.n.Load(), cw.n
}

// countingWriter records the status and counts body bytes. Unwrap lets
// http.ResponseController reach the real writer for Flush and Hijack.
type countingWriter struct {
	http.ResponseWriter
	status int
	n      int64
}

func (c *countingWriter) WriteHeader(code int) {
	if c.status == 0 && code >= 200 {
		c.status = code
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *countingWriter) Write(b []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	n, err := c.ResponseWriter.Write(b)
	c.n += int64(n)
	return n, err
}

func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// countingBody counts request body bytes as the proxy reads them.
type countingBody struct {
	io.ReadCloser
	n atomic.Int64
}

func (c *countingBody) Read(b []byte) (int, error) {
	n, err := c.ReadCloser.Read(b)
	c.n.Add(int64(n))
	return n, err
}

// textError answers with a short text/plain reason; the prefix names the server.
func textError(w http.ResponseWriter, code int, msg string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Connection", "close")
	w.WriteHeader(code)
	_, _ = io.WriteString(w, msg+"\n")
}

// stripURLError drops the URL from a *url.Error: URLs may carry query strings that
// must not reach logs.
func stripURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) && ue.Err != nil {
		return ue.Err
	}
	return err
}

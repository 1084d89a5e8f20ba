// Package egress implements bottle's two egress sidecars as plain net/http servers:
// the builtin allowlist filter (an HTTP forward proxy) and the egress-proxy (a
// credential-injecting reverse proxy). The agent container has no route to the outside;
// these two servers are its only ways out, so both fail closed.
//
// # Filter
//
// The filter is a forward proxy for CONNECT tunnels and plain absolute-URI HTTP requests
// (the agent sets HTTPS_PROXY/HTTP_PROXY to it). For every request it decides, in order:
//
//  1. the target port is in FilterConfig.Ports (default 443 and 80);
//  2. the target is a DNS name, never an IP literal;
//  3. the name matches the allowlist (exact names, or "*.x.com" for x.com and every
//     subdomain; case-insensitive; a trailing dot is ignored);
//  4. the name is resolved exactly once and refused if ANY address lies in an internal
//     range (FilterConfig.Internal, default DefaultInternal: loopback, RFC 1918, link-local
//     and metadata, CGNAT, ULA, multicast, NAT64/6to4 embeddings, ...);
//  5. the connection goes to one of those validated addresses, so a second DNS answer
//     cannot rebind the name to an internal address;
//  6. for CONNECT, the TLS ClientHello of the tunnel is peeked and the tunnel is refused
//     unless its SNI equals the CONNECT host (case-insensitive). A tunnel without TLS or
//     without SNI is refused. This refusal happens after "200 Connection established" (the
//     client sends its ClientHello only then), so it is a TLS access_denied alert and a
//     closed connection instead of a 403.
//
// Every other refusal is a 403 with a one-line text reason. Each decision is logged as
// one structured record ("egress decision": client, method, host, port, decision
// allow|deny, reason, bytes_up, bytes_down, duration) on the given slog.Logger; give it a
// slog.JSONHandler to get one JSON line per decision. Tunnels close after
// FilterConfig.TunnelIdleTimeout (default 10m) without traffic in either direction; there
// is no overall limit, so hour-long model streams survive. At most FilterConfig.MaxTunnels
// (default 256) tunnels are open at once: a new one beyond that is refused with 503 while
// the open ones keep serving.
//
// # Egress-proxy
//
// The egress-proxy listens on one port and chooses the route by the first path segment:
// a request to
//
//	http://<egress-proxy>:<port>/<route host>/<path>?<query>
//
// is forwarded to https://<route host>/<path>?<query>. The agent therefore only needs a
// base URL, e.g. ANTHROPIC_BASE_URL=http://egress-proxy:9000/api.anthropic.com. A request
// whose first segment is not a configured route host gets a 404 with a text reason.
//
// Only GET, HEAD, POST, PUT, PATCH, DELETE and OPTIONS are forwarded (405 otherwise: TRACE
// echoes the request), and at most ProxyConfig.MaxRequests (default 256) at once (503).
// Per request the proxy drops every credential the agent sent (Authorization,
// Proxy-Authorization, X-Api-Key, Cookie and the route's own header), strips hop-by-hop
// and X-Forwarded/Forwarded headers, sets Host to the route host and injects
// "<header>: <scheme> <token>" (only "<token>" when the scheme is empty). The token is
// read once at start from the host environment variable named by the route's token_ref; a
// missing or empty variable is a startup error that names the variable, never a value.
// Upstream TLS is verified against the system roots plus the route's optional ca_file.
//
// An upstream may reflect the credential (an echo endpoint, an error page quoting the
// request). Every form of it (raw, URL- and JSON-escaped, base64 alone or inside longer
// base64, and for Basic the decoded user:password) is replaced by the same form of
// CredentialPlaceholder in response headers (1xx, final, trailers) and bodies. To keep
// bodies scannable the proxy asks for Accept-Encoding: identity, drops Range (pieces
// could split the credential), and answers 502 to an encoded body or a protocol upgrade.
// Scrubbed bodies lose their Content-Length.
//
// Responses stream: SSE and chunked bodies are flushed write by write, bodies of known
// length at least every 20 ms (the scrub holds back only a tail that may begin a
// credential), so streams arrive incrementally; there is no overall request timeout,
// only header timeouts. One
// record per request is logged (route, method, path without query, status, bytes,
// duration); header values and tokens are never logged or put in errors.
//
// GET /healthz answers 200 on both servers (the filter also answers GET /health).
package egress

// Package cni holds the CNI conflist templates bottle renders for its per-bottle networks.
//
// The templates are text/template documents rendered by internal/netns with the
// network name, bridge, the container's static address and, for egress, the gateway.
package cni

import "embed"

// Template names inside Templates.
const (
	// InternalTemplate is the isolated network: no gateway, no masquerade, no routes.
	InternalTemplate = "internal.conflist.tmpl"
	// EgressTemplate is the network that leaves the host: gateway .1, default route (the
	// masquerade is the bottle's nat chain, see internal/firewall).
	EgressTemplate = "egress.conflist.tmpl"
)

// Templates holds the conflist templates.
//
//go:embed internal.conflist.tmpl egress.conflist.tmpl
var Templates embed.FS

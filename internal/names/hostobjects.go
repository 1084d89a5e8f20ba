package names

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
)

// Owner is who made a set of host objects: one state dir and one containerd namespace.
// Its ID is in the name (or the directory) of every host-wide object bottle makes, so that
// cleanup, sweep and doctor touch only their own owner's objects.
type Owner struct {
	ID        string `json:"owner"`
	StateDir  string `json:"state_dir"`
	Namespace string `json:"namespace"`
}

// NewOwner returns the owner of stateDir (made absolute) and namespace; its ID is 6 hex
// of sha256(state dir, namespace).
func NewOwner(stateDir, namespace string) (Owner, error) {
	abs, err := filepath.Abs(stateDir)
	if err != nil {
		return Owner{}, fmt.Errorf("owner of state dir %q: %w", stateDir, err)
	}
	sum := sha256.Sum256([]byte(abs + "\x00" + namespace))
	return Owner{ID: hex.EncodeToString(sum[:3]), StateDir: abs, Namespace: namespace}, nil
}

// LegacyOwner names the owner of objects made before names carried one (in messages and
// `bottle cleanup --orphaned-owner`); such objects have owner "" when parsed.
const LegacyOwner = "legacy"

// IsOwnerID reports whether s is an owner ID (6 lower-case hex digits).
func IsOwnerID(s string) bool { return ownerIDRE.MatchString(s) }

// Bridge and firewall chain name prefixes. Interface names have at most 15 bytes, so
// bridges carry a hash of the identity instead of the identity.
const (
	internalBridgePrefix = "bi-"
	egressBridgePrefix   = "be-"
	chainPrefix          = "BOTTLE-"
)

var (
	ownerIDRE           = regexp.MustCompile(`^[0-9a-f]{6}$`)
	networkNameRE       = regexp.MustCompile(`^` + Prefix + `([0-9a-f]{6})-(` + agentPattern + `-` + suffixPattern + `)-(?:int|egr)$`)
	legacyNetworkNameRE = regexp.MustCompile(`^` + Prefix + `(` + agentPattern + `-` + suffixPattern + `)-(?:int|egr)$`)
	bridgeNameRE        = regexp.MustCompile(`^b[ie]-([0-9a-f]{6})([0-9a-f]{6})$`)
	legacyBridgeNameRE  = regexp.MustCompile(`^b[ie]-([0-9a-f]{8})$`)
	chainNameRE         = regexp.MustCompile(`^` + chainPrefix + `([0-9a-f]{6})-([0-9a-f]{6})$`)
	legacyChainNameRE   = regexp.MustCompile(`^` + chainPrefix + `([0-9a-f]{8})$`)
)

// identityHash is 8 hex of sha256(identity): legacy names hold all 8, owned names the
// first 6 after the 6 of the owner.
func identityHash(id Identity) string {
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:4])
}

// NameHash is the identity hash that the bridge and chain names of owner's bottle id
// carry: 6 hex, or 8 for legacy names (owner "").
func NameHash(owner string, id Identity) string {
	if owner == "" {
		return identityHash(id)
	}
	return identityHash(id)[:6]
}

func netSuffix(kind string) string {
	if kind == NetEgress {
		return "-egr"
	}
	return "-int"
}

// NetworkName is the CNI network name of owner's bottle id: bottle-<owner>-<identity>-int
// for NetInternal, -egr for NetEgress.
func NetworkName(owner string, id Identity, kind string) string {
	return Prefix + owner + "-" + string(id) + netSuffix(kind)
}

// BridgeName is the host bridge of network kind of owner's bottle id:
// bi-<owner><6 hex> (NetInternal) or be-<owner><6 hex> (NetEgress); legacy (owner ""):
// bi-/be-<8 hex>.
func BridgeName(owner string, id Identity, kind string) string {
	prefix := internalBridgePrefix
	if kind == NetEgress {
		prefix = egressBridgePrefix
	}
	return prefix + owner + NameHash(owner, id)
}

// IsBridgeOf reports whether bridge is a bridge name of network kind of owner.
func IsBridgeOf(bridge, owner, kind string) bool {
	prefix := internalBridgePrefix
	if kind == NetEgress {
		prefix = egressBridgePrefix
	}
	o, _, ok := ParseBridgeName(bridge)
	return ok && o == owner && strings.HasPrefix(bridge, prefix)
}

// ChainName is the filter chain of owner's bottle id: BOTTLE-<owner>-<6 hex> (legacy,
// owner "": BOTTLE-<8 hex>).
func ChainName(owner string, id Identity) string {
	if owner == "" {
		return chainPrefix + NameHash(owner, id)
	}
	return chainPrefix + owner + "-" + NameHash(owner, id)
}

// ParseNetworkName returns owner ("" for a legacy name without one) and identity of a
// bottle network name.
func ParseNetworkName(name string) (owner string, id Identity, ok bool) {
	if m := networkNameRE.FindStringSubmatch(name); m != nil {
		return m[1], Identity(m[2]), true
	}
	if m := legacyNetworkNameRE.FindStringSubmatch(name); m != nil {
		return "", Identity(m[1]), true
	}
	return "", "", false
}

// parseHashed returns owner ("" legacy) and identity hash of a bridge or chain name.
func parseHashed(name string, owned, legacy *regexp.Regexp) (owner, hash string, ok bool) {
	if m := owned.FindStringSubmatch(name); m != nil {
		return m[1], m[2], true
	}
	if m := legacy.FindStringSubmatch(name); m != nil {
		return "", m[1], true
	}
	return "", "", false
}

// ParseBridgeName returns owner ("" legacy) and identity hash of a bottle bridge name.
func ParseBridgeName(name string) (owner, hash string, ok bool) {
	return parseHashed(name, bridgeNameRE, legacyBridgeNameRE)
}

// ParseChainName returns owner ("" legacy) and identity hash of a bottle chain name.
func ParseChainName(name string) (owner, hash string, ok bool) {
	return parseHashed(name, chainNameRE, legacyChainNameRE)
}

// NetnsFile is the name of a container's netns file (in its owner's netns directory):
// bottle-<container name>.
func NetnsFile(container string) string { return Prefix + container }

// ContainerOfNetnsFile returns the container name in a netns file name.
func ContainerOfNetnsFile(file string) (string, bool) {
	return strings.CutPrefix(file, Prefix)
}

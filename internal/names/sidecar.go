package names

// SidecarReadyFile is created in /run/bottle by a sidecar once it serves; a sidecar that
// fails writes its error to SidecarErrorFile there instead. (Here, not in plan: the
// sidecar binary must not carry the planner.)
const (
	SidecarReadyFile = "ready"
	SidecarErrorFile = "error"
)

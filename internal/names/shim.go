package names

// ShimGroup names the one shim process that serves every container of the bottle (the
// runc shim's group): a bottle costs one shim, not one per container. It is the bottle's
// container-name prefix, so a shim started for any of its containers still names it.
func (id Identity) ShimGroup() string { return Prefix + string(id) }

package plan

import (
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/bottle-dev/bottle/internal/selftest"
)

// SelfTestReport is the stage file (relative to the bottle's stage) the agent's
// self-test writes its report into.
const SelfTestReport = "agent/selftest.json"

// SelfTestMounts are the agent's mounts for the start self-test: the bottle binary
// (static) read-only, and the report file writable.
func SelfTestMounts(binary, report string) []specs.Mount {
	return []specs.Mount{
		bind(binary, selftest.Binary, true),
		bind(report, selftest.Report, false),
	}
}

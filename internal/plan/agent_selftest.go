package plan

import (
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/bottle-dev/bottle/internal/selftest"
)

// SelfTestReportDir is the stage dir (relative to the bottle's stage) the agent's
// self-test writes its report to.
const SelfTestReportDir = "agent/selftest"

// SelfTestMounts are the agent's mounts for the start self-test: the bottle binary
// (static) read-only, and the report dir writable.
func SelfTestMounts(binary, reportDir string) []specs.Mount {
	return []specs.Mount{
		bind(binary, selftest.Binary, true),
		bind(reportDir, selftest.ReportDir, false),
	}
}

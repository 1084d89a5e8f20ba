#!/usr/bin/env bash
# bench-start.sh (`sudo make bench-start`): wall time of a full bottle (agent + builtin
# filter + egress-proxy route) `start --rm -- /bin/true` including its removal, and of an
# attached start until exit, against a bare `ctr run --rm` runsc container of the same
# image, alternating in one run on a private containerd; prints min/median/max and the
# ratios. COUNT sets the rounds (default 9); BOTTLE_BENCH_TRACE=FILE collects the debug
# logs (step timings) of the timed `start --rm` runs in FILE.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib/bench.sh
run_e2e_bench bench-start BenchmarkStart "${COUNT:-9}"

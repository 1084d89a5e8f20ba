#!/usr/bin/env bash
# bench-scale.sh (`sudo make bench-scale`): N = 1, 4, 16 bottles started at once on a
# private containerd: time until all run, PSS of each idle bottle, ps/stop/rm times.
# COUNT sets the runs of each N (default 1; medians when more).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib/bench.sh
run_e2e_bench bench-scale BenchmarkScale "${COUNT:-1}"

#!/usr/bin/env bash
# bench-proxy.sh (`sudo make bench-proxy`), in two parts:
# 1. From inside gVisor (e2e BenchmarkProxy, on a private containerd): an HTTPS server on
#    a test bridge reached directly from a bare runsc container, and from a bottle's agent
#    through its filter and through its egress-proxy: 100 MiB download, 1 MiB x 20, 50
#    concurrent x 1 MiB, small-request p50/p99, new-connection p50, SSE first-event p50,
#    as ratios to direct per round. COUNT sets the rounds (default 5).
# 2. The internal/egress micro-benchmarks on loopback, no sandbox (LOOPBACK_COUNT rounds,
#    default 3; 0 skips them): what the proxies' code costs by itself.
#   COUNT=5 LOOPBACK_COUNT=3 THROUGHPUT_TIME=10x LATENCY_TIME=3000x scripts/bench-proxy.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib/bench.sh
(run_e2e_bench bench-proxy BenchmarkProxy "${COUNT:-5}")

count=${LOOPBACK_COUNT:-3}
((count > 0)) || exit 0
echo
echo "bench-proxy, part 2: internal/egress on loopback (no sandbox), $count rounds"
out=$(mktemp)
trap 'rm -f "$out" "$out.test"' EXIT
go test -c -o "$out.test" ./internal/egress/
# Rounds, each measuring all three paths back to back, so that a burst of load on the
# shared machine hits a path and its baseline alike; ratios are taken per round.
for ((round = 0; round < count; round++)); do
	(cd internal/egress && "$out.test" -test.run '^$' -test.bench '^BenchmarkThroughput$' \
		-test.benchtime "${THROUGHPUT_TIME:-10x}") | grep Throughput >>"$out"
	(cd internal/egress && "$out.test" -test.run '^$' -test.bench '^BenchmarkSmallRequest$' \
		-test.benchtime "${LATENCY_TIME:-3000x}") | grep SmallRequest >>"$out"
done

# Lines look like: BenchmarkThroughput/filter-2  10  41349023 ns/op  1267.96 MB/s
awk '
function median(list,   n, i, j, t, a) {
	n = split(list, a, " ")
	for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
	return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2
}
/^Benchmark(Throughput|SmallRequest)\// {
	split($1, parts, "/"); bench = parts[1]; path = parts[2]; sub(/-[0-9]+$/, "", path)
	if (path == "direct") round[bench]++
	r = round[bench]
	for (i = 4; i < NF; i++) {
		if ($(i+1) == "MB/s" && bench == "BenchmarkThroughput") tp[path, r] = $i
		if ($(i+1) == "p50-ns") lat[path, r] = $i
	}
}
END {
	if (!round["BenchmarkThroughput"] || !round["BenchmarkSmallRequest"]) { print "bench-proxy: no direct baseline in the output" > "/dev/stderr"; exit 1 }
	for (r = 1; r <= round["BenchmarkThroughput"]; r++) tpd = tpd " " tp["direct", r]
	for (r = 1; r <= round["BenchmarkSmallRequest"]; r++) latd = latd " " lat["direct", r]
	printf "%-14s %12s %10s %14s %14s   (medians of %d rounds; ratio and added latency per round)\n", "path", "MB/s", "ratio", "p50 latency", "added p50", round["BenchmarkThroughput"]
	printf "%-14s %12.1f %10s %12.1fus %14s\n", "direct", median(tpd), "1.00", median(latd) / 1000, "-"
	n = split("filter egress-proxy", paths, " ")
	for (k = 1; k <= n; k++) {
		p = paths[k]; tps = ""; ratios = ""; lats = ""; added = ""
		for (r = 1; r <= round["BenchmarkThroughput"]; r++) { tps = tps " " tp[p, r]; ratios = ratios " " tp[p, r] / tp["direct", r] }
		for (r = 1; r <= round["BenchmarkSmallRequest"]; r++) { lats = lats " " lat[p, r]; added = added " " (lat[p, r] - lat["direct", r]) / 1000 }
		printf "%-14s %12.1f %10.2f %12.1fus %12.1fus\n", p, median(tps), median(ratios), median(lats) / 1000, median(added)
	}
}' "$out"

#!/usr/bin/env bash
# bench-proxy.sh: compare the egress sidecars with a direct connection, all on loopback.
# Runs the internal/egress benchmarks and prints, per path, the throughput ratio to
# direct (target >= 0.80) and the added median latency of a small request (target
# <= 1 ms). Medians over COUNT runs damp the noise of a shared machine.
#   COUNT=5 THROUGHPUT_TIME=10x LATENCY_TIME=3000x scripts/bench-proxy.sh
set -euo pipefail
cd "$(dirname "$0")/.."

count=${COUNT:-5}
out=$(mktemp)
trap 'rm -f "$out"' EXIT

# Rounds, each measuring all three paths back to back, so that a burst of load on the
# shared machine hits a path and its baseline alike; ratios are taken per round.
go test -c -o "$out.test" ./internal/egress/
trap 'rm -f "$out" "$out.test"' EXIT
for ((round = 0; round < count; round++)); do
	(cd internal/egress && "$out.test" -test.run '^$' -test.bench '^BenchmarkThroughput$' \
		-test.benchtime "${THROUGHPUT_TIME:-10x}") | grep Throughput | tee -a "$out"
	(cd internal/egress && "$out.test" -test.run '^$' -test.bench '^BenchmarkSmallRequest$' \
		-test.benchtime "${LATENCY_TIME:-3000x}") | grep SmallRequest | tee -a "$out"
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
	printf "\n%-14s %12s %10s %14s %14s   (medians of %d rounds; ratio and added latency per round)\n", "path", "MB/s", "ratio", "p50 latency", "added p50", round["BenchmarkThroughput"]
	printf "%-14s %12.1f %10s %12.1fus %14s\n", "direct", median(tpd), "1.00", median(latd) / 1000, "-"
	fail = 0
	n = split("egress-proxy filter", paths, " ")
	for (k = 1; k <= n; k++) {
		p = paths[k]; tps = ""; ratios = ""; lats = ""; added = ""
		for (r = 1; r <= round["BenchmarkThroughput"]; r++) { tps = tps " " tp[p, r]; ratios = ratios " " tp[p, r] / tp["direct", r] }
		for (r = 1; r <= round["BenchmarkSmallRequest"]; r++) { lats = lats " " lat[p, r]; added = added " " (lat[p, r] - lat["direct", r]) / 1000 }
		ratio = median(ratios); add = median(added)
		ok = (ratio >= 0.8 && add <= 1000) ? "ok" : "MISS"
		if (ok == "MISS") fail = 1
		printf "%-14s %12.1f %10.2f %12.1fus %12.1fus  %s\n", p, median(tps), ratio, median(lats) / 1000, add, ok
	}
	print "targets: throughput ratio >= 0.80, added median latency <= 1000us"
	exit fail
}' "$out"

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

go test -run '^$' -bench '^BenchmarkThroughput$' -benchtime "${THROUGHPUT_TIME:-10x}" -count "$count" ./internal/egress/ | tee "$out"
go test -run '^$' -bench '^BenchmarkSmallRequest$' -benchtime "${LATENCY_TIME:-3000x}" -count "$count" ./internal/egress/ | tee -a "$out"

# Lines look like: BenchmarkThroughput/filter-2  10  41349023 ns/op  1267.96 MB/s
awk '
function median(key,   n, i, j, t, a) {
	n = split(vals[key], a, " ")
	for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
	return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2
}
/^Benchmark(Throughput|SmallRequest)\// {
	split($1, parts, "/"); bench = parts[1]; path = parts[2]; sub(/-[0-9]+$/, "", path)
	for (i = 4; i < NF; i++) {
		if ($(i+1) == "MB/s" && bench == "BenchmarkThroughput") vals["tp," path] = vals["tp," path] " " $i
		if ($(i+1) == "p50-ns") vals["lat," path] = vals["lat," path] " " $i
	}
}
END {
	if (!("tp,direct" in vals) || !("lat,direct" in vals)) { print "bench-proxy: no direct baseline in the output" > "/dev/stderr"; exit 1 }
	tpd = median("tp,direct"); latd = median("lat,direct")
	printf "\n%-14s %12s %10s %14s %14s\n", "path", "MB/s", "ratio", "p50 latency", "added p50"
	printf "%-14s %12.1f %10s %12.1fus %14s\n", "direct", tpd, "1.00", latd / 1000, "-"
	fail = 0
	n = split("egress-proxy filter", paths, " ")
	for (k = 1; k <= n; k++) {
		p = paths[k]; tp = median("tp," p); lat = median("lat," p)
		ratio = tp / tpd; added = (lat - latd) / 1000
		ok = (ratio >= 0.8 && added <= 1000) ? "ok" : "MISS"
		if (ok == "MISS") fail = 1
		printf "%-14s %12.1f %10.2f %12.1fus %12.1fus  %s\n", p, tp, ratio, lat / 1000, added, ok
	}
	print "targets: throughput ratio >= 0.80, added median latency <= 1000us"
	exit fail
}' "$out"

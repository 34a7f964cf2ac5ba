#!/usr/bin/env bash
# Runs every benchmark group (each beside its peer) and writes BENCHMARKS.md from criterion's
# estimates.json files. The Redis groups start their own redis-server.
#
#   scripts/bench.sh              full run (criterion defaults), pinned to one CPU
#   QUICK=1 scripts/bench.sh      shorter warm-up and measurement, for a first look
#
# Bench and redis-server share CPU 0 (the server inherits the affinity): on small VMs idle CPUs
# wake slowly, and unpinned ratios drift. Only `l1_hit_parallel` runs unpinned.
set -euo pipefail
cd "$(dirname "$0")/.."

args=()
if [ "${QUICK:-0}" = "1" ]; then
    args=(--warm-up-time 1 --measurement-time 3)
fi
pin=()
if command -v taskset >/dev/null 2>&1; then
    pin=(taskset -c 0)
fi

command -v redis-server >/dev/null 2>&1 || {
    echo "error: redis-server is needed for the Redis groups (scripts/test.sh installs it)" >&2
    exit 1
}

"${pin[@]}" cargo bench -p layercache-ecosystem --bench layers -- "${args[@]}" \
    '^(l1_hit|get_or_load_hit|l2_hit|batch_get_100|batch_set_100|l2_set|hand_rolled_aside)/'
# The single-task memory groups again over 1,000 keys (a working set that fits in the CPU caches:
# steadier ratios on a noisy VM), into their own directory.
LAYERCACHE_BENCH_KEYS=1000 CRITERION_HOME="$PWD/target/criterion-1k" \
    "${pin[@]}" cargo bench -p layercache-ecosystem --bench layers -- "${args[@]}" \
    '^(l1_hit|get_or_load_hit)/'
# The contention group runs unpinned: it is about many tasks on several CPUs.
cargo bench -p layercache-ecosystem --bench layers -- "${args[@]}" '^l1_hit_parallel/'

# L1 throughput as threads are added (unpinned: it is about cores), up to the machine's cores.
if [ "${QUICK:-0}" = "1" ]; then export LAYERCACHE_SCALING_SECS=0.15 LAYERCACHE_SCALING_ROUNDS=3; fi
cargo bench -p layercache-ecosystem --bench scaling
# Hit ratios of each engine on Zipf, scan and shifting streams (exact: no timing involved).
if [ "${QUICK:-0}" = "1" ]; then export LAYERCACHE_HIT_RATIO_REQUESTS=300000; fi
cargo bench -p layercache-ecosystem --bench hit_ratio
# Heap bytes per cached 1 KB value, ours vs the raw engines (exact: a counting allocator).
if [ "${QUICK:-0}" = "1" ]; then export LAYERCACHE_MEMORY_ENTRIES=100000; fi
cargo bench -p layercache-ecosystem --bench memory
# L2 reads per second by requests in flight: RedisCache vs raw fred vs redis-benchmark.
if [ "${QUICK:-0}" = "1" ]; then export LAYERCACHE_L2_SECS=0.3; fi
cargo bench -p layercache-ecosystem --bench l2_throughput

"${pin[@]}" cargo bench -p layercache-ecosystem --bench codec -- "${args[@]}"
# Instrumentation: single-thread groups pinned, the 8-thread histogram group unpinned.
"${pin[@]}" cargo bench -p layercache-ecosystem --bench instrument -- "${args[@]}" \
    '^(instrument/|histogram_record/(hdrhistogram|ours)$)'
cargo bench -p layercache-ecosystem --bench instrument -- "${args[@]}" '^histogram_record/ours_8_threads$'
# Fleet: the tagged hit pinned; the backplane round trips unpinned (several tasks and a server).
"${pin[@]}" cargo bench -p layercache-ecosystem --bench fleet -- "${args[@]}" '^tagged_hit/'
cargo bench -p layercache-ecosystem --bench fleet -- "${args[@]}" '^backplane_visibility/'
# The fleet_stampede table comes from a multi-process test (it writes fleet_stampede.json).
LAYERCACHE_FLEET_REPORT="$PWD/target/criterion/fleet_stampede.json" \
    cargo test --release --all-features --test fleet -- --exact the_fleet_lease_loads_each_cold_key_once
# Ratios that hold on a busy machine: each pair interleaved (alternating batches, pinned), then
# instructions per call under callgrind (no neighbour can move an instruction count).
if [ "${QUICK:-0}" = "1" ]; then export LAYERCACHE_RATIO_SECS=0.5; fi
"${pin[@]}" cargo bench -p layercache-ecosystem --bench ratios
command -v valgrind >/dev/null 2>&1 || {
    # shellcheck source=scripts/lib.sh
    . scripts/lib.sh
    apt_install "valgrind (instruction counts)" valgrind
}
ratios_bin=$(cargo bench -p layercache-ecosystem --bench ratios --no-run 2>&1 \
    | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)
count() { # count <pair> <peer|ours> <calls>: instructions executed inside the counted loop
    # (only there: the set-up and the clock's calibration thread varied by ~10M between runs)
    valgrind --tool=callgrind --callgrind-out-file=/dev/null --toggle-collect='*counted_calls*' \
        "$ratios_bin" count "$@" </dev/null 2>&1 \
        | sed -n 's/.*Collected : \([0-9]*\).*/\1/p' | tail -1
}
calls=100000
{
    echo '{"calls":'"$calls"',"rows":['
    first=1
    # `list` gives each pair with its call count (the Redis pairs make fewer calls).
    mkdir -p target/criterion/ratios
    "$ratios_bin" list > target/criterion/ratios/pairs.txt
    while read -r pair n; do
        for which in peer ours; do
            one=$(count "$pair" "$which" "$n")
            two=$(count "$pair" "$which" $((n * 2)))
            [ "$first" = 1 ] || echo ','
            first=0
            echo '{"pair":"'"$pair"'","side":"'"$which"'","calls":'"$n"',"per_call":'"$(( (two - one) / n ))"'}'
        done
    done < target/criterion/ratios/pairs.txt
    echo ']}'
} > target/criterion/ratios/instructions.json
# Written beside, then moved: the report keeps the hand-written notes of the current file.
python3 scripts/bench_report.py > target/BENCHMARKS.md.new
mv target/BENCHMARKS.md.new BENCHMARKS.md
cat BENCHMARKS.md

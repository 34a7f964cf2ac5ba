#!/usr/bin/env bash
# The multi-core benchmark (`l1_scaling`, 1 to 16 threads) on a larger machine that has no
# Rust toolchain and no network: build it here, run the built binary there.
#
#   scripts/device_bench.sh prepare   here: build the benchmark, copy it to target/device/
#   scripts/device_bench.sh run       there, from the repository root, with target/device/
#                                     copied along: writes l1_scaling.json, l1_scaling.txt
#                                     and machine.txt to $OUT (target/device/out without it)
#   scripts/device_bench.sh report F  here: put the report F fetched back where
#                                     scripts/bench_report.py shows it beside this machine's
#
# The run takes about 5 minutes on 16 cores (10 implementations, 1/2/4/8/16 threads, two key
# patterns, 5 rounds of 0.25 s a point; LAYERCACHE_SCALING_ROUNDS and _SECS shorten it). The
# binary is an x86-64 Linux build against this machine's glibc (2.36 on Debian 12), so it runs
# on any x86-64 Linux with that glibc or a newer one.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
prepare)
    bin=$(cargo bench -p layercache-ecosystem --bench scaling --no-run 2>&1 \
        | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)
    [ -x "$bin" ] || { echo "error: the scaling benchmark did not build" >&2; exit 1; }
    mkdir -p target/device
    cp "$bin" target/device/scaling
    echo "target/device/scaling ($(du -h target/device/scaling | cut -f1)): run 'scripts/device_bench.sh run' there, carrying target/device"
    ;;
run)
    out="${OUT:-target/device/out}"
    mkdir -p "$out"
    [ -x target/device/scaling ] || {
        echo "error: target/device/scaling is missing: run 'scripts/device_bench.sh prepare' first and carry target/device" >&2
        exit 1
    }
    {
        echo "cores: $(nproc)"
        grep -m1 'model name' /proc/cpuinfo || true
        uname -a
    } > "$out/machine.txt"
    cat "$out/machine.txt"
    LAYERCACHE_SCALING_REPORT="$out/l1_scaling.json" target/device/scaling 2>&1 \
        | tee "$out/l1_scaling.txt"
    ;;
report)
    src="${2:?usage: scripts/device_bench.sh report <l1_scaling.json>}"
    mkdir -p target/criterion/l1_scaling_device
    cp "$src" target/criterion/l1_scaling_device/report.json
    echo "scripts/bench_report.py now shows it (scripts/bench.sh regenerates BENCHMARKS.md)"
    ;;
*)
    sed -n '2,14p' "$0" >&2
    exit 2
    ;;
esac

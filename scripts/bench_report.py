#!/usr/bin/env python3
"""Writes BENCHMARKS.md (to stdout) from criterion's target/criterion/<group>/<id>/new/estimates.json.

Each group is measured beside its peer in the same run; the ratio ours / peer is the result.
The hand-written notes of the current BENCHMARKS.md (from its `## Reading the figures` heading
on: how the figures were measured, and the figures of earlier runs, each with its date) are
kept after the generated tables.
"""
import datetime
import json
import os
import platform
import subprocess
import sys

# group -> (peer id, our id, what "ours" means)
GROUPS = [
    ("l1_hit", "raw_moka", "layered", "L1 hit: raw moka future::Cache get vs Layered::get"),
    ("l1_hit", "raw_moka", "layered_quick_cache", "L1 hit on the quick_cache engine vs raw moka"),
    ("l1_hit_parallel", "raw_moka/8", "layered/8", "L1 hits from 8 tasks on a multi-thread runtime"),
    ("l1_hit_parallel", "raw_moka/2", "layered/2", "L1 hits from 2 tasks on a multi-thread runtime"),
    ("get_or_load_hit", "moka_try_get_with", "layered", "get_or_load on a warm key vs moka try_get_with"),
    ("l2_hit", "raw_fred", "layered", "L2 hit: fred GET + the same decode vs RedisCache::get (default MessagePack)"),
    ("l2_hit", "raw_fred", "layered_postcard", "L2 hit of the same value written as postcard"),
    ("l2_hit", "raw_fred", "layered_json", "L2 hit of the same value written as JSON"),
    ("l2_hit", "raw_redis_rs", "layered", "L2 hit: redis-rs 1.x `ConnectionManager` GET + the same decode vs RedisCache::get (target ≤ 1.05; interleaved: `ratios` `l2_hit_redis_rs`)"),
    ("hand_rolled_aside", "moka_fred_by_hand", "layered", "L2-hit path: hand-written moka+fred cache-aside vs Layered"),
    ("batch_get_100", "sequential_get", "get_many", "100 keys: sequential gets vs one get_many"),
    ("batch_get_100", "layered_sequential_get", "layered_get_many", "100 keys through Layered, L1 cold: sequential gets vs one get_many (one MGET)"),
    ("batch_set_100", "layered_sequential_set", "layered_set_many", "100 writes through Layered: one set each vs one set_many (one pipeline)"),
    ("l2_set", "raw_fred", "redis_cache", "one ~1 KB write: encode + fred SET by hand vs RedisCache::set (a plain SET)"),
    ("l2_set", "redis_cache", "redis_cache_if_newer", "one ~1 KB write: a plain SET vs the conditional write (GET, compare and SET in one script by EVALSHA)"),
    ("l2_set", "raw_fred", "layered", "one ~1 KB write: encode + fred SET by hand vs Layered::set (conditional script by EVALSHA, plus L1)"),
    ("get_or_load_hit", "moka_try_get_with", "layered_quick_cache", "get_or_load on a warm key, quick_cache engine"),
    ("codec_4k", "postcard", "postcard_zstd", "encode+decode of a 4 KB chat reply: postcard vs postcard+zstd"),
    ("codec_4k", "postcard", "postcard_zstd_dict", "the same with a zstd dictionary trained on other replies"),
    ("codec_4k", "postcard", "msgpack", "MessagePack with field names (the default format) vs postcard (target ≤ 2.0)"),
    ("codec_4k", "postcard", "json", "JSON vs postcard"),
    ("codec_4k", "postcard_zstd", "msgpack_zstd", "MessagePack + zstd vs postcard + zstd"),
    ("codec_4k", "postcard_zstd", "json_zstd", "JSON + zstd vs postcard + zstd"),
    ("codec_4k", "postcard_zstd", "default", "the default codec (MessagePack + zstd + write check) vs postcard + zstd"),
    ("codec_read", "1k_off", "1k_zstd3", "decode of a ~1 KB MessagePack chat reply (an L2 hit's decode): stored uncompressed vs zstd level 3 (the default)"),
    ("codec_read", "4k_off", "4k_zstd3", "the same at ~4 KB"),
    ("codec_read", "4k_off", "4k_zstd-3", "~4 KB with zstd's fast level −3"),
    ("codec_read", "16k_off", "16k_zstd3", "the same at ~16 KB, level 3"),
    ("codec_read", "1k_zstd3", "1k_zstd3_dict", "~1 KB at level 3: with a trained 16 KiB dictionary vs without"),
    ("instrument", "bare", "timed", "an async call timed by a Timer (no recorder) vs the bare call (target: difference ≤ 30 ns)"),
    ("instrument", "bare", "timed_prometheus", "the same with metrics-exporter-prometheus installed"),
    ("histogram_record", "hdrhistogram", "ours", "one record, single thread: hdrhistogram (&mut) vs our lock-free histogram (target ≤ 1.0)"),
    ("histogram_record", "hdrhistogram", "ours_8_threads", "ours from 8 threads at once (time per record as each thread sees it)"),
    ("tagged_hit", "untagged", "tagged", "get_or_load L1 hit on an entry with 2 tags vs an untagged one (target ≤ 1.2)"),
    ("backplane_visibility", "raw_fred_pubsub", "ours", "a delete in one instance until evicted from another's L1 vs a raw fred PUBLISH → message"),
]

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "criterion")


ROOT_1K = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "criterion-1k")

# Groups measured a second time over 1,000 keys (scripts/bench.sh).
GROUPS_1K = [g for g in GROUPS if g[0] in ("l1_hit", "get_or_load_hit")]


def load_json(path):
    """The JSON document at `path`, or None when it is missing or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def estimate(group, bench_id, root=ROOT):
    # criterion keeps an id such as "raw_moka/8" in a directory named "raw_moka_8".
    path = os.path.join(root, group, bench_id.replace("/", "_"), "new", "estimates.json")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data["median"]["point_estimate"]  # nanoseconds


def fmt(ns):
    if ns is None:
        return "—"
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.1f} ns"


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"


def rustc():
    try:
        return subprocess.run(["rustc", "--version"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "rustc (unknown)"



def scaling_table(scaling):
    """The `l1_scaling` table of one report (nothing without one)."""
    if not scaling:
        return
    threads = sorted({r["threads"] for r in scaling["results"]})
    where = f"**{scaling['cores']} cores**"
    if scaling.get("machine"):
        where += f" ({scaling['machine']})"
    print(f"\n`l1_scaling` (`ecosystem/benches/scaling.rs`): total L1 hits per second, millions, on "
          f"{where}, {scaling['keys']} warm keys, {scaling['seconds']} s a "
          f"point (unpinned), {scaling.get('rounds', 1)} alternating rounds (median). "
          "The last column is ours over the raw engine underneath (quick_cache or moka) at the most threads, "
          "paired within each round.")
    if scaling["skipped_threads"]:
        skipped = ", ".join(str(t) for t in scaling["skipped_threads"])
        print(f"Thread counts above the core count ({skipped}) are not measured on this machine.")
    print()
    print("| keys | implementation | " + " | ".join(f"{t} thread{'s' if t > 1 else ''}" for t in threads)
          + f" | scaling | of raw at {threads[-1]} |")
    print("|---|---|" + "---|" * (len(threads) + 2))
    rows, shares = {}, {}
    for r in scaling["results"]:
        rows.setdefault((r["pattern"], r["id"]), {})[r["threads"]] = r["ops_per_sec"]
        if "vs_raw" in r:
            shares.setdefault((r["pattern"], r["id"]), {})[r["threads"]] = r["vs_raw"]
    for (pattern, impl_id), by_t in rows.items():
        cells = " | ".join(f"{by_t[t] / 1e6:.2f}" if t in by_t else "—" for t in threads)
        first, last = by_t.get(threads[0]), by_t.get(threads[-1])
        factor = f"{last / first:.2f}×" if first and last else "—"
        share = shares.get((pattern, impl_id), {}).get(threads[-1])
        share = "—" if share is None or impl_id.startswith("raw_") else f"{share:.2f}"
        print(f"| {pattern} | `{impl_id}` | {cells} | {factor} | {share} |")

def main():
    rows = []
    for group, peer, ours, what in GROUPS:
        p, o = estimate(group, peer), estimate(group, ours)
        ratio = f"{o / p:.2f}" if p and o else "—"
        try:
            with open(os.path.join(ROOT, group, "interleaved.json")) as f:
                ratio += f" (interleaved **{json.load(f)['ratio']:.2f}**)"
        except (OSError, ValueError, KeyError):
            pass
        rows.append(f"| `{group}` | `{peer}` {fmt(p)} | `{ours}` {fmt(o)} | {ratio} | {what} |")
    if all("—" in r.split("|")[4] for r in rows):
        sys.exit("no criterion estimates found: run scripts/bench.sh")
    bare, timed = estimate("instrument", "bare"), estimate("instrument", "timed")
    if bare and timed:
        rows.append(f"| `instrument` | | | | timed − bare = **{timed - bare:.1f} ns** per call |")
    print("# Benchmarks\n")
    print("Generated by `scripts/bench.sh` from criterion's `estimates.json` (medians). Each group runs")
    print("its peer and ours in the same run; the ratio ours / peer is the result (below 1 = ours faster).")
    print("Where a group measures the two interleaved (alternating batches in one routine, both timed")
    print("in the same windows), that ratio is shown too, in bold: it is the one a busy machine does not move.\n")
    print(f"- machine: {machine()}")
    print(f"- toolchain: {rustc()}")
    print(f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
    print("- bench and redis-server pinned to CPU 0 (`taskset -c 0`), except `l1_hit_parallel`\n")
    print("| group | peer | ours | ratio | what |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(row)
    rows_1k = []
    for group, peer, ours, what in GROUPS_1K:
        p, o = estimate(group, peer, ROOT_1K), estimate(group, ours, ROOT_1K)
        if p and o:
            rows_1k.append(f"| `{group}` | `{peer}` {fmt(p)} | `{ours}` {fmt(o)} | {o / p:.2f} | {what} |")
    if rows_1k:
        print("\nThe same single-task memory groups over 1,000 keys (`LAYERCACHE_BENCH_KEYS=1000`), a")
        print("working set that fits in the CPU caches: times move by about 1 % between runs here.\n")
        print("| group | peer | ours | ratio | what |")
        print("|---|---|---|---|---|")
        for row in rows_1k:
            print(row)
    sizes = load_json(os.path.join(ROOT, "codec_sizes.json"))
    if sizes:
        print("\nStored size of chat replies (mean of 100; the dictionary is trained on 300 *other*")
        print("replies of the same kind, written by `ecosystem/benches/codec.rs`):\n")
        print("| reply | framed postcard | + zstd | + zstd with dictionary | dictionary / plain zstd "
              "| MessagePack | + zstd | JSON | + zstd |")
        print("|---|---|---|---|---|---|---|---|---|")
        for label, row in sizes.items():
            plain, zstd, d = row["postcard"], row["zstd"], row["zstd_dict"]
            extra = " | ".join(f"{row[k]} B" if k in row else "—"
                               for k in ("msgpack", "msgpack_zstd", "json", "json_zstd"))
            print(f"| ~{label.upper().replace('K', ' KB')} | {plain} B | {zstd} B ({plain / zstd:.2}×) "
                  f"| {d} B ({plain / d:.2}×) | {d / zstd:.2} | {extra} |")
    stampede = load_json(os.path.join(ROOT, "fleet_stampede.json"))
    if stampede:
        print("\n`fleet_stampede`: loads per cold key across a fleet (`tests/fleet.rs`")
        print("`the_fleet_lease_loads_each_cold_key_once`, release build, one local redis-server): "
              f"{stampede['processes']} processes × {stampede['keys']} cold keys × "
              f"{stampede['callers']} concurrent callers per key per process, "
              f"{stampede['load_ms']} ms loads.\n")
        print("| | loader runs | per cold key |")
        print("|---|---|---|")
        for label, key in (("with the fleet lease (default)", "with_lease"),
                           ("without (`with_fleet_lease(false)`)", "without_lease")):
            n = stampede[key]
            print(f"| {label} | {n} | {n / stampede['keys']:.2f} |")
    scaling_table(load_json(os.path.join(ROOT, "l1_scaling", "report.json")))
    # The same benchmark built here and run on a larger machine (scripts/device_bench.sh).
    scaling_table(load_json(os.path.join(ROOT, "l1_scaling_device", "report.json")))
    hits = load_json(os.path.join(ROOT, "hit_ratio", "report.json"))
    if hits:
        ids = []
        for r in hits["results"]:
            if r["id"] not in ids:
                ids.append(r["id"])
        print(f"\n`hit_ratio` (`ecosystem/benches/hit_ratio.rs`): share of lookups answered from memory by a "
              f"cache-aside client, {hits['distinct']:,} distinct keys, {hits['requests']:,} requests "
              "a stream (seeded streams, no timing: quick_cache's figures are exact on any machine; "
              "moka's move by up to 0.004 between runs, because moka applies reads and writes to its policy in "
              "batches, partly on a timer).\n")
        print("| stream | capacity | " + " | ".join(f"`{i}`" for i in ids) + " |")
        print("|---|---|" + "---|" * len(ids))
        rows = {}
        for r in hits["results"]:
            rows.setdefault((r["stream"], r["capacity_percent"]), {})[r["id"]] = r["hit_ratio"]
        for (stream, pct), by_id in rows.items():
            cells = " | ".join(f"{by_id[i]:.3f}" if i in by_id else "—" for i in ids)
            print(f"| {stream} | {pct} % | {cells} |")
    l2 = load_json(os.path.join(ROOT, "l2_throughput", "report.json"))
    if l2:
        print(f"\n`l2_throughput` (`ecosystem/benches/l2_throughput.rs`): L2 reads per second by requests in "
              f"flight, {l2['cores']} cores, fred pools of {l2['pool_size']} connections (redis-rs: one multiplexed `ConnectionManager`, as it is used), "
              f"{l2.get('rounds', 3)} alternating rounds of {l2['seconds']} s, each starting with another client: each rate is the median over the rounds, "
              f"each ratio the median of ours / the peer within a round (the two measured back to back).\n")
        print("| in flight | `raw_fred` | `raw_fred_decode` | `raw_redis_rs_decode` | `redis_cache` | ours / raw fred | ours / fred + decode | ours / redis-rs + decode | `redis-benchmark -c N -t get` |")
        print("|---|---|---|---|---|---|---|---|---|")
        cell = lambda v: f"{v:,}/s" if v else "—"
        def ratio(r, name, peer):
            # The paired ratio when the report has it, else the ratio of the medians.
            if f"ratio_{name}" in r:
                return f"{r[f'ratio_{name}']:.2f}"
            return f"{r['redis_cache'] / r[peer]:.2f}" if r.get(peer) else "—"
        for r in l2["results"]:
            ours = r["redis_cache"]
            decode, rs = r.get("raw_fred_decode"), r.get("raw_redis_rs_decode")
            print(f"| {r['in_flight']} | {cell(r['raw_fred'])} | {cell(decode)} | {cell(rs)} | {cell(ours)} | "
                  f"{ratio(r, 'raw_fred', 'raw_fred')} | {ratio(r, 'fred_decode', 'raw_fred_decode')} | "
                  f"{ratio(r, 'redis_rs_decode', 'raw_redis_rs_decode')} | "
                  f"{cell(r.get('redis_benchmark'))} |")
    memory = load_json(os.path.join(ROOT, "memory_per_entry", "report.json"))
    if memory:
        per = {r["id"]: r["bytes_per_entry"] for r in memory["rows"]}
        print(f"\n`memory_per_entry` (`ecosystem/benches/memory.rs`): live heap bytes per entry (counting "
              f"allocator) over {memory['entries']:,} entries of a {memory['value_bytes']}-byte value "
              f"under a {memory['key_bytes']}-byte key; exact, no timing (target ≤ 1.15× the raw engine).\n")
        print("| engine | raw | `MemoryCache` | ours / raw |")
        print("|---|---|---|---|")
        for engine, raw, ours in (("moka", "raw_moka", "memory_moka"),
                                  ("quick_cache", "raw_quick_cache", "memory_quick_cache")):
            if raw in per and ours in per:
                print(f"| {engine} | {per[raw]:.0f} B | {per[ours]:.0f} B | **{per[ours] / per[raw]:.3f}** |")
    ratios = load_json(os.path.join(ROOT, "ratios", "report.json"))
    instructions = load_json(os.path.join(ROOT, "ratios", "instructions.json")) or {"rows": []}
    counts = {(r["pair"], r["side"]): r["per_call"] for r in instructions["rows"]}
    if ratios:
        calls = instructions.get('calls', 20000)
        l2_calls = next((r["calls"] for r in instructions["rows"]
                         if r["pair"].startswith("l2_") and "calls" in r), None)
        l2_note = (f"; {l2_calls:,} and {2 * l2_calls:,} for the `l2_` pairs, whose count is the "
                   "client's side of the round trip only" if l2_calls else "")
        print(f"\n`ratios` (`ecosystem/benches/ratios.rs`): each pair measured **interleaved** (alternating "
              f"batches of 10,000 calls, 1,000 for the `l2_` pairs, for {ratios['secs']} s, pinned; "
              "median ns per call), and in "
              "**instructions per call** under callgrind (the difference between runs of "
              f"{calls:,} and {2 * calls:,} calls{l2_note}, "
              "collected only inside the calling loop; no neighbour can move it).\n")
        print("| pair | peer | ours | interleaved ns (peer / ours) | ratio | instructions (peer / ours) | ratio | what |")
        print("|---|---|---|---|---|---|---|---|")
        for r in ratios["rows"]:
            peer_i, ours_i = counts.get((r["pair"], "peer")), counts.get((r["pair"], "ours"))
            if peer_i and ours_i:
                inst, inst_ratio = f"{peer_i} / {ours_i}", f"{ours_i / peer_i:.2f}"
            else:
                inst, inst_ratio = "—", "—"
            print(f"| `{r['pair']}` | `{r['peer']}` | `{r['ours']}` | {r['peer_ns']:.1f} / "
                  f"{r['ours_ns']:.1f} | **{r['ratio']:.2f}** | {inst} | {inst_ratio} | {r['what']} |")
    print()
    print("The first table's memory-layer groups run over 10,000 keys: a working set larger than the")
    print("CPU caches, so their absolute times (and the moka ratios) move by ±15–40 % between runs on")
    print("this VM, and the peer and ours are measured seconds apart. The 1,000-key table is the")
    print("steadier measure of what our code adds; the quick_cache and Redis ratios are steady in both.")
    notes = hand_written_notes()
    if notes:
        print()
        print(notes, end="")


# Where the hand-written part of BENCHMARKS.md starts.
NOTES_HEADING = "## Reading the figures"


def hand_written_notes():
    """The current BENCHMARKS.md from NOTES_HEADING on, or "" without one."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "BENCHMARKS.md")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return ""
    start = text.find("\n" + NOTES_HEADING)
    return text[start + 1:] if start >= 0 else ""


if __name__ == "__main__":
    main()

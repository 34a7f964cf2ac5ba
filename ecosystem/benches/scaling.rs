//! `l1_scaling`: total L1 hits per second as threads are added, for the raw engines and ours.
//!
//! Each point runs N OS threads for a fixed time (0.25 s; `LAYERCACHE_SCALING_SECS`), every
//! thread looking up warm keys in a loop, and takes the total lookups per second. The
//! implementations alternate, point by point, for `LAYERCACHE_SCALING_ROUNDS` rounds (5), each
//! round starting with another one; a rate is the median over the rounds, and each
//! implementation's share of its raw engine's rate (`vs_raw`) the median of the shares within a
//! round, so that a host taking a CPU away for a while moves both sides. Thread counts are
//! 1, 2, 4, 8 and 16, capped at the machine's cores: a count above them is listed as skipped
//! (on 2 cores, 16 threads would measure the scheduler, not the cache). Key patterns: `uniform`
//! (random keys over 1,000 warm ones; `LAYERCACHE_SCALING_KEYS`) and `hot` (one key).
//!
//! IDs: `raw_moka` (`moka::sync::Cache::get`), `raw_quick_cache` (`quick_cache::sync::Cache::get`),
//! `memory_moka` and `memory_quick_cache` (`MemoryCache` on each engine, through the `Cache`
//! trait), `memory_quick_cache_sync` (`MemoryCache::get_value_sync` on the quick_cache engine:
//! the value alone, no future), `memory_quick_cache_prometheus` (the same, built under a Prometheus recorder, so every
//! hit also increments the recorder's counter) and `memory_quick_cache_prometheus_interval`
//! (the same with `metrics_interval(100 ms)`), `layered_get` and `layered_get_or_load`
//! (`Layered` on the default engine). Our async
//! calls are polled once with a no-op waker (a hit never waits), inside a tokio runtime context,
//! so the figure is the hit path and not an executor.
//!
//! Writes `target/criterion/l1_scaling/report.json` (or the file `LAYERCACHE_SCALING_REPORT`
//! names), which `scripts/bench_report.py` turns into a table in BENCHMARKS.md. The report
//! names the machine (CPU model and cores): `scripts/device_bench.sh` runs this benchmark,
//! built here, on a larger machine, and its report is shown beside this machine's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use layercache::{Cache, CacheExt, Engine, Layered, LoadOptions, MemoryCache};

mod support;
use support::{now, Rng};

type Value = Arc<String>;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One implementation under test: a lookup by key index that returns whether it hit.
type Lookup = Arc<dyn Fn(usize) -> bool + Send + Sync>;

fn implementations(
    keys: &Arc<Vec<String>>,
    runtime: &tokio::runtime::Runtime,
) -> Vec<(&'static str, Lookup)> {
    let value = |i: usize| Arc::new(format!("a cached completion for key {i}"));
    let n = keys.len() as u64;
    let mut out: Vec<(&'static str, Lookup)> = Vec::new();

    let moka: moka::sync::Cache<String, Value> = moka::sync::Cache::new(n * 2);
    let quick: quick_cache::sync::Cache<String, Value> =
        quick_cache::sync::Cache::new(keys.len() * 2);
    for (i, k) in keys.iter().enumerate() {
        moka.insert(k.clone(), value(i));
        quick.insert(k.clone(), value(i));
    }
    let k = Arc::clone(keys);
    out.push(("raw_moka", Arc::new(move |i| moka.get(&k[i]).is_some())));
    let k = Arc::clone(keys);
    out.push((
        "raw_quick_cache",
        Arc::new(move |i| quick.get(&k[i]).is_some()),
    ));

    let _guard = runtime.enter();
    // The quick_cache engine is also built while a Prometheus recorder is current, as in a
    // service that exports its metrics: every answer then also increments the recorder's shared
    // counter, or, with a metrics interval, only the thread's own slot (handed over every 100 ms).
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let none = metrics::NoopRecorder;
    let caches: [(&'static str, Engine, &dyn metrics::Recorder, Duration); 4] = [
        ("memory_moka", Engine::Moka, &none, Duration::ZERO),
        (
            "memory_quick_cache",
            Engine::QuickCache,
            &none,
            Duration::ZERO,
        ),
        (
            "memory_quick_cache_prometheus",
            Engine::QuickCache,
            &prometheus,
            Duration::ZERO,
        ),
        (
            "memory_quick_cache_prometheus_interval",
            Engine::QuickCache,
            &prometheus,
            Duration::from_millis(100),
        ),
    ];
    for (id, engine, recorder, interval) in caches {
        let memory: MemoryCache<Value> = metrics::with_local_recorder(recorder, || {
            MemoryCache::builder()
                .engine(engine)
                .max_entries(n * 2)
                .metrics_interval(interval)
                .build()
        })
        .expect("memory cache");
        for (i, k) in keys.iter().enumerate() {
            runtime
                .block_on(memory.set_value(k, value(i), Duration::from_secs(3600)))
                .expect("fill");
        }
        let k = Arc::clone(keys);
        if id == "memory_quick_cache" {
            let (k, memory) = (Arc::clone(&k), memory.clone());
            out.push((
                "memory_quick_cache_sync",
                Arc::new(move |i| memory.get_value_sync(&k[i]).is_some()),
            ));
        }
        out.push((
            id,
            Arc::new(move |i| now(memory.get(&k[i])).is_ok_and(|e| e.is_some())),
        ));
    }

    let l1: MemoryCache<Value> = MemoryCache::builder()
        .max_entries(n * 2)
        .build()
        .expect("memory cache");
    let layered: Layered<Value> = Layered::single(l1).build().expect("layered");
    for (i, k) in keys.iter().enumerate() {
        runtime
            .block_on(layered.set_value(k, value(i), Duration::from_secs(3600)))
            .expect("fill");
    }
    let (k, l) = (Arc::clone(keys), layered.clone());
    out.push((
        "layered_get",
        Arc::new(move |i| now(l.get(&k[i])).is_ok_and(|e| e.is_some())),
    ));
    let options = LoadOptions::ttl(Duration::from_secs(3600));
    let (k, l) = (Arc::clone(keys), layered);
    out.push((
        "layered_get_or_load",
        Arc::new(move |i| {
            now(l.get_or_load(
                &k[i],
                || async { Ok::<_, std::io::Error>(Arc::new(String::new())) },
                options.clone(),
            ))
            .is_ok()
        }),
    ));
    out
}

/// Total lookups per second with `threads` threads for `secs`.
fn measure(
    lookup: &Lookup,
    keys: usize,
    hot: bool,
    threads: usize,
    secs: f64,
    runtime: &tokio::runtime::Runtime,
) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (lookup, stop, start) = (Arc::clone(lookup), Arc::clone(&stop), Arc::clone(&start));
            let handle = runtime.handle().clone();
            std::thread::spawn(move || {
                let _guard = handle.enter();
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((t as u64 + 1) * 0x1234_5678_9abc_def1));
                start.wait();
                let mut done = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..256 {
                        let i = if hot {
                            0
                        } else {
                            (rng.next() % keys as u64) as usize
                        };
                        assert!(lookup(i), "a warm key missed");
                    }
                    done += 256;
                }
                done
            })
        })
        .collect();
    start.wait();
    let began = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let total: u64 = handles
        .into_iter()
        .map(|h| h.join().expect("bench thread"))
        .sum();
    total as f64 / began.elapsed().as_secs_f64()
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is accepted and ignored.
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let keys_n: usize = env_or("LAYERCACHE_SCALING_KEYS", 1000);
    let secs: f64 = env_or("LAYERCACHE_SCALING_SECS", 0.25);
    let rounds: usize = env_or("LAYERCACHE_SCALING_ROUNDS", 5).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let keys: Arc<Vec<String>> =
        Arc::new((0..keys_n).map(|i| format!("chat:v1:key-{i}")).collect());
    let implementations = implementations(&keys, &runtime);
    let all_threads = [1usize, 2, 4, 8, 16];
    let threads: Vec<usize> = all_threads
        .iter()
        .copied()
        .filter(|&t| t <= cores)
        .collect();
    let skipped: Vec<usize> = all_threads.iter().copied().filter(|&t| t > cores).collect();
    println!(
        "l1_scaling: {cores} cores, {keys_n} keys, {rounds} rounds of {secs} s a point; skipped (above the core count): {skipped:?}"
    );
    let raw_of = |id: &str| {
        let raw = if id.contains("quick_cache") {
            "raw_quick_cache"
        } else {
            "raw_moka"
        };
        implementations
            .iter()
            .position(|(other, _)| *other == raw)
            .expect("both raw engines are measured")
    };
    let mut results = Vec::new();
    for pattern in ["uniform", "hot"] {
        // rates[implementation][thread count][round]
        let mut rates = vec![vec![Vec::new(); threads.len()]; implementations.len()];
        for round in 0..rounds {
            for (ti, &t) in threads.iter().enumerate() {
                // Each round starts with another implementation, so that a stretch in which the
                // host takes a CPU away lands on different ones in different rounds.
                for step in 0..implementations.len() {
                    let which = (round + step) % implementations.len();
                    let lookup = &implementations[which].1;
                    let rate = measure(lookup, keys_n, pattern == "hot", t, secs, &runtime);
                    rates[which][ti].push(rate);
                }
            }
        }
        for (which, (id, _)) in implementations.iter().enumerate() {
            let raw = raw_of(id);
            let mut line = format!("{pattern:8} {id:22}");
            for (ti, &t) in threads.iter().enumerate() {
                let rate = median(rates[which][ti].clone());
                // Ours over the raw engine, paired within each round (measured moments apart).
                let vs_raw = median(
                    rates[which][ti]
                        .iter()
                        .zip(&rates[raw][ti])
                        .map(|(ours, raw)| ours / raw)
                        .collect(),
                );
                line.push_str(&format!(
                    " {t:>2}t {:>8.2} M/s ({vs_raw:.2} of raw)",
                    rate / 1e6
                ));
                results.push(format!(
                    "{{\"id\":\"{id}\",\"pattern\":\"{pattern}\",\"threads\":{t},\"ops_per_sec\":{rate:.0},\"vs_raw\":{vs_raw:.3}}}"
                ));
            }
            println!("{line}");
        }
    }
    let path = std::env::var_os("LAYERCACHE_SCALING_REPORT").map_or_else(
        || {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/criterion/l1_scaling/report.json")
        },
        std::path::PathBuf::from,
    );
    let report = format!(
        "{{\"machine\":{:?},\"cores\":{cores},\"keys\":{keys_n},\"seconds\":{secs},\"rounds\":{rounds},\"skipped_threads\":{skipped:?},\"results\":[{}]}}\n",
        cpu_model(),
        results.join(",")
    );
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&path, report));
    match written {
        Ok(()) => println!("l1_scaling: report written to {}", path.display()),
        Err(e) => eprintln!("l1_scaling: could not write {}: {e}", path.display()),
    }
}

/// The CPU's model name (Linux), for the report: figures from two machines are told apart.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

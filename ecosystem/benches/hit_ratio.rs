//! `hit_ratio`: the share of lookups each engine answers from memory, on request streams shaped
//! like real traffic. The streams are seeded and nothing is timed, so quick_cache's figures are
//! exact on any machine; moka's move by up to 0.004 between runs, because moka applies
//! reads and writes to its policy in batches, partly on a timer.
//!
//! A cache-aside client looks a key up and, on a miss, inserts it. Streams (seeded, 1,000,000
//! distinct keys; `LAYERCACHE_HIT_RATIO_REQUESTS` requests each, 2,000,000 by default):
//!
//! * `zipf_0.8`, `zipf_1.0`, `zipf_1.2`: Zipf-distributed keys with those exponents;
//! * `scan`: Zipf 1.0 traffic with a one-off scan of never-repeated keys mixed in (1 request in 4);
//! * `shift`: Zipf 1.0 whose hot set moves to other keys every quarter of the stream.
//!
//! each with a capacity of 1 % and 10 % of the distinct keys. Engines: `raw_moka`
//! (`moka::sync::Cache`, TinyLFU), `raw_quick_cache` (`quick_cache::sync::Cache`, S3-FIFO-like),
//! and `MemoryCache` on each engine (`memory_moka`, `memory_quick_cache`).
//!
//! Writes `target/criterion/hit_ratio/report.json` for `scripts/bench_report.py`.

use std::sync::Arc;
use std::time::Duration;

use layercache::{CacheExt, Engine, MemoryCache};

mod support;
use support::Rng;

const DISTINCT: usize = 1_000_000;

/// Key ranks drawn from a Zipf(s) distribution over `DISTINCT` keys (inverse CDF).
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(s: f64) -> Self {
        let mut cdf = Vec::with_capacity(DISTINCT);
        let mut total = 0.0;
        for rank in 1..=DISTINCT {
            total += 1.0 / (rank as f64).powf(s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Zipf { cdf }
    }

    fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.cdf.partition_point(|&c| c < u).min(DISTINCT - 1)
    }
}

/// The key ids of one stream.
fn stream(name: &str, requests: usize, zipf: &dyn Fn(&mut Rng) -> usize) -> Vec<u64> {
    let mut rng = Rng(0x5eed_0000_0000_0001 ^ name.len() as u64);
    let mut scan_next = DISTINCT as u64;
    (0..requests)
        .map(|i| match name {
            "scan" if i % 4 == 3 => {
                scan_next += 1;
                scan_next
            }
            "shift" => {
                let phase = (i * 4 / requests) as u64;
                // Each quarter, the ranks map to other keys.
                (zipf(&mut rng) as u64 + phase * 250_007) % DISTINCT as u64
            }
            _ => zipf(&mut rng) as u64,
        })
        .collect()
}

fn ratio(hits: usize, requests: usize) -> f64 {
    hits as f64 / requests as f64
}

fn raw_moka(keys: &[u64], capacity: usize) -> f64 {
    let cache: moka::sync::Cache<u64, ()> = moka::sync::Cache::new(capacity as u64);
    let mut hits = 0;
    for (i, &k) in keys.iter().enumerate() {
        if cache.get(&k).is_some() {
            hits += 1;
        } else {
            cache.insert(k, ());
        }
        if i % 4096 == 0 {
            cache.run_pending_tasks();
        }
    }
    ratio(hits, keys.len())
}

fn raw_quick_cache(keys: &[u64], capacity: usize) -> f64 {
    let cache: quick_cache::sync::Cache<u64, ()> = quick_cache::sync::Cache::new(capacity);
    let mut hits = 0;
    for &k in keys {
        if cache.get(&k).is_some() {
            hits += 1;
        } else {
            cache.insert(k, ());
        }
    }
    ratio(hits, keys.len())
}

fn memory(engine: Engine, keys: &[u64], capacity: usize, rt: &tokio::runtime::Runtime) -> f64 {
    let cache: MemoryCache<Arc<()>> = MemoryCache::builder()
        .engine(engine)
        .max_entries(capacity as u64)
        .build()
        .expect("memory cache");
    let value = Arc::new(());
    rt.block_on(async {
        let mut hits = 0;
        let mut key = String::new();
        for &k in keys {
            key.clear();
            key.push_str(&k.to_string());
            if cache.get_value(&key).await.expect("get").is_some() {
                hits += 1;
            } else {
                cache
                    .set_value(&key, Arc::clone(&value), Duration::from_secs(3600))
                    .await
                    .expect("set");
            }
        }
        ratio(hits, keys.len())
    })
}

fn main() {
    let requests: usize = std::env::var("LAYERCACHE_HIT_RATIO_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let zipfs: Vec<(f64, Zipf)> = [0.8, 1.0, 1.2].iter().map(|&s| (s, Zipf::new(s))).collect();
    let zipf_of = |s: f64| &zipfs.iter().find(|(x, _)| *x == s).expect("zipf").1;
    let streams: Vec<(String, Vec<u64>)> = [
        ("zipf_0.8", 0.8),
        ("zipf_1.0", 1.0),
        ("zipf_1.2", 1.2),
        ("scan", 1.0),
        ("shift", 1.0),
    ]
    .iter()
    .map(|&(name, s)| {
        let z = zipf_of(s);
        let kind = if name.starts_with("zipf") {
            "zipf"
        } else {
            name
        };
        (
            name.to_owned(),
            stream(kind, requests, &|rng| z.sample(rng)),
        )
    })
    .collect();
    println!("hit_ratio: {DISTINCT} distinct keys, {requests} requests a stream");
    let mut results = Vec::new();
    for (name, keys) in &streams {
        for percent in [1usize, 10] {
            let capacity = DISTINCT * percent / 100;
            let row = [
                ("raw_moka", raw_moka(keys, capacity)),
                ("raw_quick_cache", raw_quick_cache(keys, capacity)),
                ("memory_moka", memory(Engine::Moka, keys, capacity, &rt)),
                (
                    "memory_quick_cache",
                    memory(Engine::QuickCache, keys, capacity, &rt),
                ),
            ];
            let shown: Vec<String> = row.iter().map(|(id, r)| format!("{id} {:.3}", r)).collect();
            println!("{name:9} {percent:>2}%  {}", shown.join("  "));
            for (id, r) in row {
                results.push(format!(
                    "{{\"stream\":\"{name}\",\"capacity_percent\":{percent},\"id\":\"{id}\",\"hit_ratio\":{r:.4}}}"
                ));
            }
        }
    }
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/criterion/hit_ratio");
    let report = format!(
        "{{\"distinct\":{DISTINCT},\"requests\":{requests},\"results\":[{}]}}\n",
        results.join(",")
    );
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(dir.join("report.json"), report);
    }
}

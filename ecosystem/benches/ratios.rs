//! `ratios`: ours beside its peer, measured so the ratio holds on a busy machine.
//!
//! Two modes, over the same pairs (one thread, warm keys, a hit each call):
//!
//! * **interleaved** (the default): each pair alternates batches of the peer's and our calls,
//!   switching which side goes first every round, and times each batch; a neighbour that slows
//!   the machine slows both sides in the same windows. Writes
//!   `target/criterion/ratios/report.json` (the per-call medians and their ratio), which
//!   `scripts/bench_report.py` puts in BENCHMARKS.md.
//! * **count** (`ratios count <pair> <side> <calls>`): sets up one side, waits 3 s for the
//!   crate's clock to finish calibrating, makes `calls` calls in `counted_calls` and exits.
//!   `scripts/bench.sh` runs it under callgrind collecting only inside `counted_calls`
//!   (`--toggle-collect`), at two call counts, and takes the difference: instructions per call,
//!   a figure no neighbour can move (the same to the instruction idle and loaded). Run
//!   `scripts/bench.sh` to get both. Counting whole runs instead let the set-up and the
//!   calibration thread in: they varied by ~10M instructions between runs and moved per-call
//!   figures by up to ~200.
//!
//! The `l2_` pairs read from a `redis-server` the run starts (over loopback, client and server
//! on the same CPU when pinned): their interleaved ratio holds the whole round trip, and their
//! instruction count only the client's side of it (callgrind follows this process, not the
//! server), the part in which the clients differ. They batch and count fewer calls.
//!
//! ```text
//! cargo bench -p layercache-ecosystem --bench ratios
//! ```

use std::cell::RefCell;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cached::Cached;
use layercache::instrument::{LatencyHistogram, Timer};
use layercache::{Cache, CacheExt, Engine, Layered, LoadOptions, MemoryCache};

mod support;
use support::now;

#[cfg(all(feature = "redis", feature = "msgpack"))]
#[path = "../../tests/support/chat.rs"]
#[allow(dead_code, unreachable_pub)]
mod chat;
#[cfg(all(feature = "redis", feature = "msgpack"))]
#[path = "../../tests/support/redis.rs"]
#[allow(dead_code, unreachable_pub)]
mod redis_support;

type Value = Arc<String>;

/// Warm keys each pair looks up, in a fixed pseudo-random order.
const KEYS: usize = 1_000;

/// One side of a pair: a call by key index.
type Call = Box<dyn FnMut(usize)>;

/// `(pair, peer id, our id, what it measures)`.
const PAIRS: &[(&str, &str, &str, &str)] = &[
    (
        "l1_engine_quick_cache",
        "raw_quick_cache",
        "memory_quick_cache",
        "a hit: quick_cache::sync::Cache::get vs MemoryCache on the quick_cache engine (target ≤ 1.3)",
    ),
    (
        "l1_engine_quick_cache_sync",
        "raw_quick_cache",
        "memory_quick_cache_sync",
        "a hit: quick_cache::sync::Cache::get vs MemoryCache::get_value_sync on the quick_cache engine (target ≤ 1.3)",
    ),
    (
        "get_value_quick_cache",
        "raw_quick_cache",
        "memory_quick_cache_get_value",
        "a hit: quick_cache::sync::Cache::get vs CacheExt::get_value on the quick_cache engine",
    ),
    (
        "get_or_load_hit_quick_cache",
        "raw_quick_cache",
        "layered_get_or_load_quick_cache",
        "a warm key: quick_cache::sync::Cache::get vs Layered::get_or_load on the quick_cache engine",
    ),
    (
        "l1_engine_moka",
        "raw_moka",
        "memory_moka",
        "a hit: moka::sync::Cache::get vs MemoryCache on the moka engine",
    ),
    (
        "l1_engine_moka_sync",
        "raw_moka",
        "memory_moka_sync",
        "a hit: moka::sync::Cache::get vs MemoryCache::get_value_sync on the moka engine",
    ),
    (
        "l1_vs_cached",
        "cached_sized",
        "memory_default",
        "a hit: the cached crate's SizedCache behind a Mutex vs MemoryCache with the default engine (target ≤ 1.0)",
    ),
    (
        "get_or_load_vs_cached",
        "cached_macro",
        "layered_get_or_load",
        "a warm key: the cached crate's #[cached] async fn (size 2,000, its default features) vs Layered::get_or_load (default engine) (target ≤ 1.0)",
    ),
    (
        "get_or_load_vs_cached_quick_cache",
        "cached_macro",
        "layered_get_or_load_quick_cache",
        "a warm key: the cached crate's #[cached] async fn vs Layered::get_or_load on the quick_cache engine",
    ),
    (
        "layered_hit",
        "raw_moka",
        "layered_get",
        "a hit: moka::sync::Cache::get vs Layered::get (default engine)",
    ),
    (
        "get_or_load_hit",
        "raw_moka",
        "layered_get_or_load",
        "a warm key: moka::sync::Cache::get vs Layered::get_or_load (default engine)",
    ),
    (
        "instrument",
        "bare",
        "timed",
        "an async call vs the same call timed by a Timer (no recorder)",
    ),
    (
        "histogram_record",
        "hdrhistogram",
        "ours",
        "one record: hdrhistogram (&mut) vs our lock-free histogram (target ≤ 1.0)",
    ),
    (
        "l2_hit_redis_rs",
        "raw_redis_rs",
        "redis_cache",
        "an L2 hit of a 1 KB chat reply: a redis-rs 1.x ConnectionManager GET + the same decode vs RedisCache::get (target ≤ 1.05)",
    ),
    (
        "l2_hit_fred",
        "raw_fred",
        "redis_cache",
        "an L2 hit of a 1 KB chat reply: a fred GET + the same decode vs RedisCache::get",
    ),
];

/// Whether this build can run `pair` (the `l2_` pairs need the `redis` and `msgpack` features).
fn available(pair: &str) -> bool {
    !is_l2(pair) || cfg!(all(feature = "redis", feature = "msgpack"))
}

/// Whether `pair` reads from Redis (a server is started for it; fewer calls are batched and
/// counted).
fn is_l2(pair: &str) -> bool {
    pair.starts_with("l2_")
}

/// How many calls one counted run of `pair` makes (`scripts/bench.sh` counts this many and
/// twice as many): a Redis round trip is ~100× a memory hit, and ~50× slower under callgrind.
fn count_calls(pair: &str) -> usize {
    if is_l2(pair) {
        2_000
    } else {
        100_000
    }
}

fn value(i: usize) -> Value {
    Arc::new(format!("a cached completion for key {i}"))
}

fn keys() -> Arc<Vec<String>> {
    Arc::new(
        (0..KEYS)
            .map(|i| format!("chat:v1:model=gpt-4o:{i:08}"))
            .collect(),
    )
}

fn memory(
    engine: Option<Engine>,
    rt: &tokio::runtime::Runtime,
    keys: &[String],
) -> MemoryCache<Value> {
    let mut builder = MemoryCache::builder().max_entries(KEYS as u64 * 2);
    if let Some(engine) = engine {
        builder = builder.engine(engine);
    }
    let cache = builder.build().expect("memory cache");
    for (i, k) in keys.iter().enumerate() {
        rt.block_on(cache.set_value(k, value(i), Duration::from_secs(3600)))
            .expect("fill");
    }
    cache
}

/// The `cached` crate's macro on an async fn, as a user would wrap an async call with it: it keeps
/// the results in a static `SizedCache` behind an async mutex, keyed by the arguments (here a
/// prompt key, taken as `&str` and made a `String` for the lookup). A warm call is a hit.
#[cached::proc_macro::cached(size = 2000, key = "String", convert = r#"{ prompt.to_owned() }"#)]
async fn cached_completion(prompt: &str) -> Value {
    value(prompt.len())
}

async fn call(x: u64) -> Result<u64, std::io::Error> {
    Ok(black_box(x).wrapping_mul(0x9E37_79B9))
}

/// Build one side of a pair. `rt` must stay entered while the call is used; `redis` is the URL
/// of the server the `l2_` sides read from.
fn side(id: &str, rt: &'static tokio::runtime::Runtime, redis: Option<&str>) -> Call {
    let keys = keys();
    match id {
        "raw_redis_rs" | "raw_fred" | "redis_cache" => {
            l2::side(id, rt, redis.expect("an l2 pair has a server"), keys)
        }
        "raw_quick_cache" => {
            let cache: quick_cache::sync::Cache<String, Value> =
                quick_cache::sync::Cache::new(KEYS * 2);
            for (i, k) in keys.iter().enumerate() {
                cache.insert(k.clone(), value(i));
            }
            Box::new(move |i| {
                black_box(cache.get(keys[i].as_str()));
            })
        }
        "raw_moka" => {
            let cache: moka::sync::Cache<String, Value> = moka::sync::Cache::new(KEYS as u64 * 2);
            for (i, k) in keys.iter().enumerate() {
                cache.insert(k.clone(), value(i));
            }
            Box::new(move |i| {
                black_box(cache.get(keys[i].as_str()));
            })
        }
        "cached_sized" => {
            let cache = Mutex::new(cached::SizedCache::<String, Value>::with_size(KEYS * 2));
            for (i, k) in keys.iter().enumerate() {
                cache.lock().expect("lock").cache_set(k.clone(), value(i));
            }
            Box::new(move |i| {
                let mut cache = cache.lock().expect("lock");
                black_box(cache.cache_get(&keys[i]).cloned());
            })
        }
        "cached_macro" => {
            for k in keys.iter() {
                let _ = now(cached_completion(k));
            }
            Box::new(move |i| {
                black_box(now_in_place!(cached_completion(&keys[i])));
            })
        }
        "memory_quick_cache" | "memory_moka" | "memory_default" => {
            let engine = match id {
                "memory_quick_cache" => Some(Engine::QuickCache),
                "memory_moka" => Some(Engine::Moka),
                _ => None,
            };
            let cache = memory(engine, rt, &keys);
            Box::new(move |i| {
                black_box(now_in_place!(cache.get(&keys[i])).ok());
            })
        }
        "memory_quick_cache_get_value" => {
            let cache = memory(Some(Engine::QuickCache), rt, &keys);
            Box::new(move |i| {
                black_box(now_in_place!(cache.get_value(&keys[i])).ok());
            })
        }
        "memory_quick_cache_sync" | "memory_moka_sync" => {
            let engine = match id {
                "memory_quick_cache_sync" => Engine::QuickCache,
                _ => Engine::Moka,
            };
            let cache = memory(Some(engine), rt, &keys);
            Box::new(move |i| {
                black_box(cache.get_value_sync(&keys[i]));
            })
        }
        "layered_get" | "layered_get_or_load" | "layered_get_or_load_quick_cache" => {
            let engine = (id == "layered_get_or_load_quick_cache").then_some(Engine::QuickCache);
            let layered: Layered<Value> = Layered::single(memory(engine, rt, &keys))
                .build()
                .expect("layered");
            if id == "layered_get" {
                Box::new(move |i| {
                    black_box(now_in_place!(layered.get(&keys[i])).ok());
                })
            } else {
                Box::new(move |i| {
                    black_box(
                        now_in_place!(layered.get_or_load(
                            &keys[i],
                            || async { Ok::<_, std::io::Error>(value(0)) },
                            LoadOptions::default(),
                        ))
                        .ok(),
                    );
                })
            }
        }
        "bare" => Box::new(|i| {
            black_box(now_in_place!(call(i as u64)).ok());
        }),
        "timed" => {
            let timer = Timer::new("ratios");
            // Let the calibrated clock come up (it calibrates in the background, started by the
            // first reading). A fixed number of calls and a sleep, not calls for a fixed time:
            // under callgrind a timed loop ran a different number of calls in each run, and the
            // instruction count (a difference of two runs) moved from ~270 to ~440 with it.
            // `settle` then waits for the calibration to end.
            for _ in 0..1_000 {
                let _ = now(timer.time(call(1)));
            }
            Box::new(move |i| {
                black_box(now_in_place!(timer.time(call(i as u64))).ok());
            })
        }
        "hdrhistogram" => {
            let histogram = RefCell::new(
                hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 2)
                    .expect("bounds"),
            );
            Box::new(move |i| {
                let ns = 1_000 + (i as u64 * 2_654_435_761) % 1_000_000_000;
                let _ = black_box(histogram.borrow_mut().record(ns));
            })
        }
        "ours" => {
            let histogram = LatencyHistogram::new();
            Box::new(move |i| {
                let ns = 1_000 + (i as u64 * 2_654_435_761) % 1_000_000_000;
                histogram.record(Duration::from_nanos(black_box(ns)));
            })
        }
        other => panic!("no side called {other:?}"),
    }
}

/// Wait for the crate's clock to finish calibrating (started by the set-up's first reading, on a
/// thread of its own) before the counted calls. Under callgrind the calibration takes well over
/// 300 ms of wall time, and while it runs its thread's instructions land in the count: one pair
/// of `timed` runs read 126 instructions a call and the next 1, and a cache pair moved by up to
/// 220 instructions with the load on the machine. 3 s leaves it done in every run measured.
fn settle() {
    std::thread::sleep(Duration::from_secs(3));
}

/// The calls `scripts/bench.sh` counts: callgrind collects only inside this function
/// (`--toggle-collect`), so neither the set-up nor another thread's work is in the count.
#[inline(never)]
fn counted_calls(call: &mut Call, order: &[usize], calls: usize) {
    for n in 0..calls {
        call(order[n % order.len()]);
    }
}

/// The key indices every side walks, the same for all: a fixed permutation (seeded).
fn order() -> Vec<usize> {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut order: Vec<usize> = (0..KEYS).collect();
    for i in (1..order.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        order.swap(i, (state % (i as u64 + 1)) as usize);
    }
    order
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// What [`interleaved`] measured, in ns per call.
struct Measured {
    /// Median of the peer's batches.
    peer: f64,
    /// Median of ours.
    ours: f64,
    /// Median of `ours − peer` over the rounds (each round times both sides back to back).
    diff: f64,
    /// The tenth percentile of `ours − peer`: the figure from the machine's quietest rounds (on a
    /// shared VM whole seconds run ~2× slower while a neighbour is busy).
    diff_p10: f64,
}

/// Alternate batches of `batch` calls of `peer` and `ours` for about `secs`.
fn interleaved(peer: &mut Call, ours: &mut Call, secs: f64, batch: usize) -> Measured {
    let order = order();
    let timed = |call: &mut Call| {
        let started = Instant::now();
        for n in 0..batch {
            call(order[n % order.len()]);
        }
        started.elapsed().as_nanos() as f64 / batch as f64
    };
    // Warm both.
    timed(peer);
    timed(ours);
    let (mut p, mut o) = (Vec::new(), Vec::new());
    let started = Instant::now();
    let mut round = 0u64;
    while started.elapsed().as_secs_f64() < secs || round < 10 {
        if round.is_multiple_of(2) {
            p.push(timed(peer));
            o.push(timed(ours));
        } else {
            o.push(timed(ours));
            p.push(timed(peer));
        }
        round += 1;
    }
    let mut diffs: Vec<f64> = o.iter().zip(&p).map(|(o, p)| o - p).collect();
    diffs.sort_by(f64::total_cmp);
    Measured {
        peer: median(p),
        ours: median(o),
        diff: diffs[diffs.len() / 2],
        diff_p10: diffs[diffs.len() / 10],
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Leaked: the sides keep a `&'static` to it (the process ends with the run).
    let rt: &'static tokio::runtime::Runtime = Box::leak(Box::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime"),
    ));
    let _entered = rt.enter();
    if args.first().map(String::as_str) == Some("count") {
        let [_, pair, which, calls] = &args[..] else {
            panic!("usage: ratios count <pair> <peer|ours> <calls>");
        };
        let (_, peer, ours, _) = PAIRS
            .iter()
            .find(|p| p.0 == pair)
            .unwrap_or_else(|| panic!("no pair called {pair:?}"));
        let id = if which == "peer" { peer } else { ours };
        let calls: usize = calls.parse().expect("a call count");
        let server = is_l2(pair).then(l2::Server::start);
        let mut call = side(id, rt, server.as_ref().map(l2::Server::url).as_deref());
        settle();
        counted_calls(&mut call, &order(), calls);
        return;
    }
    if args.first().map(String::as_str) == Some("list") {
        // One line a pair: its name and how many calls a counted run makes.
        for (pair, ..) in PAIRS.iter().filter(|p| available(p.0)) {
            println!("{pair} {}", count_calls(pair));
        }
        return;
    }
    // `cargo bench` passes `--bench`; a name filter may follow.
    let filter = args.iter().find(|a| !a.starts_with("--")).cloned();
    let secs: f64 = std::env::var("LAYERCACHE_RATIO_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2.0);
    let mut rows = Vec::new();
    let mut server = None;
    for (pair, peer_id, our_id, what) in PAIRS {
        if filter.as_deref().is_some_and(|f| !pair.contains(f)) || !available(pair) {
            continue;
        }
        let url = is_l2(pair).then(|| server.get_or_insert_with(l2::Server::start).url());
        let mut peer = side(peer_id, rt, url.as_deref());
        let mut ours = side(our_id, rt, url.as_deref());
        // A batch of about the same time for every pair: 10,000 hits, 1,000 round trips.
        let batch = if is_l2(pair) { KEYS } else { KEYS * 10 };
        let m = interleaved(&mut peer, &mut ours, secs, batch);
        let (p, o) = (m.peer, m.ours);
        println!(
            "{pair:<24} {peer_id} {p:>8.1} ns   {our_id} {o:>8.1} ns   ratio {:.2}   ours − peer {:.1} ns (quietest tenth {:.1})",
            o / p,
            m.diff,
            m.diff_p10
        );
        rows.push(format!(
            "{{\"pair\":\"{pair}\",\"peer\":\"{peer_id}\",\"ours\":\"{our_id}\",\"what\":\"{what}\",\"peer_ns\":{p:.2},\"ours_ns\":{o:.2},\"ratio\":{:.4},\"diff_ns\":{:.2},\"diff_p10_ns\":{:.2}}}",
            o / p,
            m.diff,
            m.diff_p10
        ));
    }
    // A filtered run prints its pairs but leaves the full run's report alone.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/criterion/ratios");
    if filter.is_none() && std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(
            dir.join("report.json"),
            format!("{{\"secs\":{secs},\"rows\":[{}]}}\n", rows.join(",")),
        );
    }
}

/// The `l2_` sides: one `redis-server`, the same 1 KB chat replies under every key (written by
/// ours), and three clients reading them back.
#[cfg(all(feature = "redis", feature = "msgpack"))]
mod l2 {
    use std::hint::black_box;
    use std::sync::Arc;
    use std::time::Duration;

    use fred::bytes::Bytes;
    use fred::prelude::{ClientLike, KeysInterface};
    use layercache::{Cache, CacheExt, Codec, Entry, RedisCache, ValueCodec};

    use super::Call;

    use super::chat;

    pub use super::redis_support::RedisServer as Server;

    const NAMESPACE: &str = "ratios";

    /// One side. Each call runs on `rt` (current-thread: the client's connection tasks run inside
    /// the call, so a counted run counts them too).
    pub fn side(
        id: &str,
        rt: &'static tokio::runtime::Runtime,
        url: &str,
        keys: Arc<Vec<String>>,
    ) -> Call {
        let ours: RedisCache<chat::ChatReply> = rt.block_on(async {
            let cache = RedisCache::builder()
                .url(url)
                .namespace(NAMESPACE)
                .build()
                .await
                .expect("connect");
            for (i, key) in keys.iter().enumerate() {
                cache
                    .set_value(key, chat::reply(i as u64, 1024), Duration::from_secs(3600))
                    .await
                    .expect("fill");
            }
            cache
        });
        let full: Arc<Vec<String>> =
            Arc::new(keys.iter().map(|k| format!("{NAMESPACE}:{k}")).collect());
        let codec = Codec::builder().build().expect("codec");
        match id {
            "redis_cache" => Box::new(move |i| {
                let got = rt.block_on(ours.get(&keys[i])).expect("get");
                black_box(got.expect("present"));
            }),
            "raw_fred" => {
                let client = rt.block_on(async {
                    let config = fred::prelude::Config::from_url(url).expect("url");
                    let client = fred::types::Builder::from_config(config)
                        .build()
                        .expect("client");
                    client.init().await.expect("connect");
                    client
                });
                Box::new(move |i| {
                    let bytes: Option<Bytes> = rt.block_on(client.get(&full[i])).expect("get");
                    let entry: Entry<chat::ChatReply> =
                        codec.decode(&bytes.expect("present")).expect("decode");
                    black_box(entry);
                })
            }
            _ => {
                let manager = rt.block_on(async {
                    redis::Client::open(url)
                        .expect("a valid URL")
                        .get_connection_manager()
                        .await
                        .expect("connect")
                });
                Box::new(move |i| {
                    let mut con = manager.clone();
                    let bytes: Option<Vec<u8>> = rt
                        .block_on(redis::AsyncCommands::get(&mut con, &full[i]))
                        .expect("get");
                    let entry: Entry<chat::ChatReply> =
                        codec.decode(&bytes.expect("present")).expect("decode");
                    black_box(entry);
                })
            }
        }
    }
}

/// Without the `redis` feature no `l2_` pair is listed or run.
#[cfg(not(all(feature = "redis", feature = "msgpack")))]
mod l2 {
    use super::Call;

    pub struct Server;

    impl Server {
        pub fn start() -> Self {
            unreachable!("no l2 pair is available in this build")
        }
        pub fn url(&self) -> String {
            unreachable!("no l2 pair is available in this build")
        }
    }

    pub fn side(
        _: &str,
        _: &'static tokio::runtime::Runtime,
        _: &str,
        _: std::sync::Arc<Vec<String>>,
    ) -> Call {
        unreachable!("no l2 pair is available in this build")
    }
}

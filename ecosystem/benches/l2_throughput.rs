//! `l2_throughput`: L2 reads per second with 1, 16, 64 and 256 requests in flight, on a
//! multi-thread runtime, against one local `redis-server`:
//!
//! * `raw_fred`: a fred pool of the same size as ours (`DEFAULT_POOL_SIZE`, 2 connections;
//!   `LAYERCACHE_L2_POOL` sets both), `GET` of the stored bytes;
//! * `raw_fred_decode`: the same `GET`, then the same decode as ours (the default codec) — the
//!   like-for-like peer, as in the `l2_hit` group;
//! * `raw_redis_rs_decode`: redis-rs 1.x's `ConnectionManager` (the client a user might pick
//!   instead; one multiplexed connection, as it is used), `GET` and the same decode. At 1 in
//!   flight this is the interleaved L2-read comparison of the `l2_hit/raw_redis_rs` pair;
//! * `redis_cache`: `RedisCache::get` (the same `GET`, plus decoding the ~1 KB OpenAI-shaped
//!   reply);
//! * `redis_benchmark`: `redis-benchmark -c N -t get` against the same server (the server's own
//!   limit; its own value size).
//!
//! The four clients alternate: `LAYERCACHE_L2_ROUNDS` rounds (7 by default) of
//! `LAYERCACHE_L2_SECS` seconds each (0.4 s by default), each round starting with another client.
//! Each rate is the median over the rounds; each ratio (ours / a peer) is taken within a round,
//! where the two were measured back to back, and its median kept, so that a round in which the
//! host slowed the machine moves both sides of it. Writes
//! `target/criterion/l2_throughput/report.json`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::bytes::Bytes;
use fred::prelude::KeysInterface;
use layercache::{Cache, CacheExt, Codec, Entry, RedisCache, ValueCodec};

#[path = "../../tests/support/chat.rs"]
#[allow(dead_code, unreachable_pub)]
mod chat;
#[path = "../../tests/support/redis.rs"]
#[allow(dead_code, unreachable_pub)]
mod redis_support;

const KEYS: usize = 1000;

/// Reads per second with `in_flight` tasks each calling `read` in a loop for `secs`.
async fn rate<F, Fut>(in_flight: usize, secs: f64, read: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let read = Arc::new(read);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..in_flight)
        .map(|t| {
            let (read, stop, done) = (Arc::clone(&read), Arc::clone(&stop), Arc::clone(&done));
            tokio::spawn(async move {
                let mut i = t * 7919;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    assert!(read(i % KEYS).await, "a stored key was not read");
                    i += 1;
                    n += 1;
                }
                done.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("reader task");
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// The rates of one level of requests in flight, and ours over each peer.
struct Row {
    in_flight: usize,
    /// Median reads per second: raw fred, fred + decode, redis-rs + decode, ours.
    rates: [f64; 4],
    /// Median over the rounds of ours / each peer in the same round.
    ratios: [f64; 3],
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `redis-benchmark -c clients -t get` requests per second, if the tool is there.
fn redis_benchmark(port: u16, clients: usize) -> Option<f64> {
    let out = std::process::Command::new("redis-benchmark")
        .args(["-p", &port.to_string(), "-c", &clients.to_string()])
        .args(["-t", "get", "-n", "200000", "-d", "1024", "-q"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "GET: 123456.79 requests per second, p50=0.151 msec"
    let line = text.lines().rev().find(|l| l.contains("GET:"))?;
    let tail = line.rsplit("GET:").next()?;
    tail.split_whitespace().next()?.parse().ok()
}

fn main() {
    let secs: f64 = std::env::var("LAYERCACHE_L2_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.4);
    let rounds: usize = std::env::var("LAYERCACHE_L2_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&r| r > 0)
        .unwrap_or(7);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    // Connections for both clients (`LAYERCACHE_L2_POOL`, default: ours).
    let pool_size: usize = std::env::var("LAYERCACHE_L2_POOL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(layercache::redis::DEFAULT_POOL_SIZE);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .expect("runtime");
    let server = redis_support::RedisServer::start();
    let url = server.url();
    let results = runtime.block_on(async move {
        let ours: RedisCache<chat::ChatReply> = RedisCache::builder()
            .url(&url)
            .pool_size(pool_size)
            .namespace("l2t")
            .build()
            .await
            .expect("connect");
        for i in 0..KEYS {
            ours.set_value(
                &format!("k{i}"),
                chat::reply(i as u64, 1024),
                Duration::from_secs(3600),
            )
            .await
            .expect("fill");
        }
        let raw = {
            use fred::prelude::ClientLike;
            let config = fred::prelude::Config::from_url(&url).expect("url");
            let pool = fred::types::Builder::from_config(config)
                .build_pool(pool_size)
                .expect("pool");
            pool.init().await.expect("connect");
            pool
        };
        let redis_rs = redis::Client::open(url.as_str())
            .expect("a valid URL")
            .get_connection_manager()
            .await
            .expect("connect");
        let ours = Arc::new(ours);
        let codec = Arc::new(Codec::builder().build().expect("codec"));
        let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|i| format!("l2t:k{i}")).collect());
        let short: Arc<Vec<String>> = Arc::new((0..KEYS).map(|i| format!("k{i}")).collect());
        let mut results = Vec::new();
        for in_flight in [1usize, 16, 64, 256] {
            // rates[round][client]: raw fred, fred + decode, redis-rs + decode, ours.
            let mut rates = Vec::new();
            for round in 0..rounds {
                let mut row = [0.0f64; 4];
                // Each round starts with another client, so none is always measured first.
                for step in 0..4 {
                    let client = (round + step) % 4;
                    let (keys, short, codec) =
                        (Arc::clone(&keys), Arc::clone(&short), Arc::clone(&codec));
                    row[client] = match client {
                        0 => {
                            let pool = raw.clone();
                            rate(in_flight, secs, move |i| {
                                let (pool, keys) = (pool.clone(), Arc::clone(&keys));
                                async move {
                                    let got: Option<Bytes> =
                                        pool.next().get(&keys[i]).await.expect("raw get");
                                    got.is_some()
                                }
                            })
                            .await
                        }
                        1 => {
                            let pool = raw.clone();
                            rate(in_flight, secs, move |i| {
                                let (pool, keys, codec) =
                                    (pool.clone(), Arc::clone(&keys), Arc::clone(&codec));
                                async move {
                                    let got: Option<Bytes> =
                                        pool.next().get(&keys[i]).await.expect("raw get");
                                    let entry: Option<Entry<chat::ChatReply>> =
                                        got.map(|b| codec.decode(&b).expect("decode"));
                                    entry.is_some()
                                }
                            })
                            .await
                        }
                        2 => {
                            let con = redis_rs.clone();
                            rate(in_flight, secs, move |i| {
                                let (mut con, keys, codec) =
                                    (con.clone(), Arc::clone(&keys), Arc::clone(&codec));
                                async move {
                                    let got: Option<Vec<u8>> =
                                        redis::AsyncCommands::get(&mut con, &keys[i])
                                            .await
                                            .expect("redis-rs get");
                                    let entry: Option<Entry<chat::ChatReply>> =
                                        got.map(|b| codec.decode(&b).expect("decode"));
                                    entry.is_some()
                                }
                            })
                            .await
                        }
                        _ => {
                            let cache = Arc::clone(&ours);
                            rate(in_flight, secs, move |i| {
                                let (cache, keys) = (Arc::clone(&cache), Arc::clone(&short));
                                async move { cache.get(&keys[i]).await.expect("get").is_some() }
                            })
                            .await
                        }
                    };
                }
                rates.push(row);
            }
            let of = |client: usize| median(rates.iter().map(|r| r[client]).collect());
            // Each ratio paired within its round (the four were measured back to back), then
            // the median over the rounds: a round the host slowed moves both sides.
            let paired = |peer: usize| median(rates.iter().map(|r| r[3] / r[peer]).collect());
            results.push(Row {
                in_flight,
                rates: [of(0), of(1), of(2), of(3)],
                ratios: [paired(0), paired(1), paired(2)],
            });
        }
        results
    });
    println!(
        "l2_throughput: {cores} cores, {KEYS} keys of ~1 KB, {rounds} alternating rounds of {secs} s (median)"
    );
    let mut rows = Vec::new();
    for Row {
        in_flight,
        rates: [raw, decode, rs, ours],
        ratios,
    } in results
    {
        let benchmark = redis_benchmark(server.port, in_flight);
        println!(
            "{in_flight:>4} in flight: raw_fred {:>9.0}/s  raw_fred_decode {:>9.0}/s  raw_redis_rs_decode {:>9.0}/s  redis_cache {:>9.0}/s  paired ratio {:.2} / {:.2} / {:.2}  redis-benchmark {}",
            raw,
            decode,
            rs,
            ours,
            ratios[0],
            ratios[1],
            ratios[2],
            benchmark.map_or("—".to_owned(), |b| format!("{b:.0}/s"))
        );
        rows.push(format!(
            "{{\"in_flight\":{in_flight},\"raw_fred\":{raw:.0},\"raw_fred_decode\":{decode:.0},\"raw_redis_rs_decode\":{rs:.0},\"redis_cache\":{ours:.0},\"ratio_raw_fred\":{:.3},\"ratio_fred_decode\":{:.3},\"ratio_redis_rs_decode\":{:.3},\"redis_benchmark\":{}}}",
            ratios[0],
            ratios[1],
            ratios[2],
            benchmark.map_or("null".to_owned(), |b| format!("{b:.0}"))
        ));
    }
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/criterion/l2_throughput");
    let report = format!(
        "{{\"cores\":{cores},\"pool_size\":{pool_size},\"seconds\":{secs},\"rounds\":{rounds},\"results\":[{}]}}\n",
        rows.join(",")
    );
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(dir.join("report.json"), report);
    }
}

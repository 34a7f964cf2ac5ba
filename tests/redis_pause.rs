//! `CLIENT PAUSE … WRITE` on a real server: reads stay fast, writes fail within their timeout,
//! and a write is applied at most once.

#![cfg(all(feature = "redis", feature = "postcard"))]

mod support;

use std::time::{Duration, Instant};

use layercache::{CacheExt, RedisCache};
use support::redis::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_pause_write_keeps_reads_fast_and_bounds_writes() {
    let server = RedisServer::start();
    let cache: RedisCache<String> = RedisCache::builder()
        .url(server.url())
        .namespace("p")
        .command_timeout(Duration::from_millis(250))
        .build()
        .await
        .expect("connect");
    for i in 0..50 {
        cache
            .set_value(&format!("k{i}"), format!("v{i}"), Duration::from_secs(60))
            .await
            .expect("set");
    }
    server.cli(&["client", "pause", "2000", "write"]);
    let paused_at = Instant::now();

    // A write blocks its connection at the server; fail within the timeout.
    let started = Instant::now();
    let write = cache
        .set_value("k0", "during-pause".into(), Duration::from_secs(60))
        .await;
    let write_took = started.elapsed();
    assert!(write.is_err(), "a write during the pause fails: {write:?}");
    assert!(write_took <= Duration::from_millis(300), "{write_took:?}");

    // Reads of every key (on every connection) stay fast while writes are paused.
    let mut slowest_read = Duration::ZERO;
    for i in 0..50 {
        let started = Instant::now();
        let v = cache.get_value(&format!("k{i}")).await;
        slowest_read = slowest_read.max(started.elapsed());
        assert!(v.is_ok(), "read k{i} during the pause: {v:?}");
    }
    println!("during CLIENT PAUSE WRITE: write failed after {write_took:?}; slowest of 50 reads {slowest_read:?}");
    assert!(
        paused_at.elapsed() < Duration::from_millis(1500),
        "measured inside the pause"
    );
    assert!(
        slowest_read < Duration::from_millis(50),
        "reads stay fast: {slowest_read:?}"
    );

    // After the pause the timed-out write may land once (Redis queued it); it is not replayed.
    tokio::time::sleep(Duration::from_millis(2200).saturating_sub(paused_at.elapsed())).await;
    let stats = server.cli(&["info", "commandstats"]);
    let sets: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_set:calls="))
        .and_then(|v| v.split(',').next())
        .and_then(|n| n.parse().ok())
        .expect("SET calls");
    assert!(
        sets <= 51,
        "50 initial SETs plus at most one for the paused write: {sets}"
    );
    cache
        .set_value("k0", "after".into(), Duration::from_secs(60))
        .await
        .expect("writes resume");
    assert_eq!(
        cache.get_value("k0").await.expect("get").as_deref(),
        Some("after")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_memory_writes_are_counted_and_loads_still_answer() {
    use layercache::{Layered, LoadOptions, MemoryCache};

    let server =
        RedisServer::start_with(&["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"]);
    let l2: RedisCache<String> = RedisCache::builder()
        .url(server.url())
        .namespace("oom")
        .build()
        .await
        .expect("connect");
    let l1 = MemoryCache::builder().name("l1").build().expect("l1");
    let cache = Layered::builder(l1, l2.clone())
        .name("oom")
        .build()
        .expect("layered");
    for i in 0..500u64 {
        // Varied text: it compresses only about 3×, so 500 values far exceed 2 MB.
        let v = support::chat::text(i, 10_000);
        let got = cache
            .get_or_load(
                &format!("k{i}"),
                move || async move { Ok::<_, std::io::Error>(v) },
                LoadOptions::ttl(Duration::from_secs(60)),
            )
            .await
            .expect("get_or_load answers although Redis refuses writes");
        assert!(got.len() >= 10_000, "{}", got.len());
    }
    // Give the last L2 writes (made just after each answer) time to fail.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let errors = l2.stats().errors;
    let used: u64 = server
        .cli(&["info", "memory"])
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory");
    println!("maxmemory 2mb: {errors} L2 write errors counted; Redis holds {used} bytes");
    assert!(errors > 0, "OOM refusals are counted as write errors");
    assert!(used < 3 << 20, "Redis stayed near its limit: {used}");
    assert_eq!(cache.stats().loads, 500);
}

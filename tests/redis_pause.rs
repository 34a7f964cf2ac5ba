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

/// Redis at its `maxmemory` under `noeviction` (the default policy) refuses every write with
/// `OOM` but serves everything it holds. A replica restarted then must keep reading those values
/// (not reload them from the loader, which an open circuit would make it do), and the writes
/// Redis refused reach it once it has room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_still_serves_what_it_holds_and_takes_the_refused_writes_later() {
    use layercache::{CircuitState, Layered, LoadOptions, MemoryCache, Source};

    let server =
        RedisServer::start_with(&["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"]);
    let redis = |namespace: &'static str| {
        let url = server.url();
        async move {
            RedisCache::<String>::builder()
                .url(url)
                .namespace(namespace)
                .build()
                .await
                .expect("connect")
        }
    };
    let ttl = Duration::from_secs(600);
    // 50 replies cached while Redis had room.
    let l2 = redis("oom").await;
    for i in 0..50u64 {
        l2.set_value(&format!("old{i}"), support::chat::text(i, 2_000), ttl)
            .await
            .expect("set while Redis has room");
    }
    // Other data fills Redis to its limit (varied text compresses only about 3×).
    let junk = redis("junk").await;
    let mut filled = 0u64;
    while junk
        .set_value(
            &format!("j{filled}"),
            support::chat::text(filled, 10_000),
            ttl,
        )
        .await
        .is_ok()
    {
        filled += 1;
        assert!(filled < 10_000, "Redis never reported itself full");
    }

    // A replica restarted now: an empty L1 in front of the full Redis.
    let cache = Layered::builder(
        MemoryCache::builder().build().expect("l1"),
        redis("oom").await,
    )
    .name("oom")
    .build()
    .expect("layered");
    let mut from_redis = 0;
    for i in 0..100u64 {
        let expected = support::chat::text(1_000 + i, 2_000);
        let fresh = expected.clone();
        let got = cache
            .get_or_load(
                &format!("new{i}"),
                move || async move { Ok::<_, std::io::Error>(fresh) },
                LoadOptions::ttl(ttl),
            )
            .await
            .expect("get_or_load answers although Redis refuses writes");
        assert_eq!(got, expected);
        if i < 50 {
            let old = cache
                .get_or_load_answer(
                    &format!("old{i}"),
                    || async { Ok::<_, std::io::Error>("reloaded".to_owned()) },
                    LoadOptions::ttl(ttl),
                )
                .await
                .expect("old value");
            assert_eq!(old.value, support::chat::text(i, 2_000));
            from_redis += usize::from(old.source == Source::L2Hit);
        }
    }
    let circuit = cache.health()[1].circuit;
    println!(
        "Redis full after {filled} other values: {from_redis} of 50 held replies read from it, circuit {circuit:?}, {:?}",
        cache.stats()
    );
    assert_eq!(
        from_redis, 50,
        "every reply Redis holds is read from it, none reloaded"
    );
    assert_eq!(cache.stats().loads, 100, "only the new keys were loaded");
    assert_eq!(
        circuit,
        CircuitState::Closed,
        "a full Redis is not an outage"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while cache.stats().errors < 100 {
        assert!(
            Instant::now() < deadline,
            "refused writes counted: {:?}",
            cache.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Replacing a value Redis holds while it is full: the write is refused, and the older value
    // is deleted (a full Redis takes deletes), so no replica told of the change reads it back.
    cache
        .set_value("old7", "replaced while full".into(), ttl)
        .await
        .expect("set");
    assert_eq!(l2.get_value("old7").await.expect("get"), None);
    assert_eq!(
        cache.get_value("old7").await.expect("get").as_deref(),
        Some("replaced while full")
    );

    // Room again (the other data expires or is deleted): the refused writes are caught up.
    assert_eq!(junk.invalidate_prefix("").await.expect("delete"), filled);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Any successful L2 call lets the catch-up run.
        cache.get_value("absent").await.expect("get");
        let mut missing = usize::from(l2.get_value("old7").await.expect("get").is_none());
        for i in 0..100u64 {
            missing += usize::from(
                l2.get_value(&format!("new{i}"))
                    .await
                    .expect("get")
                    .is_none(),
            );
        }
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of 101 refused writes never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        l2.get_value("new7").await.expect("get").as_deref(),
        Some(support::chat::text(1_007, 2_000).as_str())
    );
    assert_eq!(
        l2.get_value("old7").await.expect("get").as_deref(),
        Some("replaced while full")
    );
}

//! `Layered` (memory L1 + real Redis L2) against time: soft and hard timeouts, early refresh
//! (a fraction of the lifetime, and XFetch), jitter.

#![cfg(all(feature = "redis", feature = "postcard"))]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use layercache::{Cache, CacheExt, Entry, Error, LoadOptions};
use support::layered::{assert_accounting, counting, stack, Down};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_timeout_answers_stale_and_the_load_finishes_in_both_layers() {
    let s = stack().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let opts = LoadOptions::ttl(Duration::from_millis(100)).with_fail_safe(Duration::from_secs(60));
    s.cache
        .get_or_load(
            "k",
            counting(&calls, Ok("old"), Duration::ZERO),
            opts.clone(),
        )
        .await
        .expect("load");
    tokio::time::sleep(Duration::from_millis(150)).await;

    let started = Instant::now();
    let v = s
        .cache
        .get_or_load(
            "k",
            counting(&calls, Ok("new"), Duration::from_secs(2)),
            opts.clone()
                .with_ttl(Duration::from_secs(60))
                .with_soft_timeout(Duration::from_millis(100)),
        )
        .await
        .expect("stale after the soft timeout");
    let took = started.elapsed();
    println!("soft timeout: stale value after {took:?}");
    assert_eq!(v, "old");
    assert!(took < Duration::from_millis(150), "{took:?}");

    // The load goes on in the background: wait (with a deadline) for it to land in L1.
    let deadline = Instant::now() + Duration::from_secs(10);
    while s
        .l1
        .peek("k")
        .await
        .expect("peek")
        .map(Entry::into_value)
        .as_deref()
        != Some("new")
    {
        assert!(
            Instant::now() < deadline,
            "the background load never landed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // L2 is written just after L1.
    while s.cache.pending_loads() > 0 {
        assert!(Instant::now() < deadline, "the L2 write never finished");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        s.l1.get_value("k").await.expect("l1").as_deref(),
        Some("new"),
        "fresh value in L1"
    );
    assert_eq!(
        s.l2.get_value("k").await.expect("l2").as_deref(),
        Some("new"),
        "fresh value in L2"
    );
    assert_eq!(
        s.cache
            .get_or_load("k", counting(&calls, Ok("x"), Duration::ZERO), opts)
            .await
            .expect("hit"),
        "new"
    );
    assert_accounting(s.cache.stats(), 3, calls.load(Ordering::SeqCst));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_timeout_without_a_stale_value_is_an_error_at_the_limit() {
    let s = stack().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let err = s
        .cache
        .get_or_load(
            "cold",
            counting(&calls, Ok("slow"), Duration::from_secs(1)),
            LoadOptions::ttl(Duration::from_secs(60)).with_hard_timeout(Duration::from_millis(300)),
        )
        .await
        .expect_err("timed out");
    let took = started.elapsed();
    println!("hard timeout: Error::Timeout after {took:?}");
    assert!(
        matches!(err, Error::Timeout { after } if after == Duration::from_millis(300)),
        "{err:?}"
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(380),
        "{took:?}"
    );
    // The load went on and was cached: wait for it (with a deadline), uncounted.
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.l1.peek("cold").await.expect("peek").is_none() {
        assert!(Instant::now() < deadline, "the load never landed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        s.cache.get_value("cold").await.expect("get").as_deref(),
        Some("slow")
    );
    assert_eq!(s.cache.stats().timeouts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn early_refresh_loads_once_in_the_background() {
    let s = stack().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let opts = LoadOptions::ttl(Duration::from_secs(1)).with_early_refresh(0.5);
    s.cache
        .get_or_load(
            "k",
            counting(&calls, Ok("v1"), Duration::ZERO),
            opts.clone(),
        )
        .await
        .expect("load");
    tokio::time::sleep(Duration::from_millis(600)).await; // past 50 % of the lifetime

    let started = Instant::now();
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (cache, calls, opts) = (s.cache.clone(), calls.clone(), opts.clone());
            tokio::spawn(async move {
                let t = Instant::now();
                let v = cache
                    .get_or_load(
                        "k",
                        counting(&calls, Ok("v2"), Duration::from_millis(300)),
                        opts,
                    )
                    .await;
                (v, t.elapsed())
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for task in tasks {
        let (v, took) = task.await.expect("no panic");
        assert_eq!(
            v.expect("hit").as_str(),
            "v1",
            "answered with the current value"
        );
        slowest = slowest.max(took);
    }
    let all = started.elapsed();
    println!("early refresh: 1,000 hits in {all:?}, slowest {slowest:?}");
    // Nobody waited for the 300 ms refresh: every caller got the current value ("v1"); one
    // that waited would have got "v2". Wait (with a deadline) for the refresh to land.
    let deadline = Instant::now() + Duration::from_secs(5);
    // Polled through L1 without counting, so the accounting below stays exact.
    while s
        .l1
        .peek("k")
        .await
        .expect("peek")
        .map(Entry::into_value)
        .as_deref()
        != Some("v2")
    {
        assert!(Instant::now() < deadline, "the refresh never landed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "exactly one background load"
    );
    assert_eq!(
        s.cache.get_value("k").await.expect("get").as_deref(),
        Some("v2")
    );
    let stats = s.cache.stats();
    assert_eq!(stats.hits, 1001, "the 1,000 hits and the final read");
    assert_accounting(stats, 1002, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfetch_refreshes_early_in_proportion_to_the_load_time() {
    let s = stack().await;
    let calls = Arc::new(AtomicUsize::new(0));
    // A value that took 300 ms to load and has ~1 s left: with beta 1, P(refresh) per hit is
    // exp(-1000/300) ≈ 3.6 %, so 200 hits refresh (almost surely: 1 - 0.964^200 > 99.9 %).
    s.cache
        .get_or_load(
            "slow",
            counting(&calls, Ok("v1"), Duration::from_millis(300)),
            LoadOptions::ttl(Duration::from_millis(1300)),
        )
        .await
        .expect("load");
    // The first flight finishes its L2 write just after answering; a refresh waits for it.
    while s.cache.pending_loads() > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let opts = LoadOptions::ttl(Duration::from_secs(60)).with_xfetch(1.0);
    // Hit once a millisecond until a refresh starts. XFetch's chance per hit rises towards 1 as
    // expiry nears, so a refresh starts before the value expires (a hit that found it expired
    // would load and answer "v2", failing the assertion): with 1,000 ms left the chance is
    // already 3.6 % per hit.
    let mut hits = 0;
    while calls.load(Ordering::SeqCst) < 2 {
        assert_eq!(
            s.cache
                .get_or_load(
                    "slow",
                    counting(&calls, Ok("v2"), Duration::ZERO),
                    opts.clone()
                )
                .await
                .expect("hit"),
            "v1",
            "refreshed early, while the value was still fresh"
        );
        hits += 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!("XFetch started a refresh after {hits} hits");
    // The refresh runs in the background: wait for it (with a deadline), never a fixed sleep.
    let deadline = Instant::now() + Duration::from_secs(5);
    while s
        .l1
        .peek("slow")
        .await
        .expect("peek")
        .map(Entry::into_value)
        .as_deref()
        != Some("v2")
    {
        assert!(Instant::now() < deadline, "the early refresh never landed");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one early refresh");
    assert_eq!(
        s.cache.get_value("slow").await.expect("get").as_deref(),
        Some("v2")
    );

    // A value that loaded in 1 ms with a minute left is (practically) never refreshed early.
    s.cache
        .get_or_load(
            "fast",
            counting(&calls, Ok("f1"), Duration::from_millis(1)),
            opts.clone(),
        )
        .await
        .expect("load");
    while s.cache.pending_loads() > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for _ in 0..200 {
        s.cache
            .get_or_load(
                "fast",
                counting(&calls, Ok("f2"), Duration::ZERO),
                opts.clone(),
            )
            .await
            .expect("hit");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "no refresh for a cheap value far from expiry"
    );
    assert_accounting(s.cache.stats(), hits + 203, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jitter_spreads_expiries() {
    let s = stack().await;
    let opts = LoadOptions::ttl(Duration::from_secs(60)).with_jitter(Duration::from_secs(10));
    let mut deadlines = Vec::new();
    for i in 0..50 {
        let key = format!("j{i}");
        s.cache
            .get_or_load(
                &key,
                || async { Ok::<_, Down>("v".to_string()) },
                opts.clone(),
            )
            .await
            .expect("load");
        let left =
            s.l1.get(&key)
                .await
                .expect("get")
                .expect("cached")
                .time_to_fresh_end();
        assert!(
            left > Duration::from_secs(59) && left <= Duration::from_secs(70),
            "{left:?}"
        );
        deadlines.push(left.as_millis());
    }
    deadlines.sort_unstable();
    let spread = deadlines[deadlines.len() - 1] - deadlines[0];
    println!("50 keys written together expire over a spread of {spread} ms");
    assert!(spread > 5_000, "expiries are spread out: {spread} ms");
}

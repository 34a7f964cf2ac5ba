//! `Layered` (memory L1 + real Redis L2): backfill, fail-safe, concurrency limit, admission and
//! negative caching, warm-up, deletes, breaker settings — and the accounting: hits + misses +
//! stale = requests, loads = the loader's own count. Timeouts and early refresh:
//! `layered_refresh.rs`.

#![cfg(all(feature = "redis", feature = "postcard"))]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use layercache::{Cache, CacheExt, Entry, Error, Layered, LoadOptions, MemoryCache, RedisCache};
use support::layered::{assert_accounting, counting, stack, stack_with, Down};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_l2_hit_backfills_l1_with_the_remaining_lifetime() {
    let s = stack().await;
    s.l2.set(
        "k",
        Entry::new("from-l2".to_string(), Duration::from_secs(10)),
    )
    .await
    .expect("set l2");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let got = s.cache.get("k").await.expect("get").expect("l2 hit");
    assert_eq!(got.value(), "from-l2");
    let in_l1 = s.l1.get("k").await.expect("get").expect("backfilled");
    let left = in_l1.time_to_fresh_end();
    println!("backfilled into L1 with {left:?} left (written with 10 s, read after 4 s)");
    assert!(
        left > Duration::from_millis(5_500) && left <= Duration::from_secs(6),
        "{left:?}"
    );
    // The next read is an L1 hit.
    let l2_hits = s.l2.stats().hits;
    assert_eq!(
        s.cache.get_value("k").await.expect("get").as_deref(),
        Some("from-l2")
    );
    assert_eq!(s.l2.stats().hits, l2_hits, "served by L1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_safe_serves_stale_values_throttles_and_gives_up_past_max_stale() {
    let s = stack().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let opts = LoadOptions::ttl(Duration::from_millis(200))
        .with_fail_safe(Duration::from_millis(1500))
        .with_fail_safe_throttle(Duration::from_millis(500));
    let mut requests = 0;
    let v = s
        .cache
        .get_or_load(
            "k",
            counting(&calls, Ok("v1"), Duration::ZERO),
            opts.clone(),
        )
        .await
        .expect("load");
    requests += 1;
    assert_eq!(v, "v1");
    tokio::time::sleep(Duration::from_millis(300)).await; // expired, still within max_stale

    let v = s
        .cache
        .get_or_load(
            "k",
            counting(&calls, Err(Down), Duration::ZERO),
            opts.clone(),
        )
        .await
        .expect("fail-safe");
    requests += 1;
    assert_eq!(v, "v1", "the stale value instead of the error");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(s.cache.stats().fail_safe, 1, "outcome=fail_safe counted");

    // Within the throttle: served without calling the loader.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let v = s
            .cache
            .get_or_load(
                "k",
                counting(&calls, Err(Down), Duration::ZERO),
                opts.clone(),
            )
            .await
            .expect("throttled");
        requests += 1;
        assert_eq!(v, "v1");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the loader is not called again within the throttle"
    );

    // After the throttle, the loader is tried again (and fails again: stale once more).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let v = s
        .cache
        .get_or_load(
            "k",
            counting(&calls, Err(Down), Duration::ZERO),
            opts.clone(),
        )
        .await
        .expect("fail-safe");
    requests += 1;
    assert_eq!(v, "v1");
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // Past max_stale the error reaches the caller.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let err = s
        .cache
        .get_or_load(
            "k",
            counting(&calls, Err(Down), Duration::ZERO),
            opts.clone(),
        )
        .await
        .expect_err("too old");
    requests += 1;
    assert!(matches!(err, Error::Loader(_)), "{err:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    let stats = s.cache.stats();
    assert_eq!((stats.fail_safe, stats.load_errors), (2, 3));
    assert_accounting(stats, requests, calls.load(Ordering::SeqCst));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_most_n_loads_run_at_once() {
    let s = stack_with(|b| b.max_concurrent_loads(4)).await;
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let (cache, running, peak, calls) = (
                s.cache.clone(),
                running.clone(),
                peak.clone(),
                calls.clone(),
            );
            tokio::spawn(async move {
                cache
                    .get_or_load(
                        &format!("cold-{i}"),
                        move || async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(now, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            running.fetch_sub(1, Ordering::SeqCst);
                            Ok::<_, Down>(format!("v{i}"))
                        },
                        LoadOptions::ttl(Duration::from_secs(60)),
                    )
                    .await
            })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.await.expect("no panic").expect("ok"), format!("v{i}"));
    }
    let peak = peak.load(Ordering::SeqCst);
    println!("peak concurrent loads: {peak} (limit 4)");
    assert!(peak <= 4, "{peak}");
    assert_eq!(peak, 4, "the limit is actually used");
    assert_accounting(s.cache.stats(), 100, calls.load(Ordering::SeqCst));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_and_negative_caching() {
    let s = stack_with(|b| {
        b.admit(|v: &String| !v.ends_with("[truncated]"))
            .negative(|v: &String| v.is_empty(), Duration::from_millis(200))
    })
    .await;
    let calls = Arc::new(AtomicUsize::new(0));
    let opts = LoadOptions::ttl(Duration::from_secs(60));
    // A truncated reply is returned but not stored.
    for _ in 0..2 {
        let v = s
            .cache
            .get_or_load(
                "t",
                counting(&calls, Ok("half an answer [truncated]"), Duration::ZERO),
                opts.clone(),
            )
            .await;
        assert_eq!(v.expect("ok"), "half an answer [truncated]");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "not admitted: loaded each time"
    );
    assert!(s.l2.get("t").await.expect("get").is_none());
    // A not-found is cached, briefly.
    for _ in 0..3 {
        assert_eq!(
            s.cache
                .get_or_load("nf", counting(&calls, Ok(""), Duration::ZERO), opts.clone())
                .await
                .expect("ok"),
            ""
        );
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "the negative result was cached"
    );
    let entry = s.l1.get("nf").await.expect("get").expect("cached");
    assert!(entry.time_to_fresh_end() <= Duration::from_millis(200));
    tokio::time::sleep(Duration::from_millis(250)).await;
    s.cache
        .get_or_load("nf", counting(&calls, Ok(""), Duration::ZERO), opts)
        .await
        .expect("ok");
    assert_eq!(calls.load(Ordering::SeqCst), 4, "negative lifetime expired");
    assert_accounting(s.cache.stats(), 6, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warm_loads_what_is_missing_with_bounded_concurrency() {
    let s = stack().await;
    s.cache
        .set("k3", Entry::new("already".into(), Duration::from_secs(60)))
        .await
        .expect("set");
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (r, p) = (running.clone(), peak.clone());
    let keys: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    let report = s
        .cache
        .warm(
            &keys,
            move |key: String| {
                let (running, peak) = (r.clone(), p.clone());
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    if key == "k7" {
                        Err(Down)
                    } else {
                        Ok(format!("warm {key}"))
                    }
                }
            },
            3,
            LoadOptions::ttl(Duration::from_secs(60)),
        )
        .await
        .expect("warm");
    assert_eq!(
        (report.loaded, report.skipped, report.failed),
        (18, 1, 1),
        "{report:?}"
    );
    assert!(peak.load(Ordering::SeqCst) <= 3);
    assert_eq!(
        s.l2.get_value("k5").await.expect("get").as_deref(),
        Some("warm k5")
    );
    assert_eq!(
        s.l1.get_value("k3").await.expect("get").as_deref(),
        Some("already")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_reach_both_layers_and_stacks_nest() {
    let s = stack().await;
    s.cache
        .set("k", Entry::new("v".into(), Duration::from_secs(60)))
        .await
        .expect("set");
    assert!(
        s.l1.get("k").await.expect("l1").is_some() && s.l2.get("k").await.expect("l2").is_some()
    );
    s.cache.delete("k").await.expect("delete");
    assert!(
        s.l1.get("k").await.expect("l1").is_none() && s.l2.get("k").await.expect("l2").is_none()
    );

    // Three levels: memory → (memory → Redis), composed through trait objects.
    let top: Arc<dyn Cache<String>> =
        Arc::new(MemoryCache::builder().name("l0").build().expect("l0"));
    let three = Layered::builder(top, s.cache.clone())
        .name("three")
        .build()
        .expect("three");
    three
        .get_or_load(
            "deep",
            || async { Ok::<_, Down>("d".to_string()) },
            LoadOptions::default(),
        )
        .await
        .expect("load");
    // L2 is written just after the callers are answered.
    let deadline = Instant::now() + Duration::from_secs(1);
    while s.l2.get_value("deep").await.expect("l2").as_deref() != Some("d") {
        assert!(Instant::now() < deadline, "never reached the bottom layer");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let err = Layered::<String>::builder(s.l1.clone(), s.l2.clone())
        .max_concurrent_loads(0)
        .build();
    assert!(matches!(err, Err(Error::Config { .. })));
}

/// Breaker settings a user may reach for: a NaN failure rate, or a breaker on a stack without
/// L2, cannot be honoured (errors at build), and a break of `Duration::MAX` ("until
/// restarted") opens without overflowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_settings_at_the_extremes() {
    use layercache::{BreakerConfig, CircuitState};
    let memory = || MemoryCache::<String>::builder().build().expect("l1");
    match Layered::single(memory())
        .breaker(BreakerConfig::default())
        .build()
    {
        Err(Error::Config { reason }) => assert!(reason.contains("L2"), "{reason}"),
        other => panic!("a breaker without an L2 was taken: {other:?}"),
    }

    // Nothing listens on port 1: every L2 command fails at once.
    let down = RedisCache::<String>::builder()
        .url("redis://127.0.0.1:1")
        .connect_timeout(Duration::from_millis(200))
        .build()
        .await
        .expect("a down server does not fail the build");
    let nan = Layered::builder(memory(), down.clone())
        .breaker(BreakerConfig::default().failure_rate(f64::NAN, 10))
        .build();
    match nan {
        Err(Error::Config { reason }) => assert!(reason.contains("NaN"), "{reason}"),
        other => panic!("a NaN failure rate was taken: {other:?}"),
    }
    let cache = Layered::builder(MemoryCache::builder().build().expect("l1"), down)
        .breaker(
            BreakerConfig::default()
                .failure_threshold(1)
                .break_duration(Duration::MAX)
                .window(Duration::MAX),
        )
        .build()
        .expect("valid");
    for i in 0..5 {
        let key = format!("k{i}");
        let got = cache
            .get_or_load(
                &key,
                || async { Ok::<_, std::io::Error>("v".to_string()) },
                LoadOptions::default(),
            )
            .await
            .expect("the loader answers while L2 is down");
        assert_eq!(got, "v");
    }
    assert_eq!(cache.health()[1].circuit, CircuitState::Open);
    // A change that must reach L2 says it could not (Redis would still hold the value), and
    // is made in L1 all the same.
    for (what, result) in [
        ("delete", cache.delete("k0").await),
        ("expire", cache.expire("k1").await),
    ] {
        assert!(
            matches!(&result, Err(Error::CircuitOpen { layer }) if layer == "redis"),
            "{what}: {result:?}"
        );
    }
    assert_eq!(cache.get_value("k0").await.expect("l1"), None);
    assert_eq!(
        cache.get_value("k1").await.expect("l1"),
        None,
        "expired in L1"
    );
}

/// `get_value` answers a fresh L1 hit in place (`Cache::get_value_now`) and anything else through
/// `get`: an L1 miss is read from L2, a stale L1 entry gives way to L2's fresh one, and each
/// call is counted once, as `get` counts it — also through `Arc` and `dyn Cache`.
#[tokio::test]
async fn get_value_answers_l1_hits_in_place_and_the_rest_through_l2() {
    let s = stack().await;
    s.cache
        .set_value("both", "in both".to_string(), Duration::from_secs(60))
        .await
        .expect("set");
    s.l2.set_value("l2 only", "from L2".to_string(), Duration::from_secs(60))
        .await
        .expect("set");
    let stale = Entry::new("old".to_string(), Duration::from_millis(1))
        .with_max_stale(Duration::from_secs(60));
    s.l1.set("stale in l1", stale).await.expect("set");
    s.l2.set_value("stale in l1", "new".to_string(), Duration::from_secs(60))
        .await
        .expect("set");
    // Wait (with a deadline) until the 1 ms entry is past its fresh deadline.
    let deadline = Instant::now() + Duration::from_secs(10);
    while s
        .l1
        .peek("stale in l1")
        .await
        .expect("peek")
        .is_some_and(|e| e.is_fresh())
    {
        assert!(Instant::now() < deadline, "a 1 ms entry fresh after 10 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    let l2_reads = s.l2.stats().requests();
    assert_eq!(
        s.cache.get_value_now("both").transpose().expect("answer"),
        Some(Some("in both".to_string())),
        "a fresh L1 hit is answered at once"
    );
    assert_eq!(
        s.cache
            .get_value_now("l2 only")
            .transpose()
            .expect("answer"),
        None
    );
    assert_eq!(
        s.cache
            .get_value_now("stale in l1")
            .transpose()
            .expect("answer"),
        None
    );
    assert_eq!(
        s.l2.stats().requests(),
        l2_reads,
        "get_value_now never waits on L2"
    );
    let base = s.cache.stats();
    assert_eq!(base.hits, 1, "only the answer given was counted: {base:?}");

    let shared: Arc<dyn Cache<String>> = Arc::new(s.cache.clone());
    for (key, want) in [
        ("both", Some("in both")),
        ("l2 only", Some("from L2")),
        ("stale in l1", Some("new")),
        ("absent", None),
    ] {
        let direct = s.cache.get_value(key).await.expect("get_value");
        let through_dyn = shared.get_value(key).await.expect("get_value");
        assert_eq!(direct.as_deref(), want, "{key}");
        assert_eq!(through_dyn.as_deref(), want, "{key} through dyn Cache");
    }
    let after = s.cache.stats();
    assert_eq!(
        after.requests() - base.requests(),
        8,
        "each call counted once: {after:?}"
    );
    assert_eq!(
        after.misses - base.misses,
        2,
        "the absent key, twice: {after:?}"
    );
    assert_eq!(
        after.l2_hits - base.l2_hits,
        2,
        "L2 answered the L1 miss: {after:?}"
    );
}

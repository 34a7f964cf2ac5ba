//! One `get_or_load` contract: the same `LoadOptions` suite — hard and soft timeouts, fail-safe,
//! early refresh, invalid options, answer sources — runs against every cache that offers
//! `get_or_load`, through the `GetOrLoad` trait: `MemoryCache`, `Layered::single`, `Layered` over
//! two memory layers, `LoadingCache`, and (with the `redis` feature) `Layered` over a real Redis.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use layercache::{Error, GetOrLoad, Layered, LoadOptions, LoadingCache, MemoryCache, Source};

type Reply = String;

#[derive(Debug)]
struct Down;
impl std::fmt::Display for Down {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("provider down")
    }
}
impl std::error::Error for Down {}

/// A loader that counts its calls, takes `delay`, and answers `value` (or fails with `None`).
fn loader(
    calls: &Arc<AtomicUsize>,
    value: Option<&str>,
    delay: Duration,
) -> impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Reply, Down>> + Send>>
       + Send
       + 'static {
    let calls = Arc::clone(calls);
    let value = value.map(str::to_owned);
    move || {
        Box::pin(async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            value.ok_or(Down)
        })
    }
}

/// Let `d` of wall-clock time pass (entry lifetimes are wall-clock deadlines).
async fn let_pass(d: Duration) {
    tokio::time::sleep(d).await;
}

/// A change of a key while a load of it runs wins over the load: the load read its source
/// before the change (a row updated, then its key deleted or set), so its value answers the
/// caller that asked before the change but is not stored over it.
async fn a_change_during_a_load_wins<C>(name: &str, cache: &Arc<C>)
where
    C: GetOrLoad<Reply> + layercache::Cache<Reply> + 'static,
{
    use layercache::{Cache, CacheExt, Entry};
    for change in ["delete", "set"] {
        let key = format!("changed-by-{change}");
        let (started, gate) = (
            Arc::new(tokio::sync::Notify::new()),
            Arc::new(tokio::sync::Semaphore::new(0)),
        );
        let running = {
            let (cache, key) = (Arc::clone(cache), key.clone());
            let (started, gate) = (Arc::clone(&started), Arc::clone(&gate));
            tokio::spawn(async move {
                GetOrLoad::get_or_load(
                    &*cache,
                    &key,
                    move || async move {
                        started.notify_one();
                        // Reads the source before the change, answers after it.
                        let _open = gate.acquire().await;
                        Ok::<_, Down>("read before the change".to_string())
                    },
                    LoadOptions::ttl(Duration::from_secs(60)),
                )
                .await
            })
        };
        started.notified().await;
        match change {
            "delete" => Cache::delete(&**cache, &key).await.expect("delete"),
            _ => Cache::set(
                &**cache,
                &key,
                Entry::new("set during the load".to_string(), Duration::from_secs(60)),
            )
            .await
            .expect("set"),
        }
        gate.add_permits(1);
        let answered = running.await.expect("task").expect("load");
        assert_eq!(answered, "read before the change", "{name}: {change}");
        let want = (change == "set").then_some("set during the load");
        let deadline = Instant::now() + Duration::from_secs(5);
        // The flight may still be finishing its writes: wait for it to leave.
        loop {
            let now = cache.get_value(&key).await.expect("get");
            if now.as_deref() == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: after a {change} during its load, the cache serves {now:?} (want {want:?})"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn suite<C>(name: &str, cache: C)
where
    C: GetOrLoad<Reply> + layercache::Cache<Reply> + 'static,
{
    let cache = Arc::new(cache);
    let calls = Arc::new(AtomicUsize::new(0));
    let ttl = LoadOptions::ttl(Duration::from_secs(60));

    a_change_during_a_load_wins(name, &cache).await;

    // Sources: loaded, then a hit.
    let a = cache
        .get_or_load_answer(
            "src",
            loader(&calls, Some("v"), Duration::ZERO),
            ttl.clone(),
        )
        .await
        .expect("load");
    assert_eq!(
        (a.source, a.value.as_str()),
        (Source::Loaded, "v"),
        "{name}"
    );
    let b = cache
        .get_or_load_answer(
            "src",
            loader(&calls, Some("x"), Duration::ZERO),
            ttl.clone(),
        )
        .await
        .expect("hit");
    assert_eq!(b.source, Source::L1Hit, "{name}");
    assert!(b.source.is_hit() && !b.source.is_stale());

    // Hard timeout, no stale value: an error within the limit, never the slow value's wait.
    let started = Instant::now();
    let hard = cache
        .get_or_load(
            "hard",
            loader(&calls, Some("slow"), Duration::from_secs(2)),
            ttl.clone().with_hard_timeout(Duration::from_millis(100)),
        )
        .await;
    let took = started.elapsed();
    assert!(
        matches!(hard, Err(Error::Timeout { .. })),
        "{name}: {hard:?}"
    );
    assert!(
        took < Duration::from_millis(1500),
        "{name}: hard timeout honoured ({took:?})"
    );

    // Fail-safe: a stale value is served when the loader fails, and the loader is throttled.
    let short = LoadOptions::ttl(Duration::from_millis(50))
        .with_fail_safe(Duration::from_secs(60))
        .with_fail_safe_throttle(Duration::from_secs(30));
    cache
        .get_or_load(
            "fs",
            loader(&calls, Some("old"), Duration::ZERO),
            short.clone(),
        )
        .await
        .expect("load");
    let_pass(Duration::from_millis(80)).await;
    let before = calls.load(Ordering::SeqCst);
    let failed = cache
        .get_or_load_answer("fs", loader(&calls, None, Duration::ZERO), short.clone())
        .await
        .expect("fail-safe answers");
    assert_eq!(
        (failed.source, failed.value.as_str()),
        (Source::FailSafe, "old"),
        "{name}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before + 1,
        "{name}: the loader was tried"
    );
    let throttled = cache
        .get_or_load("fs", loader(&calls, None, Duration::ZERO), short.clone())
        .await
        .expect("served during the throttle");
    assert_eq!(throttled, "old", "{name}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before + 1,
        "{name}: throttled, not called again"
    );

    // A zero lifetime keeps nothing fresh: every call loads. With fail-safe the value is kept
    // as a fallback only, served when the loader fails.
    let zero = LoadOptions::ttl(Duration::ZERO);
    let before = calls.load(Ordering::SeqCst);
    for v in ["z1", "z2"] {
        let a = cache
            .get_or_load_answer(
                "zero",
                loader(&calls, Some(v), Duration::ZERO),
                zero.clone(),
            )
            .await
            .expect("load");
        assert_eq!((a.source, a.value.as_str()), (Source::Loaded, v), "{name}");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before + 2,
        "{name}: loaded each time"
    );
    let fallback = zero.with_fail_safe(Duration::from_secs(60));
    for v in ["f1", "f2"] {
        let a = cache
            .get_or_load_answer(
                "zero-fs",
                loader(&calls, Some(v), Duration::ZERO),
                fallback.clone(),
            )
            .await
            .expect("load");
        assert_eq!((a.source, a.value.as_str()), (Source::Loaded, v), "{name}");
    }
    let failed = cache
        .get_or_load_answer("zero-fs", loader(&calls, None, Duration::ZERO), fallback)
        .await
        .expect("fail-safe answers");
    assert_eq!(
        (failed.source, failed.value.as_str()),
        (Source::FailSafe, "f2"),
        "{name}"
    );

    // Soft timeout: with a stale value, answer with it when the load is slow; the load goes on
    // and lands in the cache.
    let soft = LoadOptions::ttl(Duration::from_millis(50))
        .with_fail_safe(Duration::from_secs(60))
        .with_soft_timeout(Duration::from_millis(100))
        .with_hard_timeout(Duration::from_secs(5));
    cache
        .get_or_load(
            "soft",
            loader(&calls, Some("s1"), Duration::ZERO),
            soft.clone(),
        )
        .await
        .expect("load");
    let_pass(Duration::from_millis(80)).await;
    let started = Instant::now();
    let quick = cache
        .get_or_load_answer(
            "soft",
            loader(&calls, Some("s2"), Duration::from_millis(600)),
            soft.clone(),
        )
        .await
        .expect("stale at the soft timeout");
    assert_eq!(
        (quick.source, quick.value.as_str()),
        (Source::SoftTimeout, "s1"),
        "{name}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(550),
        "{name}: did not wait for the load"
    );
    let fresh = LoadOptions::ttl(Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = cache
            .get_or_load(
                "soft",
                loader(&calls, Some("unused"), Duration::ZERO),
                fresh.clone(),
            )
            .await
            .expect("get");
        if v == "s2" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: the background load never landed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Early refresh: a hit past 50 % of the lifetime answers at once and refreshes in the
    // background, exactly once.
    let early = LoadOptions::ttl(Duration::from_millis(400)).with_early_refresh(0.5);
    cache
        .get_or_load(
            "early",
            loader(&calls, Some("e1"), Duration::ZERO),
            early.clone(),
        )
        .await
        .expect("load");
    let_pass(Duration::from_millis(250)).await;
    let refreshes = Arc::new(AtomicUsize::new(0));
    for _ in 0..20 {
        let v = cache
            .get_or_load(
                "early",
                loader(&refreshes, Some("e2"), Duration::from_millis(50)),
                early.clone(),
            )
            .await
            .expect("hit");
        assert!(v == "e1" || v == "e2", "{name}: {v}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = cache
            .get_or_load(
                "early",
                loader(&calls, Some("unused"), Duration::ZERO),
                LoadOptions::new(),
            )
            .await
            .expect("get");
        if v == "e2" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: the early refresh never landed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(refreshes.load(Ordering::SeqCst), 1, "{name}: one refresh");

    // Options that cannot be honoured are errors, never ignored.
    for bad in [
        LoadOptions::new().with_soft_timeout(Duration::from_millis(10)),
        LoadOptions::new().with_early_refresh(1.5),
        LoadOptions::new().with_xfetch(-1.0),
        LoadOptions::new().with_hard_timeout(Duration::ZERO),
        LoadOptions::new()
            .with_fail_safe(Duration::from_secs(1))
            .with_soft_timeout(Duration::from_secs(2))
            .with_hard_timeout(Duration::from_secs(1)),
    ] {
        let r = cache
            .get_or_load(
                "src",
                loader(&calls, Some("v"), Duration::ZERO),
                bad.clone(),
            )
            .await;
        assert!(
            matches!(r, Err(Error::Config { .. })),
            "{name}: {bad:?} → {r:?}"
        );
    }

    // Concurrent callers of a cold key: one load, the rest joined.
    let joined_calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Barrier::new(20));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (cache, gate, ttl) = (Arc::clone(&cache), Arc::clone(&gate), ttl.clone());
            let load = loader(&joined_calls, Some("j"), Duration::from_millis(300));
            tokio::spawn(async move {
                gate.wait().await;
                cache.get_or_load_answer("joined", load, ttl).await
            })
        })
        .collect();
    let mut sources = Vec::new();
    for task in tasks {
        sources.push(task.await.expect("no panic").expect("answer").source);
    }
    assert_eq!(joined_calls.load(Ordering::SeqCst), 1, "{name}");
    assert_eq!(
        sources.iter().filter(|s| **s == Source::Loaded).count(),
        1,
        "{name}"
    );
    assert_eq!(
        sources.iter().filter(|s| **s == Source::Joined).count(),
        19,
        "{name}: {sources:?}"
    );
    let stats = cache.stats();
    assert_eq!(
        stats.requests(),
        stats.hits + stats.misses + stats.stale_hits + stats.coalesced,
        "{name}"
    );
}

fn memory() -> MemoryCache<Reply> {
    support::memory_builder().build().expect("memory")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_cache_honours_every_option() {
    suite("MemoryCache", memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_only_layered_honours_every_option() {
    suite(
        "Layered::single",
        Layered::single(memory()).build().expect("layered"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_memory_layers_honour_every_option() {
    let cache = Layered::builder(memory(), memory())
        .build()
        .expect("layered");
    suite("Layered(memory, memory)", cache).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loading_cache_honours_every_option() {
    let layer: Arc<dyn layercache::Cache<Reply>> = Arc::new(memory());
    suite("LoadingCache", LoadingCache::new(layer)).await;
}

#[cfg(all(feature = "redis", feature = "msgpack"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_redis_honour_every_option() {
    let server = support::redis::RedisServer::start();
    let l2 = layercache::RedisCache::builder()
        .url(server.url())
        .namespace("contract")
        .build()
        .await
        .expect("redis");
    let cache = Layered::builder(memory(), l2).build().expect("layered");
    suite("Layered(memory, redis)", cache).await;
}

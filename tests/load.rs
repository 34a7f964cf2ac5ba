//! `get_or_load`: single-flight, detached loads, shared errors, contained panics.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use layercache::{Cache, CacheExt, Error, LoadOptions, LoadingCache, MemoryCache};
use tokio::sync::Barrier;

#[derive(Debug, Clone, PartialEq)]
struct Reply {
    text: String,
}

#[derive(Debug)]
struct ProviderDown(u32);

impl std::fmt::Display for ProviderDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "provider down (status {})", self.0)
    }
}
impl std::error::Error for ProviderDown {}

fn cache() -> MemoryCache<Reply> {
    support::memory_builder()
        .name("load-test")
        .build()
        .expect("valid config")
}

fn opts() -> LoadOptions {
    LoadOptions::ttl(Duration::from_secs(60))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_concurrent_callers_cause_one_load() {
    const CALLERS: usize = 1000;
    let cache = cache();
    let calls = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(CALLERS));
    let mut tasks = Vec::with_capacity(CALLERS);
    for _ in 0..CALLERS {
        let (cache, calls, barrier) = (cache.clone(), calls.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            cache
                .get_or_load(
                    "cold",
                    move || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Ok::<_, ProviderDown>(Reply { text: "v".into() })
                    },
                    opts(),
                )
                .await
        }));
    }
    for task in tasks {
        let got = task
            .await
            .expect("task did not panic")
            .expect("load succeeded");
        assert_eq!(got.text, "v");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the loader ran exactly once"
    );
    let stats = cache.stats();
    assert_eq!(stats.loads, 1);
    assert_eq!(stats.coalesced, (CALLERS - 1) as u64);
    // Joined callers are answers of their own, not misses.
    assert_eq!(stats.misses, 1);
    assert_eq!(stats.requests(), CALLERS as u64);
    assert_eq!(cache.pending_loads(), 0);
    assert_eq!(
        cache.get_value("cold").await.expect("get").map(|r| r.text),
        Some("v".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropping_the_leader_does_not_cancel_the_load() {
    let cache = cache();
    let calls = Arc::new(AtomicUsize::new(0));
    let loader = |calls: Arc<AtomicUsize>| {
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok::<_, ProviderDown>(Reply {
                text: "paid once".into(),
            })
        }
    };
    let start = Instant::now();
    let leader = {
        let (cache, l) = (cache.clone(), loader(calls.clone()));
        tokio::spawn(async move { cache.get_or_load("k", l, opts()).await })
    };
    // Let the leader register its flight, then queue 99 waiters behind it.
    while cache.pending_loads() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let waiters: Vec<_> = (0..99)
        .map(|_| {
            let (cache, l) = (cache.clone(), loader(calls.clone()));
            tokio::spawn(async move { cache.get_or_load("k", l, opts()).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100).saturating_sub(start.elapsed())).await;
    leader.abort();
    assert!(leader.await.expect_err("leader was aborted").is_cancelled());

    for waiter in waiters {
        let got = tokio::time::timeout(
            Duration::from_secs(1).saturating_sub(start.elapsed()),
            waiter,
        )
        .await
        .expect("every waiter answered within 1 s of the start")
        .expect("task did not panic")
        .expect("load succeeded");
        assert_eq!(got.text, "paid once");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(cache.stats().coalesced, 99);

    let hits_before = cache.stats().hits;
    let again = cache
        .get_or_load("k", loader(calls.clone()), opts())
        .await
        .expect("hit");
    assert_eq!(again.text, "paid once");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the next call is a hit");
    assert_eq!(cache.stats().hits, hits_before + 1);
    assert_eq!(cache.pending_loads(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_loader_error_reaches_every_waiter_and_nothing_is_cached() {
    let cache = cache();
    let calls = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(20));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (cache, calls, barrier) = (cache.clone(), calls.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                cache
                    .get_or_load(
                        "bad",
                        move || async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            Err::<Reply, _>(ProviderDown(503))
                        },
                        opts(),
                    )
                    .await
            })
        })
        .collect();
    for task in tasks {
        let err = task.await.expect("no panic").expect_err("loader failed");
        match &err {
            Error::Loader(shared) => {
                assert_eq!(
                    shared.downcast_ref::<ProviderDown>().map(|e| e.0),
                    Some(503)
                );
                assert_eq!(shared.to_string(), "provider down (status 503)");
            }
            other => panic!("expected Error::Loader, got {other:?}"),
        }
        let source = std::error::Error::source(&err).expect("error keeps its source");
        assert_eq!(source.to_string(), "provider down (status 503)");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(
        cache.get("bad").await.expect("get").is_none(),
        "nothing cached"
    );
    assert_eq!(cache.pending_loads(), 0);
    let stats = cache.stats();
    assert_eq!((stats.loads, stats.load_errors), (1, 1));

    let ok = cache
        .get_or_load(
            "bad",
            || async {
                Ok::<_, ProviderDown>(Reply {
                    text: "recovered".into(),
                })
            },
            opts(),
        )
        .await
        .expect("the next call loads again");
    assert_eq!(ok.text, "recovered");
    assert_eq!(cache.stats().loads, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_loader_panic_is_contained() {
    let cache = cache();
    let barrier = Arc::new(Barrier::new(10));
    let calls = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (cache, calls, barrier) = (cache.clone(), calls.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                cache
                    .get_or_load(
                        "boom",
                        move || async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            if calls.load(Ordering::SeqCst) > 0 {
                                panic!("model returned garbage");
                            }
                            Ok::<_, ProviderDown>(Reply {
                                text: "never".into(),
                            })
                        },
                        opts(),
                    )
                    .await
            })
        })
        .collect();
    for task in tasks {
        match task.await.expect("the caller's task itself did not panic") {
            Err(Error::LoaderPanicked { message }) => assert_eq!(message, "model returned garbage"),
            other => panic!("expected LoaderPanicked, got {other:?}"),
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(cache.pending_loads(), 0);
    assert!(cache.get("boom").await.expect("get").is_none());

    // A closure that panics before it even returns a future is contained too.
    let err = cache
        .get_or_load(
            "boom",
            || -> std::future::Ready<Result<Reply, ProviderDown>> { panic!("sync panic") },
            opts(),
        )
        .await
        .expect_err("panicked");
    assert!(matches!(err, Error::LoaderPanicked { ref message } if message == "sync panic"));
    assert_eq!(cache.pending_loads(), 0);

    let ok = cache
        .get_or_load(
            "boom",
            || async {
                Ok::<_, ProviderDown>(Reply {
                    text: "fine".into(),
                })
            },
            opts(),
        )
        .await
        .expect("loads again after a panic");
    assert_eq!(ok.text, "fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loaded_values_get_the_requested_lifetime() {
    let cache = cache();
    cache
        .get_or_load(
            "short",
            || async { Ok::<_, ProviderDown>(Reply { text: "a".into() }) },
            LoadOptions::ttl(Duration::from_millis(80)),
        )
        .await
        .expect("load");
    let entry = cache.get("short").await.expect("get").expect("present");
    assert!(entry.time_to_fresh_end() <= Duration::from_millis(80));
    assert!(entry.load_duration().is_some());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let v = cache
        .get_or_load(
            "short",
            move || async move {
                c.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ProviderDown>(Reply { text: "b".into() })
            },
            opts(),
        )
        .await
        .expect("reload");
    assert_eq!(v.text, "b");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "an expired value is loaded again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn loading_cache_gives_any_cache_single_flight() {
    let layer: Arc<dyn Cache<Reply>> = Arc::new(cache());
    let cache = Arc::new(LoadingCache::new(layer));
    let calls = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(50));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (cache, calls, barrier) = (cache.clone(), calls.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                cache
                    .get_or_load(
                        "dyn",
                        move || async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            Ok::<_, ProviderDown>(Reply { text: "x".into() })
                        },
                        opts(),
                    )
                    .await
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.expect("no panic").expect("ok").text, "x");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let stats = cache.stats();
    assert_eq!((stats.loads, stats.coalesced, stats.misses), (1, 49, 1));
    assert_eq!(cache.pending_loads(), 0);
    assert!(
        cache.inner().get("dyn").await.expect("get").is_some(),
        "stored in the wrapped layer"
    );
}

/// A loader that calls `get_or_load` on the same cache (an answer that needs a cached
/// embedding) under `max_concurrent_loads`: with every permit held by loads that wait for their
/// inner loads, a plain semaphore never lets the inner loads start. A permit covers the loads
/// its loader starts, and the limit still bounds the loads callers start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_that_start_loads_never_deadlock_the_load_limit() {
    use layercache::Layered;

    let cache = Layered::single(support::memory_builder().build().expect("memory"))
        .max_concurrent_loads(2)
        .build()
        .expect("cache");
    let (running, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let answers: Vec<_> = (0..8u64)
        .map(|i| {
            let (cache, running, peak) = (cache.clone(), running.clone(), peak.clone());
            tokio::spawn(async move {
                let inner = cache.clone();
                cache
                    .get_or_load(
                        &format!("answer:{i}"),
                        move || async move {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(now, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            // Two inner loads: one of its own, one shared with another answer.
                            let mut parts = Vec::new();
                            for key in [format!("embedding:{i}"), format!("shared:{}", i % 2)] {
                                let name = key.clone();
                                let part = inner
                                    .get_or_load(
                                        &name,
                                        move || async move {
                                            tokio::time::sleep(Duration::from_millis(10)).await;
                                            Ok::<_, std::io::Error>(key)
                                        },
                                        LoadOptions::ttl(Duration::from_secs(60)),
                                    )
                                    .await
                                    .map_err(std::io::Error::other)?;
                                parts.push(part);
                            }
                            running.fetch_sub(1, Ordering::SeqCst);
                            Ok::<_, std::io::Error>(format!("answer {i} from {}", parts.join("+")))
                        },
                        LoadOptions::ttl(Duration::from_secs(60)),
                    )
                    .await
            })
        })
        .collect();
    let all = async {
        let mut out = Vec::new();
        for answer in answers {
            out.push(answer.await.expect("task").expect("answer"));
        }
        out
    };
    let out = tokio::time::timeout(Duration::from_secs(20), all)
        .await
        .expect("nested loads under the limit deadlocked");
    assert_eq!(out[3], "answer 3 from embedding:3+shared:1");
    assert_eq!(
        peak.load(Ordering::SeqCst),
        2,
        "callers' loads stay within the limit"
    );

    // A caller's load of `gate` waits for a permit while the only one is held by a load whose
    // loader then asks for `gate` too: it joins that waiting load, which goes ahead.
    let cache = Layered::single(support::memory_builder().build().expect("memory"))
        .max_concurrent_loads(1)
        .build()
        .expect("cache");
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let outer = {
        let (cache, inner) = (cache.clone(), cache.clone());
        tokio::spawn(async move {
            cache
                .get_or_load(
                    "outer",
                    move || async move {
                        let _ = started_tx.send(());
                        // Until the caller's load of `gate` waits for this load's permit.
                        let deadline = Instant::now() + Duration::from_secs(10);
                        while inner.pending_loads() < 2 {
                            assert!(Instant::now() < deadline, "the second load never started");
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                        let gate = inner
                            .get_or_load(
                                "gate",
                                || async {
                                    Ok::<_, std::io::Error>("from the caller's load".into())
                                },
                                LoadOptions::ttl(Duration::from_secs(60)),
                            )
                            .await
                            .map_err(std::io::Error::other)?;
                        Ok::<_, std::io::Error>(format!("outer, {gate}"))
                    },
                    LoadOptions::ttl(Duration::from_secs(60)),
                )
                .await
        })
    };
    started_rx.await.expect("outer load started");
    let gate = cache.get_or_load(
        "gate",
        || async { Ok::<_, std::io::Error>("from the caller's load".to_owned()) },
        LoadOptions::ttl(Duration::from_secs(60)),
    );
    let (gate, outer) =
        tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(gate, outer) })
            .await
            .expect("a load joined by a permit holder deadlocked");
    assert_eq!(gate.expect("gate"), "from the caller's load");
    assert_eq!(
        outer.expect("task").expect("outer"),
        "outer, from the caller's load"
    );
}

/// A loader that asks for the key it is loading (directly, or through a load it started) would
/// wait for itself forever: that call fails at once instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_that_asks_for_its_own_key_fails_instead_of_hanging() {
    use layercache::Layered;

    let cache = Layered::single(support::memory_builder().build().expect("memory"))
        .build()
        .expect("cache");
    let inner = cache.clone();
    let direct = cache.get_or_load(
        "a",
        move || async move {
            let again = inner
                .get_or_load(
                    "a",
                    || async { Ok::<_, std::io::Error>("never".to_owned()) },
                    LoadOptions::default(),
                )
                .await;
            match again {
                Err(Error::RecursiveLoad { key }) => {
                    Ok::<_, std::io::Error>(format!("refused {key}"))
                }
                other => Ok(format!("unexpected {other:?}")),
            }
        },
        LoadOptions::default(),
    );
    let direct = tokio::time::timeout(Duration::from_secs(10), direct)
        .await
        .expect("a load waited for itself");
    assert_eq!(direct.expect("a"), "refused a");

    // a → b → a: the inner `a` is refused, `b` and `a` still answer.
    let (first, second) = (cache.clone(), cache.clone());
    let indirect = cache.get_or_load(
        "x",
        move || async move {
            first
                .get_or_load(
                    "y",
                    move || async move {
                        let back = second
                            .get_or_load(
                                "x",
                                || async { Ok::<_, std::io::Error>("never".to_owned()) },
                                LoadOptions::default(),
                            )
                            .await;
                        Ok::<_, std::io::Error>(format!(
                            "y ({})",
                            back.map_err(|e| e.to_string()).unwrap_err()
                        ))
                    },
                    LoadOptions::default(),
                )
                .await
                .map(|y| format!("x from {y}"))
                .map_err(std::io::Error::other)
        },
        LoadOptions::default(),
    );
    let indirect = tokio::time::timeout(Duration::from_secs(10), indirect)
        .await
        .expect("a load waited for itself");
    assert_eq!(
        indirect.expect("x"),
        "x from y (the load of `x` asked for `x` itself: it would wait for itself forever)"
    );
}

/// `get_or_load` outside a tokio runtime (a plain thread, another executor) is a typed error,
/// never a panic: its loads run on tokio.
#[test]
fn get_or_load_outside_a_runtime_is_an_error_not_a_panic() {
    let cache = MemoryCache::<String>::builder().build().expect("cache");
    let call = cache.get_or_load(
        "k",
        || async { Ok::<_, std::io::Error>("v".to_string()) },
        LoadOptions::default(),
    );
    let mut call = std::pin::pin!(call);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::future::Future::poll(call.as_mut(), &mut cx) {
        std::task::Poll::Ready(Err(err @ Error::NoRuntime(_))) => {
            let source = std::error::Error::source(&err).expect("tokio's reason");
            assert!(!source.to_string().is_empty());
        }
        other => panic!("expected NoRuntime, got {other:?}"),
    }
}

/// An L2 (a layer a user might write) that holds the writes of loaded values (text starting
/// with "load") until `open` says so: a flight that has answered its callers — after waiting
/// its bounded time for L2 — is still storing its value.
struct HeldWrites {
    inner: MemoryCache<Reply>,
    open: tokio::sync::watch::Receiver<bool>,
}

#[async_trait::async_trait]
impl Cache<Reply> for HeldWrites {
    fn name(&self) -> &str {
        "held-writes"
    }
    fn get<'a>(&'a self, key: &'a str) -> layercache::CacheGet<'a, Reply> {
        self.inner.get(key)
    }
    async fn set(&self, key: &str, entry: layercache::Entry<Reply>) -> layercache::Result<()> {
        if entry.value().text.starts_with("load") {
            let mut open = self.open.clone();
            let _ = open.wait_for(|open| *open).await;
        }
        self.inner.set(key, entry).await
    }
    async fn delete(&self, key: &str) -> layercache::Result<()> {
        self.inner.delete(key).await
    }
}

fn reply(text: &str) -> Reply {
    Reply {
        text: text.to_owned(),
    }
}

/// A caller who asks after a load answered, or after its key changed, is never handed that
/// load's value, even while the load is still writing it to L2: it loads afresh. A change
/// during that write wins over it — a delete stays a delete, a `set` keeps its value — and
/// `flush` waits for every load's write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_after_the_answer_or_a_change_never_joins_that_load() {
    let (open, held) = tokio::sync::watch::channel(false);
    let l2 = MemoryCache::builder().name("l2").build().expect("l2");
    let cache = layercache::Layered::builder(
        cache(),
        HeldWrites {
            inner: l2.clone(),
            open: held,
        },
    )
    .build()
    .expect("layered");
    let load = |text: &'static str| move || async move { Ok::<_, ProviderDown>(reply(text)) };
    let source = |a: layercache::Answer<Reply>| (a.source, a.value.text);
    let loaded = |text: &str| (layercache::Source::Loaded, text.to_owned());

    // A zero lifetime keeps nothing in L1: each call loads, though the last load is still
    // writing to L2.
    let zero = LoadOptions::ttl(Duration::ZERO).with_fail_safe(Duration::from_secs(60));
    for text in ["load z1", "load z2"] {
        let answer = cache
            .get_or_load_answer("zero", load(text), zero.clone())
            .await
            .expect("loaded");
        assert_eq!(source(answer), loaded(text));
    }

    // Deleted while its load writes to L2: the next caller loads the new value.
    let first = cache
        .get_or_load_answer("deleted", load("load d1"), opts())
        .await
        .expect("loaded");
    assert_eq!(source(first), loaded("load d1"));
    cache.delete("deleted").await.expect("delete");
    let second = cache
        .get_or_load_answer("deleted", load("load d2"), opts())
        .await
        .expect("loaded");
    assert_eq!(source(second), loaded("load d2"));

    // Set while its load writes to L2: the set's value is what every layer keeps.
    let third = cache
        .get_or_load_answer("set", load("load s1"), opts())
        .await
        .expect("loaded");
    assert_eq!(source(third), loaded("load s1"));
    cache
        .set_value("set", reply("set"), Duration::from_secs(60))
        .await
        .expect("set");

    // Every load is still writing; flush waits for all of them, the replaced ones included.
    assert!(cache.pending_loads() >= 4, "{}", cache.pending_loads());
    assert!(matches!(
        cache.flush(Duration::from_millis(50)).await,
        Err(Error::Timeout { .. })
    ));
    open.send(true).expect("open");
    cache.flush(Duration::from_secs(10)).await.expect("flushed");
    assert_eq!(cache.pending_loads(), 0);
    // The late writes did not bring back what the delete removed, nor erase what the set wrote.
    let deleted = cache.get_value("deleted").await.expect("get");
    assert_ne!(deleted, Some(reply("load d1")));
    assert_eq!(
        cache.get_value("set").await.expect("get"),
        Some(reply("set"))
    );
    // This L2's `set_if_newer` is the trait's default (read, then write), so the held write,
    // which read before the set, may still land over it: then it is removed, never kept.
    // (Redis compares and writes in one step, and keeps the set's value.)
    assert_ne!(
        l2.get_value("set").await.expect("get"),
        Some(reply("load s1"))
    );
}

/// A limit no one could reach (`usize::MAX` loads, or a `warm` of `usize::MAX` at once) is
/// accepted and means "no limit" — it used to panic in the semaphore under the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_load_limit_means_no_limit() {
    use layercache::Layered;

    let cache = Layered::single(support::memory_builder().build().expect("memory"))
        .max_concurrent_loads(usize::MAX)
        .build()
        .expect("usize::MAX loads at once is a valid limit");
    let loaded = cache
        .get_or_load(
            "k",
            || async { Ok::<_, std::io::Error>(reply("v")) },
            opts(),
        )
        .await
        .expect("load");
    assert_eq!(loaded, reply("v"));

    let report = cache
        .warm(
            (0..50).map(|i| format!("doc:{i}")),
            |key: String| async move { Ok::<_, std::io::Error>(reply(&key)) },
            usize::MAX,
            opts(),
        )
        .await
        .expect("warm");
    assert_eq!((report.loaded, report.failed), (50, 0));
    assert_eq!(
        cache.get_value("doc:7").await.expect("get"),
        Some(reply("doc:7"))
    );
}

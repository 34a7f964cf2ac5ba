//! Metrics through the facade equal the test's own counts (checked with `DebuggingRecorder`),
//! and `Stats` agrees with them without any recorder.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use layercache::metrics::{COALESCED_TOTAL, LOADS_TOTAL, LOAD_DURATION_SECONDS, REQUESTS_TOTAL};
use layercache::{Cache, CacheExt, LoadOptions, MemoryCache};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::MetricKind;

/// Counter values by (name, sorted labels) and histogram sample counts by name.
type Counters = HashMap<(String, Vec<(String, String)>), u64>;
type HistogramCounts = HashMap<String, usize>;

fn snapshot(recorder: &DebuggingRecorder) -> (Counters, HistogramCounts) {
    let mut counters = HashMap::new();
    let mut histograms = HashMap::new();
    for (key, _, _, value) in recorder.snapshotter().snapshot().into_vec() {
        let (kind, key) = key.into_parts();
        let mut labels: Vec<_> = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        labels.sort();
        match (kind, value) {
            (MetricKind::Counter, DebugValue::Counter(n)) => {
                counters.insert((key.name().to_owned(), labels), n);
            }
            (MetricKind::Histogram, DebugValue::Histogram(samples)) => {
                *histograms.entry(key.name().to_owned()).or_default() += samples.len();
            }
            _ => {}
        }
    }
    (counters, histograms)
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<_> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    v.sort();
    v
}

#[test]
fn counters_match_what_the_test_did() {
    let recorder = DebuggingRecorder::new();
    // Handles are registered at build time, with the recorder current then.
    let cache: MemoryCache<u64> = metrics::with_local_recorder(&recorder, || {
        MemoryCache::builder().name("m").build().expect("valid")
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let loader_calls = Arc::new(AtomicU64::new(0));
    let (mut expected_hits, mut expected_misses) = (0u64, 0u64);

    runtime.block_on(async {
        // 20 distinct keys, each asked 5 times in a row: 1 miss + 4 hits each.
        for round in 0..5 {
            for k in 0..20u64 {
                let calls = loader_calls.clone();
                let v = cache
                    .get_or_load(
                        &format!("k{k}"),
                        move || async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, std::io::Error>(k * 10)
                        },
                        LoadOptions::ttl(Duration::from_secs(60)),
                    )
                    .await
                    .expect("ok");
                assert_eq!(v, k * 10);
                if round == 0 {
                    expected_misses += 1
                } else {
                    expected_hits += 1
                }
            }
        }
        // Two failing loads.
        for _ in 0..2 {
            let calls = loader_calls.clone();
            let r = cache
                .get_or_load(
                    "bad",
                    move || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        Err::<u64, _>(std::io::Error::other("nope"))
                    },
                    LoadOptions::default(),
                )
                .await;
            assert!(r.is_err());
            expected_misses += 1;
        }
        // Ten concurrent callers on one cold key: 1 load, 1 miss, 9 joined (not misses).
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let (cache, calls) = (cache.clone(), loader_calls.clone());
                tokio::spawn(async move {
                    cache
                        .get_or_load(
                            "shared",
                            move || async move {
                                calls.fetch_add(1, Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                Ok::<_, std::io::Error>(1)
                            },
                            LoadOptions::default(),
                        )
                        .await
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("no panic").expect("ok");
        }
        expected_misses += 1;
    });

    let (counters, histograms) = snapshot(&recorder);
    let count = |name: &str, l: &[(&str, &str)]| {
        counters
            .get(&(name.to_owned(), labels(l)))
            .copied()
            .unwrap_or(0)
    };
    let hits = count(
        REQUESTS_TOTAL,
        &[("cache", "m"), ("layer", "l1"), ("result", "hit")],
    );
    let misses = count(
        REQUESTS_TOTAL,
        &[("cache", "m"), ("layer", "none"), ("result", "miss")],
    );
    let joined = count(
        REQUESTS_TOTAL,
        &[("cache", "m"), ("layer", "none"), ("result", "joined")],
    );
    assert_eq!(hits, expected_hits);
    assert_eq!(misses, expected_misses);
    assert_eq!(joined, 9);
    assert_eq!(
        hits + misses + joined,
        5 * 20 + 2 + 10,
        "each answer counted once"
    );

    let ok = count(LOADS_TOTAL, &[("cache", "m"), ("outcome", "ok")]);
    let err = count(LOADS_TOTAL, &[("cache", "m"), ("outcome", "error")]);
    assert_eq!(
        ok + err,
        loader_calls.load(Ordering::SeqCst),
        "loads = loader invocations"
    );
    assert_eq!((ok, err), (21, 2));
    assert_eq!(count(COALESCED_TOTAL, &[("cache", "m")]), 9);
    assert_eq!(histograms.get(LOAD_DURATION_SECONDS).copied(), Some(23));

    // Stats agrees with the recorder.
    let stats = cache.stats();
    assert_eq!(
        (
            stats.hits,
            stats.misses,
            stats.loads,
            stats.load_errors,
            stats.coalesced
        ),
        (hits, misses, 23, 2, 9)
    );
    assert_eq!(stats.requests(), 5 * 20 + 2 + 10);
    assert!((stats.hit_ratio() - hits as f64 / stats.requests() as f64).abs() < 1e-12);
}

#[tokio::test]
async fn stats_work_without_any_recorder() {
    let cache = MemoryCache::<u8>::builder().build().expect("valid");
    cache
        .get_or_load(
            "a",
            || async { Ok::<_, std::io::Error>(1) },
            LoadOptions::default(),
        )
        .await
        .expect("ok");
    cache
        .get_or_load(
            "a",
            || async { Ok::<_, std::io::Error>(2) },
            LoadOptions::default(),
        )
        .await
        .expect("ok");
    let s = cache.stats();
    assert_eq!((s.hits, s.misses, s.loads, s.requests()), (1, 1, 1, 2));
    assert_eq!(s.hit_ratio(), 0.5);
}

#[test]
fn layered_attributes_requests_per_layer_and_counts_fail_safe() {
    use layercache::{Cache, Entry, Layered};
    let recorder = DebuggingRecorder::new();
    let (cache, l2) = metrics::with_local_recorder(&recorder, || {
        let l1 = MemoryCache::<String>::builder()
            .name("m1")
            .build()
            .expect("l1");
        let l2 = MemoryCache::<String>::builder()
            .name("m2")
            .build()
            .expect("l2");
        let cache = Layered::builder(l1, l2.clone())
            .name("lay")
            .build()
            .expect("layered");
        (cache, l2)
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let loader_calls = Arc::new(AtomicU64::new(0));
    runtime.block_on(async {
        l2.set("a", Entry::new("from l2".into(), Duration::from_secs(60)))
            .await
            .expect("set");
        for _ in 0..2 {
            // First an L1 miss + L2 hit (backfill), then an L1 hit.
            let v = cache
                .get_or_load(
                    "a",
                    || async { Err::<String, _>(std::io::Error::other("unused")) },
                    LoadOptions::default(),
                )
                .await
                .expect("hit");
            assert_eq!(v, "from l2");
        }
        let opts =
            LoadOptions::ttl(Duration::from_millis(50)).with_fail_safe(Duration::from_secs(10));
        let calls = loader_calls.clone();
        cache
            .get_or_load(
                "b",
                move || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, std::io::Error>("b1".to_string())
                },
                opts.clone(),
            )
            .await
            .expect("load");
        tokio::time::sleep(Duration::from_millis(80)).await;
        let calls = loader_calls.clone();
        let v = cache
            .get_or_load(
                "b",
                move || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err::<String, _>(std::io::Error::other("provider down"))
                },
                opts,
            )
            .await
            .expect("fail-safe");
        assert_eq!(v, "b1");
    });

    let (counters, _) = snapshot(&recorder);
    let count = |name: &str, l: &[(&str, &str)]| {
        counters
            .get(&(name.to_owned(), labels(l)))
            .copied()
            .unwrap_or(0)
    };
    let req = |cache: &str, layer: &str, result: &str| {
        count(
            REQUESTS_TOTAL,
            &[("cache", cache), ("layer", layer), ("result", result)],
        )
    };
    // The layers inside the stack are read without counting: no answer is counted twice.
    for layer in ["m1", "m2"] {
        for result in ["hit", "miss", "stale", "joined"] {
            for position in ["l1", "none", "memory"] {
                assert_eq!(
                    req(layer, position, result),
                    0,
                    "{layer} {position} {result}"
                );
            }
        }
    }
    // The front, once per call, by the layer that answered. "a": an L2 hit, then an L1 hit.
    // "b": a miss (loaded), then a stale answer (fail-safe).
    assert_eq!(
        (
            req("lay", "l1", "hit"),
            req("lay", "l2", "hit"),
            req("lay", "none", "miss"),
            req("lay", "l1", "stale") + req("lay", "l2", "stale")
        ),
        (1, 1, 1, 1)
    );
    let stats = cache.stats();
    assert_eq!(
        (stats.hits, stats.l2_hits, stats.misses, stats.stale_hits),
        (2, 1, 1, 1)
    );
    assert_eq!(
        count(LOADS_TOTAL, &[("cache", "lay"), ("outcome", "fail_safe")]),
        1
    );
    assert_eq!(
        count(LOADS_TOTAL, &[("cache", "lay"), ("outcome", "ok")])
            + count(LOADS_TOTAL, &[("cache", "lay"), ("outcome", "error")]),
        loader_calls.load(Ordering::SeqCst)
    );
    let gauges: Vec<_> = recorder
        .snapshotter()
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, ..)| k.key().name() == layercache::metrics::CIRCUIT_OPEN)
        .collect();
    assert_eq!(gauges.len(), 1, "the L2 circuit gauge is registered");
}

/// A stampede through a stack: the recorder and `Stats` both say 1 miss and 999 joined, exactly,
/// and the layers inside the stack count nothing (no answer counted twice).
#[test]
fn a_stampede_is_one_miss_and_999_joined_in_the_recorder() {
    use layercache::Layered;
    const CALLERS: usize = 1000;
    let recorder = DebuggingRecorder::new();
    let cache = metrics::with_local_recorder(&recorder, || {
        let l1 = MemoryCache::<String>::builder()
            .name("s1")
            .build()
            .expect("l1");
        let l2 = MemoryCache::<String>::builder()
            .name("s2")
            .build()
            .expect("l2");
        Layered::builder(l1, l2)
            .name("stampede")
            .build()
            .expect("layered")
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    let calls = Arc::new(AtomicU64::new(0));
    runtime.block_on(async {
        let gate = Arc::new(tokio::sync::Barrier::new(CALLERS));
        let tasks: Vec<_> = (0..CALLERS)
            .map(|_| {
                let (cache, calls, gate) = (cache.clone(), calls.clone(), gate.clone());
                tokio::spawn(async move {
                    gate.wait().await;
                    cache
                        .get_or_load(
                            "cold",
                            move || async move {
                                calls.fetch_add(1, Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                Ok::<_, std::io::Error>("v".to_string())
                            },
                            LoadOptions::ttl(Duration::from_secs(60)),
                        )
                        .await
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("no panic").expect("ok");
        }
    });
    let (counters, _) = snapshot(&recorder);
    let req = |cache: &str, layer: &str, result: &str| {
        counters
            .get(&(
                REQUESTS_TOTAL.to_owned(),
                labels(&[("cache", cache), ("layer", layer), ("result", result)]),
            ))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(req("stampede", "none", "miss"), 1);
    assert_eq!(req("stampede", "none", "joined"), (CALLERS - 1) as u64);
    let total: u64 = counters
        .iter()
        .filter(|((name, _), _)| name == REQUESTS_TOTAL)
        .map(|(_, n)| *n)
        .sum();
    assert_eq!(
        total, CALLERS as u64,
        "every answer counted once, in one series"
    );
    assert_eq!(
        counters
            .get(&(COALESCED_TOTAL.to_owned(), labels(&[("cache", "stampede")])))
            .copied(),
        Some((CALLERS - 1) as u64)
    );
    let stats = cache.stats();
    assert_eq!(
        (stats.misses, stats.coalesced, stats.hits, stats.loads),
        (1, (CALLERS - 1) as u64, 0, 1)
    );
}

/// What a `DebuggingRecorder` has received so far: its snapshots drain the counters they read,
/// so this adds them up.
struct Tally<'a> {
    recorder: &'a DebuggingRecorder,
    seen: std::cell::RefCell<Counters>,
}

impl<'a> Tally<'a> {
    fn new(recorder: &'a DebuggingRecorder) -> Self {
        Tally {
            recorder,
            seen: Default::default(),
        }
    }

    /// Every counter received so far.
    fn counters(&self) -> Counters {
        let mut seen = self.seen.borrow_mut();
        for (key, n) in snapshot(self.recorder).0 {
            *seen.entry(key).or_default() += n;
        }
        seen.clone()
    }

    /// The sum of every `layercache_requests_total` series of cache `name` received so far.
    fn requests(&self, name: &str) -> u64 {
        self.counters()
            .iter()
            .filter(|((metric, labels), _)| {
                metric == REQUESTS_TOTAL && labels.contains(&("cache".to_owned(), name.to_owned()))
            })
            .map(|(_, n)| *n)
            .sum()
    }

    /// Wait (up to 10 s) until `expected` answers of cache `name` have arrived; how many did.
    fn wait_for_requests(&self, name: &str, expected: u64) -> u64 {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let seen = self.requests(name);
            if seen >= expected || std::time::Instant::now() > deadline {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A single-threaded runtime with timers, as `#[tokio::main(flavor = "current_thread")]` builds.
fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A memory cache named `name` that hands its counts to `recorder` every `interval`.
fn batched(recorder: &DebuggingRecorder, name: &str, interval: Duration) -> MemoryCache<u64> {
    metrics::with_local_recorder(recorder, || {
        MemoryCache::builder()
            .name(name)
            .metrics_interval(interval)
            .build()
            .expect("valid")
    })
}

#[test]
fn with_a_metrics_interval_every_answer_reaches_the_recorder_once() {
    use layercache::Layered;
    const TASKS: u64 = 8;
    const EACH: u64 = 5_000;
    let recorder = DebuggingRecorder::new();
    let tally = Tally::new(&recorder);
    let cache: Layered<String> = metrics::with_local_recorder(&recorder, || {
        let l1 = MemoryCache::<String>::builder().build().expect("l1");
        Layered::single(l1)
            .name("batched")
            .metrics_interval(Duration::from_millis(50))
            .build()
            .expect("layered")
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let cache = cache.clone();
                tokio::spawn(async move {
                    for i in 0..EACH {
                        // 50 keys a task: mostly hits, a miss for each key's first ask.
                        let key = format!("t{t}:k{}", i % 50);
                        cache
                            .get_or_load(
                                &key,
                                || async { Ok::<_, std::io::Error>("a reply".to_owned()) },
                                LoadOptions::ttl(Duration::from_secs(60)),
                            )
                            .await
                            .expect("ok");
                        if i % 500 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("no panic");
        }
    });
    let stats = cache.stats();
    assert_eq!(stats.requests(), TASKS * EACH);
    assert_eq!(
        (stats.misses, stats.hits),
        (TASKS * 50, TASKS * (EACH - 50))
    );
    // The runtime is still up: its publication task hands the rest over within the interval.
    assert_eq!(
        tally.wait_for_requests("batched", TASKS * EACH),
        TASKS * EACH,
        "every answer once in the recorder, none twice"
    );
    let counters = tally.counters();
    let series = |layer: &str, result: &str| {
        counters
            .get(&(
                REQUESTS_TOTAL.to_owned(),
                labels(&[("cache", "batched"), ("layer", layer), ("result", result)]),
            ))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(series("l1", "hit"), stats.hits);
    assert_eq!(series("none", "miss"), stats.misses);
}

#[test]
fn a_batched_cache_hands_over_its_last_counts_when_dropped() {
    let recorder = DebuggingRecorder::new();
    let tally = Tally::new(&recorder);
    // A long interval: only the drop can hand the counts over before the test ends.
    let cache = batched(&recorder, "dropped", Duration::from_secs(60));
    let runtime = current_thread();
    runtime.block_on(async {
        cache
            .set_value("a", 1, Duration::from_secs(60))
            .await
            .expect("set");
        for _ in 0..100 {
            assert!(cache.get("a").await.expect("get").is_some());
        }
        assert!(cache.get("missing").await.expect("get").is_none());
    });
    assert_eq!(cache.stats().requests(), 101);
    drop(cache);
    assert_eq!(tally.requests("dropped"), 101);
    drop(runtime);
}

/// A memory `get`, polled once on this thread (it never waits): whether it found the key.
fn get_here(cache: &MemoryCache<u64>, key: &str) -> bool {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let mut get = std::pin::pin!(cache.get(key));
    match get.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(found) => found.expect("get").is_some(),
        Poll::Pending => panic!("a memory get had to wait"),
    }
}

#[test]
fn outside_a_runtime_a_batched_cache_counts_at_once() {
    let recorder = DebuggingRecorder::new();
    let tally = Tally::new(&recorder);
    let cache = batched(&recorder, "no_runtime", Duration::from_millis(100));
    // With no runtime anywhere, there is no task to hand counts over later.
    let poll = |key: &str| get_here(&cache, key);
    assert!(!poll("a"));
    assert_eq!(tally.requests("no_runtime"), 1);
    assert!(!poll("b"));
    assert_eq!(tally.requests("no_runtime"), 2);
}

#[test]
fn a_runtime_shut_down_before_its_publishing_task_ran_loses_nothing() {
    let recorder = DebuggingRecorder::new();
    let tally = Tally::new(&recorder);
    let cache = batched(&recorder, "shut_down", Duration::from_secs(30));
    let runtime = current_thread();
    // The miss starts a publishing task, which this runtime never polls: `get` is ready at once.
    runtime.block_on(async { assert!(!get_here(&cache, "a")) });
    assert_eq!(
        tally.requests("shut_down"),
        0,
        "handed over in 30 s, not now"
    );
    drop(runtime);
    assert_eq!(
        tally.requests("shut_down"),
        1,
        "the dropped task hands its count over"
    );
    // And lets go of the schedule: the next answer, with no runtime, arrives at once.
    assert!(!get_here(&cache, "b"));
    assert_eq!(tally.requests("shut_down"), 2);
}

#[test]
fn on_a_runtime_without_timers_batched_counts_still_arrive() {
    let recorder = DebuggingRecorder::new();
    let tally = Tally::new(&recorder);
    let cache = batched(&recorder, "untimed", Duration::from_millis(20));
    // No `enable_time`: the publication task cannot sleep (its panic is expected here, and
    // printed); the counts must reach the recorder all the same.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        cache
            .set_value("a", 1, Duration::from_secs(60))
            .await
            .expect("set");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            assert!(cache.get("a").await.expect("get").is_some());
            // Let the publication task run (and fail to sleep).
            tokio::task::yield_now().await;
            let asked = cache.stats().requests();
            if tally.requests("untimed") == asked && asked > 10 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the recorder never caught up: {} of {asked}",
                tally.requests("untimed")
            );
        }
    });
}

#[test]
fn a_metrics_interval_over_a_minute_is_refused_and_zero_counts_every_answer() {
    let err = MemoryCache::<u64>::builder()
        .metrics_interval(Duration::from_secs(61))
        .build()
        .expect_err("over a minute");
    assert!(matches!(err, layercache::Error::Config { .. }), "{err:?}");
    assert!(err.to_string().contains("metrics_interval"), "{err}");
    let l1 = MemoryCache::<u64>::builder().build().expect("l1");
    let err = layercache::Layered::single(l1)
        .metrics_interval(Duration::from_secs(3600))
        .build()
        .expect_err("over a minute");
    assert!(err.to_string().contains("metrics_interval"), "{err}");

    let recorder = DebuggingRecorder::new();
    let tally = Tally::new(&recorder);
    let cache = batched(&recorder, "zero", Duration::ZERO);
    let runtime = current_thread();
    runtime.block_on(async {
        assert!(cache.get("a").await.expect("get").is_none());
        assert_eq!(tally.requests("zero"), 1);
    });
}

#[test]
fn batched_counts_reach_the_recorder_while_answers_keep_coming() {
    use std::sync::atomic::AtomicBool;
    let recorder = DebuggingRecorder::new();
    let tally = Tally::new(&recorder);
    let cache = batched(&recorder, "busy", Duration::from_millis(20));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let stop = Arc::new(AtomicBool::new(false));
    let hammer = {
        let (cache, stop) = (cache.clone(), stop.clone());
        runtime.spawn(async move {
            cache
                .set_value("a", 1, Duration::from_secs(60))
                .await
                .expect("set");
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..100 {
                    assert!(cache.get("a").await.expect("get").is_some());
                }
                tokio::task::yield_now().await;
            }
        })
    };
    // The cache never goes quiet here: the publishing task must hand counts over as it goes.
    let seen = tally.wait_for_requests("busy", 10_000);
    assert!(seen >= 10_000, "only {seen} answers reached the recorder");
    assert!(!hammer.is_finished(), "the answers were still coming");
    stop.store(true, Ordering::Relaxed);
    runtime.block_on(hammer).expect("no panic");
    let asked = cache.stats().requests();
    assert_eq!(tally.wait_for_requests("busy", asked), asked);
}

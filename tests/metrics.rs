//! Metrics through the facade equal the test's own counts (checked with `DebuggingRecorder`),
//! and `Stats` agrees with them without any recorder.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use layercache::metrics::{COALESCED_TOTAL, LOADS_TOTAL, LOAD_DURATION_SECONDS, REQUESTS_TOTAL};
use layercache::{LoadOptions, MemoryCache};
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

//! Fleet benchmarks, each beside its peer in the same run.
//!
//! * `tagged_hit`: an L1 hit (`Layered::get_or_load` on a warm key) on an `untagged` entry vs a
//!   `tagged` one (2 tags, checked against the tag times on every hit, its options carrying the
//!   tags). Measured interleaved: each routine alternates batches of both hits and times its own.
//!   Target: tagged ≤ 1.2× untagged.
//! * `backplane_visibility` (feature `redis`): `raw_fred_pubsub` (a fred `PUBLISH` until a
//!   subscriber client in the same process receives it) vs `ours` (a `Layered::delete` in one
//!   instance until the key is gone from another instance's L1: the L2 delete, the message and
//!   its application). Both instances share one `redis-server` on loopback.
//!
//! ```text
//! cargo bench -p layercache-ecosystem --bench fleet
//! ```

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use layercache::{Layered, LoadOptions, MemoryCache};

#[cfg(feature = "redis")]
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime")
}

fn tagged_hit(c: &mut Criterion) {
    // One thread: the hit itself, not a scheduler's hand-offs, is what is measured.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("tagged_hit");
    let cache = Layered::single(MemoryCache::<u64>::builder().build().expect("memory"))
        .name("bench")
        .build()
        .expect("cache");
    let plain = LoadOptions::ttl(Duration::from_secs(3600));
    let tagged = plain.clone().with_tags(["user:42", "model:gpt-4o"]);
    rt.block_on(async {
        for (key, options) in [("untagged", &plain), ("tagged", &tagged)] {
            cache
                .get_or_load(
                    key,
                    || async { Ok::<_, std::io::Error>(7) },
                    options.clone(),
                )
                .await
                .expect("warm");
        }
        // Other tags change meanwhile: the check stays cached for entries they do not touch.
        cache.invalidate_tag("user:1").await.expect("invalidate");
    });
    // Interleaved: each id's routine alternates batches of both kinds of hit and times only its
    // own, so a busy neighbour or the order of the two routines weighs on both alike.
    const BATCH: u64 = 64;
    let hit = |key: &'static str, options: &LoadOptions| {
        let options = options.clone();
        let cache = &cache;
        async move {
            black_box(
                cache
                    .get_or_load(
                        black_box(key),
                        || async { Ok::<_, std::io::Error>(0) },
                        options,
                    )
                    .await,
            )
        }
    };
    // Both kinds' totals over every routine: their ratio is the interleaved one (same windows).
    let totals = std::cell::RefCell::new([Duration::ZERO; 2]);
    for id in ["untagged", "tagged"] {
        group.bench_function(id, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut mine = Duration::ZERO;
                    let mut done = 0;
                    while done < iters {
                        let n = BATCH.min(iters - done);
                        for kind in ["untagged", "tagged"] {
                            let options = if kind == "tagged" { &tagged } else { &plain };
                            let started = std::time::Instant::now();
                            for _ in 0..n {
                                let _ = hit(kind, options).await;
                            }
                            let took = started.elapsed();
                            totals.borrow_mut()[usize::from(kind == "tagged")] += took;
                            if kind == id {
                                mine += took;
                            }
                        }
                        done += n;
                    }
                    mine
                })
            })
        });
    }
    let [untagged, tagged] = *totals.borrow();
    // Nothing measured when the group was filtered out.
    if !untagged.is_zero() && !tagged.is_zero() {
        write_interleaved("tagged_hit", tagged.as_secs_f64() / untagged.as_secs_f64());
    }
    group.finish();
}

/// Record a group's interleaved ratio (ours / peer over the same time windows) beside
/// criterion's estimates, for `scripts/bench_report.py`.
fn write_interleaved(group: &str, ratio: f64) {
    let dir = std::env::var_os("CRITERION_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/criterion")
        })
        .join(group);
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(
            dir.join("interleaved.json"),
            format!("{{\"ratio\": {ratio:.4}}}\n"),
        );
    }
    println!("{group}: interleaved ratio {ratio:.3}");
}

#[cfg(feature = "redis")]
#[path = "../../tests/support/chat.rs"]
#[allow(dead_code, unreachable_pub)]
mod chat;
#[cfg(feature = "redis")]
#[path = "../../tests/support/redis.rs"]
#[allow(dead_code, unreachable_pub)]
mod redis_support;

#[cfg(feature = "redis")]
fn backplane_visibility(c: &mut Criterion) {
    use std::time::Instant;

    use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
    use layercache::{Cache, CacheExt, RedisCache};

    let rt = runtime();
    let server = redis_support::RedisServer::start();
    let mut group = c.benchmark_group("backplane_visibility");
    group.measurement_time(Duration::from_secs(5));

    let (publisher, subscriber) = rt.block_on(async {
        let config = fred::types::config::Config::from_url(&server.url()).expect("url");
        let publisher = fred::clients::Client::new(config.clone(), None, None, None);
        let subscriber = fred::clients::SubscriberClient::new(config, None, None, None);
        publisher.init().await.expect("publisher");
        subscriber.init().await.expect("subscriber");
        subscriber.subscribe("bench:raw").await.expect("subscribe");
        (publisher, subscriber)
    });
    let messages = subscriber.message_rx();
    group.bench_function("raw_fred_pubsub", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let publisher = publisher.clone();
            let mut messages = messages.resubscribe();
            async move {
                let started = Instant::now();
                for i in 0..iters {
                    let _: i64 = publisher
                        .publish("bench:raw", i.to_string())
                        .await
                        .expect("publish");
                    let _ = messages.recv().await.expect("message");
                }
                started.elapsed()
            }
        })
    });

    let replica = |name: &'static str| {
        let url = server.url();
        async move {
            let memory = MemoryCache::<String>::builder().build().expect("memory");
            let l2 = RedisCache::<String>::builder()
                .url(url)
                .namespace("bench")
                .build()
                .await
                .expect("l2");
            let backplane = l2.backplane().await.expect("backplane");
            let cache = Layered::builder(memory.clone(), l2)
                .name(name)
                .backplane(backplane)
                .build()
                .expect("cache");
            (cache, memory)
        }
    };
    // `_b` stays alive: its backplane task evicts from `b_l1`.
    let ((a, _), (_b, b_l1)) = rt.block_on(async { (replica("a").await, replica("b").await) });
    group.bench_function("ours", |bench| {
        bench.to_async(&rt).iter_custom(|iters| {
            let (a, b_l1, _b) = (a.clone(), b_l1.clone(), _b.clone());
            async move {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let key = format!("k{}", i % 64);
                    // The other instance holds the key in its L1.
                    b_l1.set_value(&key, "v".to_string(), Duration::from_secs(600))
                        .await
                        .expect("warm");
                    let started = Instant::now();
                    a.delete(&key).await.expect("delete");
                    while b_l1.peek(&key).await.ok().flatten().is_some() {
                        assert!(
                            started.elapsed() < Duration::from_secs(5),
                            "the other instance never evicted {key}: {:?}",
                            _b.backplane().map(|b| b.state())
                        );
                        tokio::task::yield_now().await;
                    }
                    total += started.elapsed();
                }
                total
            }
        })
    });
    group.finish();
    drop(subscriber);
}

#[cfg(feature = "redis")]
criterion_group!(benches, tagged_hit, backplane_visibility);
#[cfg(not(feature = "redis"))]
criterion_group!(benches, tagged_hit);
criterion_main!(benches);

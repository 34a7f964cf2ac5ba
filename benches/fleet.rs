//! Fleet benchmarks, each beside its peer in the same run.
//!
//! * `tagged_hit`: an L1 hit (`Layered::get_or_load` on a warm key) on an `untagged` entry vs a
//!   `tagged` one (2 tags, checked against the tag times on every hit). Target: tagged ≤ 1.2×
//!   untagged.
//! * `backplane_visibility` (feature `redis`): `raw_fred_pubsub` (a fred `PUBLISH` until a
//!   subscriber client in the same process receives it) vs `ours` (a `Layered::delete` in one
//!   instance until the key is gone from another instance's L1: the L2 delete, the message and
//!   its application). Both instances share one `redis-server` on loopback.
//!
//! ```text
//! cargo bench --bench fleet
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
    for id in ["untagged", "tagged"] {
        let options = if id == "tagged" { &tagged } else { &plain };
        group.bench_function(id, |b| {
            b.to_async(&rt).iter(|| async {
                black_box(
                    cache
                        .get_or_load(
                            black_box(id),
                            || async { Ok::<_, std::io::Error>(0) },
                            options.clone(),
                        )
                        .await,
                )
            })
        });
    }
    group.finish();
}

#[cfg(feature = "redis")]
#[path = "../tests/support/chat.rs"]
#[allow(dead_code, unreachable_pub)]
mod chat;
#[cfg(feature = "redis")]
#[path = "../tests/support/redis.rs"]
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

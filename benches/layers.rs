//! Layer benchmarks: each group puts layercache beside the code a user would write instead, in the
//! same run. Group and ID names are fixed (scripts read `target/criterion/<group>/<id>/`).
//!
//! * `l1_hit`: `raw_moka` (a `moka::future::Cache::get`) vs `layered` (the memory layer through
//!   `Arc<dyn Cache<V>>`, as a composed stack calls it).
//! * `get_or_load_hit`: `moka_try_get_with` vs `layered` (`get_or_load` on a warm key).
//! * `l2_hit` (feature `redis`): `raw_fred` (a fred `GET` plus the same decode) vs `layered`
//!   (`RedisCache::get` through `Arc<dyn Cache<V>>`), on the same ~1 KB value bytes.
//! * `batch_get_100` (feature `redis`): `sequential_get` (100 × `RedisCache::get`) vs `get_many`.
//!
//! The Redis groups start their own `redis-server` on a free port (like the tests). This VM's idle
//! CPUs wake slowly, so pin bench and server to one CPU for stable ratios:
//! `taskset -c 0 cargo bench --bench layers`.
//!
//! ```text
//! cargo bench --bench layers -- l1_hit
//! ```

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use layercache::{Cache, Entry, KeyBuilder, LoadOptions, MemoryCache};

/// A chat reply as services cache it: behind an `Arc`, so a hit clones a pointer.
#[derive(Debug)]
#[allow(dead_code)]
struct ChatReply {
    text: String,
    tokens: u32,
}

const KEYS: usize = 10_000;

fn keys() -> Vec<String> {
    (0..KEYS)
        .map(|i| {
            KeyBuilder::new("chat")
                .version(1)
                .part("gpt")
                .part_u64(i as u64)
                .build()
                .to_string()
        })
        .collect()
}

fn value(i: usize) -> Arc<ChatReply> {
    Arc::new(ChatReply {
        text: format!("reply number {i} with some body text"),
        tokens: i as u32,
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn l1_hit(c: &mut Criterion) {
    let rt = runtime();
    let keys = keys();
    let mut group = c.benchmark_group("l1_hit");

    let moka: moka::future::Cache<Arc<str>, Arc<ChatReply>> = moka::future::Cache::builder()
        .max_capacity(KEYS as u64 * 2)
        .time_to_live(Duration::from_secs(3600))
        .build();
    let ours: Arc<dyn Cache<Arc<ChatReply>>> = Arc::new(
        MemoryCache::builder()
            .max_entries(KEYS as u64 * 2)
            .time_to_live(Duration::from_secs(3600))
            .build()
            .expect("valid config"),
    );
    rt.block_on(async {
        for (i, k) in keys.iter().enumerate() {
            moka.insert(Arc::from(k.as_str()), value(i)).await;
            ours.set(k, Entry::new(value(i), Duration::from_secs(3600)))
                .await
                .expect("set");
        }
    });

    let mut i = 0usize;
    group.bench_function("raw_moka", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % KEYS;
            let key = keys[i].as_str();
            let moka = &moka;
            async move { black_box(moka.get(key).await) }
        })
    });
    let mut i = 0usize;
    group.bench_function("layered", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % KEYS;
            let key = keys[i].as_str();
            let ours = &ours;
            async move { black_box(ours.get(key).await.ok().flatten().map(Entry::into_value)) }
        })
    });
    group.finish();
}

fn get_or_load_hit(c: &mut Criterion) {
    let rt = runtime();
    let keys = keys();
    let mut group = c.benchmark_group("get_or_load_hit");

    // What a user writes by hand: String keys, looked up by `&str`.
    let moka: moka::future::Cache<String, Arc<ChatReply>> = moka::future::Cache::builder()
        .max_capacity(KEYS as u64 * 2)
        .time_to_live(Duration::from_secs(3600))
        .build();
    let ours: MemoryCache<Arc<ChatReply>> = MemoryCache::builder()
        .max_entries(KEYS as u64 * 2)
        .time_to_live(Duration::from_secs(3600))
        .build()
        .expect("valid config");
    rt.block_on(async {
        for (i, k) in keys.iter().enumerate() {
            moka.insert(k.clone(), value(i)).await;
            ours.set(k, Entry::new(value(i), Duration::from_secs(3600)))
                .await
                .expect("set");
        }
    });

    let mut i = 0usize;
    group.bench_function("moka_try_get_with", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % KEYS;
            let key = keys[i].as_str();
            let moka = &moka;
            async move {
                let got: Result<_, Arc<std::io::Error>> =
                    moka.try_get_with_by_ref(key, async { Ok(value(0)) }).await;
                black_box(got)
            }
        })
    });
    let mut i = 0usize;
    group.bench_function("layered", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % KEYS;
            let key = keys[i].as_str();
            let ours = &ours;
            async move {
                black_box(
                    ours.get_or_load(
                        key,
                        || async { Ok::<_, std::io::Error>(value(0)) },
                        LoadOptions::default(),
                    )
                    .await,
                )
            }
        })
    });
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

#[cfg(all(feature = "redis", feature = "postcard"))]
fn l2_hit(c: &mut Criterion) {
    use fred::bytes::Bytes;
    use fred::prelude::KeysInterface;
    use layercache::codec::{Codec, ValueCodec};
    use layercache::RedisCache;

    let rt = runtime();
    let server = redis_support::RedisServer::start();
    let value = chat::reply(1, 1024);
    let (ours, raw, codec) = rt.block_on(async {
        let ours: Arc<dyn Cache<chat::ChatReply>> = Arc::new(
            RedisCache::builder()
                .url(server.url())
                .namespace("bench")
                .build()
                .await
                .expect("connect"),
        );
        ours.set("k", Entry::new(value.clone(), Duration::from_secs(3600)))
            .await
            .expect("set");
        let raw = redis_support::raw_client(&server.url()).await;
        let codec = Codec::builder().build().expect("codec");
        (ours, raw, codec)
    });

    let mut group = c.benchmark_group("l2_hit");
    group.bench_function("raw_fred", |b| {
        b.to_async(&rt).iter(|| async {
            let bytes: Option<Bytes> = raw.get("bench:k").await.expect("get");
            let entry: Entry<chat::ChatReply> =
                codec.decode(&bytes.expect("present")).expect("decode");
            black_box(entry)
        })
    });
    group.bench_function("layered", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(ours.get("k").await.expect("get").expect("present")) })
    });
    group.finish();
    drop(server);
}

#[cfg(all(feature = "redis", feature = "postcard"))]
fn batch_get_100(c: &mut Criterion) {
    use layercache::RedisCache;

    let rt = runtime();
    let server = redis_support::RedisServer::start();
    let keys: Vec<String> = (0..100).map(|i| format!("batch-{i}")).collect();
    let ours: RedisCache<chat::ChatReply> = rt.block_on(async {
        let cache = RedisCache::builder()
            .url(server.url())
            .namespace("bench")
            .build()
            .await
            .expect("connect");
        let entries = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                (
                    k.as_str(),
                    Entry::new(chat::reply(i as u64, 512), Duration::from_secs(3600)),
                )
            })
            .collect();
        cache.set_many(entries).await.expect("set_many");
        cache
    });
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();

    let mut group = c.benchmark_group("batch_get_100");
    group.bench_function("sequential_get", |b| {
        b.to_async(&rt).iter(|| async {
            for key in &refs {
                black_box(ours.get(key).await.expect("get"));
            }
        })
    });
    group.bench_function("get_many", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(ours.get_many(&refs).await.expect("get_many")) })
    });
    group.finish();
    drop(server);
}

#[cfg(all(feature = "redis", feature = "postcard"))]
criterion_group!(benches, l1_hit, get_or_load_hit, l2_hit, batch_get_100);
#[cfg(not(all(feature = "redis", feature = "postcard")))]
criterion_group!(benches, l1_hit, get_or_load_hit);
criterion_main!(benches);

//! Layer benchmarks: each group puts layercache beside the code a user would write instead, in the
//! same run. Group and ID names are fixed (scripts read `target/criterion/<group>/<id>/`).
//!
//! * `l1_hit`: `raw_moka` (a `moka::future::Cache::get`) vs `layered` (`Layered::get`, through the
//!   `Cache` trait, answered by its memory L1), and `layered_quick_cache` (the same on the
//!   quick_cache engine, feature `quick-cache`).
//! * `l1_hit_parallel`: the same hits from 2 and 8 tasks on a multi-thread runtime
//!   (`raw_moka/N` vs `layered/N`), so contention across tasks shows.
//! * `get_or_load_hit`: `moka_try_get_with` vs `layered` (`Layered::get_or_load` on a key warm
//!   in L1), and `layered_quick_cache` (the same on the quick_cache engine).
//! * `hand_rolled_aside` (feature `redis`): `moka_fred_by_hand` (the cache-aside code a user
//!   writes with moka and fred: moka get, fred GET, zstd + postcard decode, moka insert) vs
//!   `layered`, both on the L2-hit path (L1 is cleared before each timed call).
//! * `l2_hit` (feature `redis`): `raw_fred` (a fred `GET` plus the same decode) and
//!   `raw_redis_rs` (redis-rs 1.x's `ConnectionManager`, the client a user might pick instead:
//!   `GET` plus the same decode) vs `layered`
//!   (`RedisCache::get` through `Arc<dyn Cache<V>>`, the default MessagePack codec), on the same
//!   ~1 KB value bytes; `layered_postcard` and `layered_json` read the same value written in
//!   those formats.
//! * `batch_get_100` (feature `redis`): `sequential_get` (100 × `RedisCache::get`) vs `get_many`;
//!   `layered_sequential_get` vs `layered_get_many`, the same through a `Layered` stack with a
//!   cold L1.
//! * `batch_set_100` (feature `redis`): 100 writes through that stack, `layered_sequential_set`
//!   (one `set` each) vs `layered_set_many`.
//! * `l2_set` (feature `redis`): one ~1 KB write, `raw_fred` (encode + fred `SET … PX`, by
//!   hand) vs `redis_cache` (`RedisCache::set`, a plain `SET`) vs `redis_cache_if_newer`
//!   (`RedisCache::set_if_newer`: one script by `EVALSHA`) vs `layered` (`Layered::set`: its L2
//!   write conditional like that, and the L1 store).
//!
//! The Redis groups start their own `redis-server` on a free port (like the tests). This VM's idle
//! CPUs wake slowly, so pin bench and server to one CPU for stable ratios:
//! `taskset -c 0 cargo bench -p layercache-ecosystem --bench layers`.
//!
//! ```text
//! cargo bench -p layercache-ecosystem --bench layers -- l1_hit
//! ```

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use layercache::{Cache, Entry, KeyBuilder, Layered, LoadOptions, MemoryCache};

/// A chat reply as services cache it: behind an `Arc`, so a hit clones a pointer.
#[derive(Debug)]
#[allow(dead_code)]
struct ChatReply {
    text: String,
    tokens: u32,
}

/// Keys in the memory-layer groups: 10,000 by default, `LAYERCACHE_BENCH_KEYS` to change it
/// (e.g. 1000 for a working set that fits in the CPU caches, whose ratios are steadier on a noisy
/// VM). Read once.
fn key_count() -> usize {
    static KEYS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *KEYS.get_or_init(|| {
        std::env::var("LAYERCACHE_BENCH_KEYS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or(10_000)
    })
}

fn keys() -> Vec<String> {
    (0..key_count())
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

/// A `Layered` stack whose L1 holds every key (its L2, never reached on these paths, is a
/// second memory layer so the L1 groups need no Redis).
fn layered() -> Layered<Arc<ChatReply>> {
    layered_on(layercache::Engine::Moka)
}

/// [`layered`] with its L1 on `engine`.
fn layered_on(engine: layercache::Engine) -> Layered<Arc<ChatReply>> {
    let l1 = MemoryCache::builder()
        .engine(engine)
        .name("l1")
        .max_entries(key_count() as u64 * 2)
        .time_to_live(Duration::from_secs(3600))
        .build()
        .expect("valid config");
    let l2 = MemoryCache::builder()
        .name("l2")
        .build()
        .expect("valid config");
    Layered::builder(l1, l2)
        .name("bench")
        .build()
        .expect("valid config")
}

/// [`layered_on`] `engine`, holding every key in `keys`.
#[cfg(feature = "quick-cache")]
fn filled(
    rt: &tokio::runtime::Runtime,
    engine: layercache::Engine,
    keys: &[String],
) -> Layered<Arc<ChatReply>> {
    let cache = layered_on(engine);
    rt.block_on(async {
        for (i, k) in keys.iter().enumerate() {
            cache
                .set(k, Entry::new(value(i), Duration::from_secs(3600)))
                .await
                .expect("set");
        }
    });
    cache
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
        .max_capacity(key_count() as u64 * 2)
        .time_to_live(Duration::from_secs(3600))
        .build();
    let ours: Arc<dyn Cache<Arc<ChatReply>>> = Arc::new(layered());
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
            i = (i + 1) % key_count();
            let key = keys[i].as_str();
            let moka = &moka;
            async move { black_box(moka.get(key).await) }
        })
    });
    let mut i = 0usize;
    group.bench_function("layered", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % key_count();
            let key = keys[i].as_str();
            let ours = &ours;
            async move { black_box(ours.get(key).await.ok().flatten().map(Entry::into_value)) }
        })
    });
    #[cfg(feature = "quick-cache")]
    {
        let quick: Arc<dyn Cache<Arc<ChatReply>>> =
            Arc::new(filled(&rt, layercache::Engine::QuickCache, &keys));
        let mut i = 0usize;
        group.bench_function("layered_quick_cache", |b| {
            b.to_async(&rt).iter(|| {
                i = (i + 1) % key_count();
                let key = keys[i].as_str();
                let quick = &quick;
                async move { black_box(quick.get(key).await.ok().flatten().map(Entry::into_value)) }
            })
        });
    }
    group.finish();
}

/// L1 hits from `tasks` concurrent tasks on a multi-thread runtime, so contention shows:
/// each iteration is one batch of 1,000 hits per task, all tasks at once.
fn l1_hit_parallel(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let keys: Arc<Vec<String>> = Arc::new(keys());
    let moka: moka::future::Cache<Arc<str>, Arc<ChatReply>> = moka::future::Cache::builder()
        .max_capacity(key_count() as u64 * 2)
        .time_to_live(Duration::from_secs(3600))
        .build();
    let ours: Arc<dyn Cache<Arc<ChatReply>>> = Arc::new(layered());
    rt.block_on(async {
        for (i, k) in keys.iter().enumerate() {
            moka.insert(Arc::from(k.as_str()), value(i)).await;
            ours.set(k, Entry::new(value(i), Duration::from_secs(3600)))
                .await
                .expect("set");
        }
    });
    const PER_TASK: usize = 1000;
    let mut group = c.benchmark_group("l1_hit_parallel");
    for tasks in [2usize, 8] {
        group.bench_function(format!("raw_moka/{tasks}"), |b| {
            b.to_async(&rt).iter(|| {
                let (moka, keys) = (moka.clone(), Arc::clone(&keys));
                async move {
                    let handles: Vec<_> = (0..tasks)
                        .map(|t| {
                            let (moka, keys) = (moka.clone(), Arc::clone(&keys));
                            tokio::spawn(async move {
                                for i in 0..PER_TASK {
                                    black_box(
                                        moka.get(keys[(t * 7919 + i) % key_count()].as_str()).await,
                                    );
                                }
                            })
                        })
                        .collect();
                    for h in handles {
                        h.await.expect("task");
                    }
                }
            })
        });
        group.bench_function(format!("layered/{tasks}"), |b| {
            b.to_async(&rt).iter(|| {
                let (ours, keys) = (Arc::clone(&ours), Arc::clone(&keys));
                async move {
                    let handles: Vec<_> = (0..tasks)
                        .map(|t| {
                            let (ours, keys) = (Arc::clone(&ours), Arc::clone(&keys));
                            tokio::spawn(async move {
                                for i in 0..PER_TASK {
                                    black_box(
                                        ours.get(&keys[(t * 7919 + i) % key_count()])
                                            .await
                                            .ok()
                                            .flatten(),
                                    );
                                }
                            })
                        })
                        .collect();
                    for h in handles {
                        h.await.expect("task");
                    }
                }
            })
        });
    }
    group.finish();
}

fn get_or_load_hit(c: &mut Criterion) {
    let rt = runtime();
    let keys = keys();
    let mut group = c.benchmark_group("get_or_load_hit");

    // What a user writes by hand: String keys, looked up by `&str`.
    let moka: moka::future::Cache<String, Arc<ChatReply>> = moka::future::Cache::builder()
        .max_capacity(key_count() as u64 * 2)
        .time_to_live(Duration::from_secs(3600))
        .build();
    let ours = layered();
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
            i = (i + 1) % key_count();
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
            i = (i + 1) % key_count();
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
    #[cfg(feature = "quick-cache")]
    {
        let quick = filled(&rt, layercache::Engine::QuickCache, &keys);
        let mut i = 0usize;
        group.bench_function("layered_quick_cache", |b| {
            b.to_async(&rt).iter(|| {
                i = (i + 1) % key_count();
                let key = keys[i].as_str();
                let quick = &quick;
                async move {
                    black_box(
                        quick
                            .get_or_load(
                                key,
                                || async { Ok::<_, std::io::Error>(value(0)) },
                                LoadOptions::default(),
                            )
                            .await,
                    )
                }
            })
        });
    }
    group.finish();
}

#[cfg(feature = "redis")]
#[path = "../../tests/support/chat.rs"]
#[allow(dead_code, unreachable_pub)]
mod chat;
#[cfg(feature = "redis")]
#[path = "../../tests/support/redis.rs"]
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
    let (ours, others, raw, codec) = rt.block_on(async {
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
        let mut others: Vec<(&'static str, Arc<dyn Cache<chat::ChatReply>>)> = Vec::new();
        let postcard = Codec::with_format(layercache::codec::Postcard)
            .build()
            .expect("codec");
        others.push((
            "layered_postcard",
            Arc::new(
                RedisCache::builder_with_codec(postcard)
                    .url(server.url())
                    .namespace("bench-postcard")
                    .build()
                    .await
                    .expect("connect"),
            ),
        ));
        #[cfg(feature = "json")]
        others.push((
            "layered_json",
            Arc::new(
                RedisCache::builder_with_codec(
                    Codec::with_format(layercache::codec::Json)
                        .build()
                        .expect("codec"),
                )
                .url(server.url())
                .namespace("bench-json")
                .build()
                .await
                .expect("connect"),
            ),
        ));
        for (_, cache) in &others {
            cache
                .set("k", Entry::new(value.clone(), Duration::from_secs(3600)))
                .await
                .expect("set");
        }
        let raw = redis_support::raw_client(&server.url()).await;
        let codec = Codec::builder().build().expect("codec");
        (ours, others, raw, codec)
    });
    let redis_rs = rt.block_on(async {
        redis::Client::open(server.url())
            .expect("a valid URL")
            .get_connection_manager()
            .await
            .expect("connect")
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
    group.bench_function("raw_redis_rs", |b| {
        b.to_async(&rt).iter(|| {
            let mut con = redis_rs.clone();
            let codec = &codec;
            async move {
                let bytes: Option<Vec<u8>> = redis::AsyncCommands::get(&mut con, "bench:k")
                    .await
                    .expect("get");
                let entry: Entry<chat::ChatReply> =
                    codec.decode(&bytes.expect("present")).expect("decode");
                black_box(entry)
            }
        })
    });
    group.bench_function("layered", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(ours.get("k").await.expect("get").expect("present")) })
    });
    for (id, cache) in &others {
        group.bench_function(*id, |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(cache.get("k").await.expect("get").expect("present")) })
        });
    }
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
    // The same through a `Layered` stack whose L1 is emptied before each batch (untimed): every
    // key comes from Redis and is copied into L1.
    let l1 = MemoryCache::builder().build().expect("l1");
    let stack = Layered::builder(l1.clone(), ours.clone())
        .build()
        .expect("layered");
    group.bench_function("layered_sequential_get", |b| {
        b.to_async(&rt).iter_batched(
            || l1.invalidate_all(),
            |()| async {
                for key in &refs {
                    black_box(stack.get(key).await.expect("get"));
                }
            },
            criterion::BatchSize::PerIteration,
        )
    });
    group.bench_function("layered_get_many", |b| {
        b.to_async(&rt).iter_batched(
            || l1.invalidate_all(),
            |()| async { black_box(stack.get_many(&refs).await.expect("get_many")) },
            criterion::BatchSize::PerIteration,
        )
    });
    group.finish();

    // Writes of the same 100 replies through the stack: one `set` each vs one `set_many`. Each
    // write is a new entry (as `set_value` makes one), so each replaces the one before it.
    let replies: Vec<chat::ChatReply> = (0..refs.len())
        .map(|i| chat::reply(i as u64, 512))
        .collect();
    let fresh = |value: &chat::ChatReply| Entry::new(value.clone(), Duration::from_secs(3600));
    let mut group = c.benchmark_group("batch_set_100");
    group.bench_function("layered_sequential_set", |b| {
        b.to_async(&rt).iter(|| async {
            for (key, value) in refs.iter().zip(&replies) {
                stack.set(key, fresh(value)).await.expect("set");
            }
        })
    });
    group.bench_function("layered_set_many", |b| {
        b.to_async(&rt).iter(|| async {
            let batch = refs
                .iter()
                .copied()
                .zip(replies.iter().map(fresh))
                .collect();
            stack.set_many(batch).await.expect("set_many")
        })
    });
    group.finish();

    // One write of a ~1 KB reply: what a user writes by hand (encode, fred `SET … PX`) vs a
    // plain `RedisCache::set` vs `Layered::set`, whose L2 write is conditional on creation time
    // (one script by `EVALSHA`) and which also stores the entry in L1.
    let raw = rt.block_on(redis_support::raw_client(&server.url()));
    let codec = layercache::Codec::builder().build().expect("codec");
    let value = chat::reply(9, 1024);
    let mut group = c.benchmark_group("l2_set");
    group.bench_function("raw_fred", |b| {
        b.to_async(&rt).iter(|| async {
            use fred::prelude::{Expiration, KeysInterface};
            let bytes = layercache::ValueCodec::encode(&codec, &fresh(&value)).expect("encode");
            let _: () = raw
                .set(
                    "bench:one",
                    fred::bytes::Bytes::from(bytes),
                    Some(Expiration::PX(3_600_000)),
                    None,
                    false,
                )
                .await
                .expect("set");
        })
    });
    group.bench_function("redis_cache", |b| {
        b.to_async(&rt)
            .iter(|| async { ours.set("one", fresh(&value)).await.expect("set") })
    });
    group.bench_function("redis_cache_if_newer", |b| {
        b.to_async(&rt).iter(|| async {
            ours.set_if_newer("one", fresh(&value))
                .await
                .expect("set_if_newer")
        })
    });
    group.bench_function("layered", |b| {
        b.to_async(&rt)
            .iter(|| async { stack.set("one", fresh(&value)).await.expect("set") })
    });
    group.finish();
    drop(server);
}

#[cfg(all(feature = "redis", feature = "postcard", feature = "zstd"))]
fn hand_rolled_aside(c: &mut Criterion) {
    use fred::bytes::Bytes;
    use fred::prelude::KeysInterface;
    use layercache::RedisCache;

    const N: usize = 1000;
    let rt = runtime();
    let server = redis_support::RedisServer::start();
    let keys: Vec<String> = (0..N).map(|i| format!("aside-{i}")).collect();
    let value = chat::reply(3, 1024);

    // Ours: memory L1 in front of Redis L2.
    let l1 = MemoryCache::<chat::ChatReply>::builder()
        .name("l1")
        .build()
        .expect("l1");
    let (ours, raw) = rt.block_on(async {
        let l2 = RedisCache::builder()
            .name("l2")
            .url(server.url())
            .namespace("ours")
            .build()
            .await
            .expect("l2");
        let ours = Layered::builder(l1.clone(), l2.clone())
            .name("bench")
            .build()
            .expect("layered");
        let entries = keys
            .iter()
            .map(|k| {
                (
                    k.as_str(),
                    Entry::new(value.clone(), Duration::from_secs(3600)),
                )
            })
            .collect();
        l2.set_many(entries).await.expect("populate L2");
        let raw = redis_support::raw_client(&server.url()).await;
        // By hand: the same value as zstd(postcard), stored with fred.
        let bytes = zstd::bulk::compress(&postcard::to_allocvec(&value).expect("postcard"), 3)
            .expect("zstd");
        for k in &keys {
            let _: () = raw
                .set(
                    format!("hand:{k}"),
                    Bytes::from(bytes.clone()),
                    None,
                    None,
                    false,
                )
                .await
                .expect("set");
        }
        (ours, raw)
    });
    let moka: moka::future::Cache<String, Arc<chat::ChatReply>> = moka::future::Cache::builder()
        .max_capacity(10_000)
        .time_to_live(Duration::from_secs(300))
        .build();

    /// The cache-aside code a user writes by hand over moka and fred.
    async fn by_hand(
        moka: &moka::future::Cache<String, Arc<chat::ChatReply>>,
        redis: &fred::clients::Client,
        key: &str,
    ) -> Option<Arc<chat::ChatReply>> {
        if let Some(hit) = moka.get(key).await {
            return Some(hit);
        }
        let bytes: Option<Bytes> = redis.get(format!("hand:{key}")).await.ok()?;
        let raw = zstd::decode_all(&bytes?[..]).ok()?;
        let value: chat::ChatReply = postcard::from_bytes(&raw).ok()?;
        let value = Arc::new(value);
        moka.insert(key.to_owned(), Arc::clone(&value)).await;
        Some(value)
    }

    let mut group = c.benchmark_group("hand_rolled_aside");
    group.bench_function("moka_fred_by_hand", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (moka, raw, keys) = (moka.clone(), raw.clone(), keys.clone());
            async move {
                let mut total = Duration::ZERO;
                for i in 0..iters as usize {
                    let key = &keys[i % N];
                    moka.invalidate(key).await;
                    let started = std::time::Instant::now();
                    black_box(by_hand(&moka, &raw, key).await.expect("L2 hit"));
                    total += started.elapsed();
                }
                total
            }
        })
    });
    group.bench_function("layered", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (ours, l1, keys) = (ours.clone(), l1.clone(), keys.clone());
            async move {
                let mut total = Duration::ZERO;
                for i in 0..iters as usize {
                    let key = &keys[i % N];
                    l1.delete(key).await.expect("clear L1");
                    let started = std::time::Instant::now();
                    let got = ours
                        .get_or_load(
                            key,
                            || async {
                                Err::<chat::ChatReply, _>(std::io::Error::other("not called"))
                            },
                            LoadOptions::default(),
                        )
                        .await;
                    black_box(got.expect("L2 hit"));
                    total += started.elapsed();
                }
                total
            }
        })
    });
    group.finish();
    drop(server);
}

#[cfg(all(feature = "redis", feature = "postcard", feature = "zstd"))]
criterion_group!(
    benches,
    l1_hit,
    l1_hit_parallel,
    get_or_load_hit,
    l2_hit,
    batch_get_100,
    hand_rolled_aside
);
#[cfg(all(feature = "redis", feature = "postcard", not(feature = "zstd")))]
criterion_group!(
    benches,
    l1_hit,
    l1_hit_parallel,
    get_or_load_hit,
    l2_hit,
    batch_get_100
);
#[cfg(not(all(feature = "redis", feature = "postcard")))]
criterion_group!(benches, l1_hit, l1_hit_parallel, get_or_load_hit);
criterion_main!(benches);

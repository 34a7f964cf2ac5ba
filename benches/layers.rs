//! Layer benchmarks: each group puts layercache beside the code a user would write instead, in the
//! same run. Group and ID names are fixed (scripts read `target/criterion/<group>/<id>/`).
//!
//! * `l1_hit`: `raw_moka` (a `moka::future::Cache::get`) vs `layered` (the memory layer through
//!   `Arc<dyn Cache<V>>`, as a composed stack calls it).
//! * `get_or_load_hit`: `moka_try_get_with` vs `layered` (`get_or_load` on a warm key).
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

criterion_group!(benches, l1_hit, get_or_load_hit);
criterion_main!(benches);

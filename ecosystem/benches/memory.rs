//! `memory_per_entry`: heap bytes per cached 1 KB value, ours beside the raw engine.
//!
//! A counting global allocator tracks live heap bytes. Each implementation is filled with
//! `LAYERCACHE_MEMORY_ENTRIES` (default 1,000,000) entries — a 1,024-byte string value under a
//! 40-byte key, what a cached completion looks like — and the live bytes it added, divided by
//! the entry count, is its footprint per entry (value, key, engine node and our entry header).
//! Implementations are measured one at a time, each dropped before the next. Exact (no timing):
//! the same figures on any machine with the same crate versions.
//!
//! Writes `target/criterion/memory_per_entry/report.json` for `scripts/bench_report.py`.
//! Target (issue 16): ours ≤ 1.15× the raw engine.
//!
//! ```text
//! cargo bench -p layercache-ecosystem --bench memory
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use layercache::{CacheExt, Engine, MemoryCache};

/// The system allocator, counting live bytes.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; only a counter is added.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same layout, as the caller guarantees for `alloc`.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded as received.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

type Value = Arc<str>;

fn key(i: usize) -> String {
    format!("chat:v1:gpt-4o:#{i:031}")
}

fn value(i: usize) -> Value {
    let mut s = format!("completion {i}: ");
    while s.len() < 1024 {
        s.push_str("lorem ipsum dolor sit amet ");
    }
    s.truncate(1024);
    Arc::from(s)
}

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// Live bytes per entry that `fill` added and kept (measured before the cache is dropped).
fn per_entry(entries: usize, fill: impl FnOnce(usize) -> Box<dyn std::any::Any>) -> f64 {
    settle();
    let before = live();
    let cache = fill(entries);
    let added = live() - before;
    drop(cache);
    added as f64 / entries as f64
}

/// Wait until the live byte count stops moving (a dropped cache's last clones, held by a
/// background sweep, go a little later), for at most 5 s.
fn settle() {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut last = live();
    while std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now = live();
        if now == last {
            return;
        }
        last = now;
    }
}

fn main() {
    let entries: usize = std::env::var("LAYERCACHE_MEMORY_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _entered = rt.enter();
    let capacity = entries as u64 * 2;
    let mut rows: Vec<(&str, f64)> = Vec::new();

    rows.push((
        "raw_moka",
        per_entry(entries, |n| {
            let cache: moka::sync::Cache<Arc<str>, Value> = moka::sync::Cache::new(capacity);
            for i in 0..n {
                cache.insert(Arc::from(key(i)), value(i));
            }
            cache.run_pending_tasks();
            Box::new(cache)
        }),
    ));
    rows.push((
        "raw_quick_cache",
        per_entry(entries, |n| {
            let cache: quick_cache::sync::Cache<Arc<str>, Value> =
                quick_cache::sync::Cache::new(capacity as usize);
            for i in 0..n {
                cache.insert(Arc::from(key(i)), value(i));
            }
            Box::new(cache)
        }),
    ));
    for (id, engine) in [
        ("memory_moka", Engine::Moka),
        ("memory_quick_cache", Engine::QuickCache),
    ] {
        let rt = &rt;
        rows.push((
            id,
            per_entry(entries, move |n| {
                let cache: MemoryCache<Value> = MemoryCache::builder()
                    .engine(engine)
                    .max_entries(capacity)
                    .build()
                    .expect("memory cache");
                for i in 0..n {
                    rt.block_on(cache.set_value(&key(i), value(i), Duration::from_secs(3600)))
                        .expect("set");
                }
                rt.block_on(cache.run_pending_tasks());
                Box::new(cache)
            }),
        ));
    }

    let get = |id: &str| rows.iter().find(|r| r.0 == id).map(|r| r.1).unwrap_or(0.0);
    for (id, bytes) in &rows {
        println!("{id:<20} {bytes:>8.1} bytes per entry");
    }
    let moka_ratio = get("memory_moka") / get("raw_moka");
    let quick_ratio = get("memory_quick_cache") / get("raw_quick_cache");
    println!("memory_moka / raw_moka = {moka_ratio:.3}; memory_quick_cache / raw_quick_cache = {quick_ratio:.3}");
    let json_rows: Vec<String> = rows
        .iter()
        .map(|(id, bytes)| format!("{{\"id\":\"{id}\",\"bytes_per_entry\":{bytes:.1}}}"))
        .collect();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/criterion/memory_per_entry");
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(
            dir.join("report.json"),
            format!(
                "{{\"entries\":{entries},\"value_bytes\":1024,\"key_bytes\":{},\"rows\":[{}]}}\n",
                key(0).len(),
                json_rows.join(",")
            ),
        );
    }
}

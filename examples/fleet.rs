//! Two replicas, one cache: invalidations crossing between processes through the backplane.
//!
//! ```text
//! redis-server --port 6379 &
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example fleet
//! ```
//!
//! The program starts a second copy of itself as replica B, which keeps reading one key through
//! its own memory L1. Replica A then overwrites the key, deletes it, writes it again tagged
//! `user:42` and invalidates that tag; B's L1 copy is evicted (or expired, for the tag) by the
//! backplane message, and B prints when it sees each change.

use std::time::{Duration, Instant};

use layercache::{Cache, CacheExt, Entry, Layered, MemoryCache, RedisCache};

async fn replica(url: &str) -> Result<Layered<String>, Box<dyn std::error::Error>> {
    let l2 = RedisCache::<String>::builder()
        .url(url)
        .namespace("fleet-example")
        .build()
        .await?;
    let backplane = l2.backplane().await?;
    Ok(Layered::builder(MemoryCache::builder().build()?, l2)
        .name("fleet")
        .backplane(backplane)
        .build()?)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let cache = replica(&url).await?;

    if std::env::args().any(|a| a == "--replica") {
        // Replica B: read the key every millisecond (from L1 while it is valid), report changes.
        let started = Instant::now();
        let mut last = None;
        while started.elapsed() < Duration::from_secs(5) {
            let now = cache.get_value("greeting").await?;
            if now != last {
                println!("  B at {:>5.1?}: greeting = {now:?}", started.elapsed());
                last = now;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        return Ok(());
    }

    // Replica A.
    cache
        .set_value("greeting", "hello v1".into(), Duration::from_secs(600))
        .await?;
    println!("A: set greeting = \"hello v1\", starting replica B");
    let mut b = tokio::process::Command::new(std::env::current_exe()?)
        .arg("--replica")
        .spawn()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("A: overwrite greeting = \"hello v2\" (B holds v1 in its L1)");
    cache
        .set_value("greeting", "hello v2".into(), Duration::from_secs(600))
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("A: delete greeting");
    cache.delete("greeting").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("A: set greeting = \"hello v3\" tagged user:42");
    let entry = Entry::new("hello v3".to_string(), Duration::from_secs(600)).with_tags(["user:42"]);
    cache.set("greeting", entry).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("A: invalidate_tag(\"user:42\") — one Redis write, however many entries carry it");
    cache.invalidate_tag("user:42").await?;
    b.wait().await?;
    Ok(())
}

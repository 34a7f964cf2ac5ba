//! The Redis layer's builder options, batch operations and bulk invalidation.
//!
//! ```text
//! redis-server --port 6379 &          # any Redis 6.2+
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example redis
//! ```
//!
//! `REDIS_URL` defaults to `redis://127.0.0.1:6379`. A cluster works the same way:
//! `REDIS_URL=redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001&node=127.0.0.1:7002`.

use std::time::Duration;

use layercache::codec::Codec;
use layercache::{Cache, CacheExt, Entry, KeyBuilder, Reconnect, RedisCache};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Embedding {
    model: String,
    vector: Vec<f32>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());

    // Every option, with its default in the comment.
    let codec = Codec::builder() // MessagePack with field names (reads back any serde type)
        .compress_above(2048) // 1 KiB
        .schema(1) // 0: bump when the value type changes incompatibly
        .verify_writes(true) // true: a value that would not read back is refused at write
        .zstd_level(3) // 3
        .max_value_bytes(8 << 20) // 64 MiB
        .build()?;
    let cache = RedisCache::<Embedding>::builder_with_codec(codec)
        .name("embeddings") // "redis": the metrics label
        .url(&url)
        .namespace("emb:v1") // none: keys are prefixed "emb:v1:"
        .pool_size(4) // 2: half for writes (each key always on the same one), half for reads
        .command_timeout(Duration::from_millis(200)) // 250 ms
        .connect_timeout(Duration::from_secs(2)) // 2 s
        .unresponsive_after(Duration::from_secs(2)) // 8 × command timeout, at least 2 s
        .reconnect(Reconnect::Exponential {
            min: Duration::from_millis(10),
            max: Duration::from_secs(1),
        }) // the same
        .build()
        .await
        .map_err(|e| format!("could not reach Redis at {url}: {e} (set REDIS_URL)"))?;
    println!("connected; PING took {:?}", cache.ping().await?);

    // Single values.
    let key = KeyBuilder::new("doc").part("42").part("chunk-7").build();
    let value = Embedding {
        model: "text-embedding-3-small".into(),
        vector: vec![0.25; 1536],
    };
    cache
        .set_value(&key, value.clone(), Duration::from_secs(600))
        .await?;
    assert_eq!(cache.get_value(&key).await?, Some(value.clone()));
    println!("stored and read back {key}");

    // Batches: one pipeline of SETs, one MGET.
    let keys: Vec<String> = (0..100).map(|i| format!("doc:43:chunk-{i}")).collect();
    let entries = keys
        .iter()
        .map(|k| {
            (
                k.as_str(),
                Entry::new(value.clone(), Duration::from_secs(600)),
            )
        })
        .collect();
    cache.set_many(entries).await?;
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let found = cache
        .get_many(&refs)
        .await?
        .iter()
        .filter(|e| e.is_some())
        .count();
    println!("get_many: {found} of {} keys found", keys.len());

    // Bulk invalidation: SCAN + UNLINK on every primary, never KEYS.
    let removed = cache.invalidate_prefix("doc:43:").await?;
    println!("invalidate_prefix(\"doc:43:\") removed {removed} keys");
    cache.delete(&key).await?;

    let stats = cache.stats();
    println!(
        "stats: {} hits, {} misses, {} errors",
        stats.hits, stats.misses, stats.errors
    );
    Ok(())
}

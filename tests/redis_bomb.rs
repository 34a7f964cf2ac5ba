//! A zstd bomb written into Redis behind the cache's back: a miss, the key deleted, and peak
//! memory raised by less than 2 × `max_value_bytes`. Its own test binary, so that no other test
//! moves this process's peak RSS.

#![cfg(all(feature = "redis", feature = "postcard", feature = "zstd"))]

mod support;

use fred::bytes::Bytes;
use fred::prelude::KeysInterface;
use layercache::codec::DEFAULT_MAX_VALUE_BYTES;
use layercache::{Cache, RedisCache};
use support::chat::ChatReply;
use support::frames::frame;
use support::redis::{peak_rss_bytes, raw_client, RedisServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zstd_bomb_is_a_miss_with_bounded_memory() {
    let server = RedisServer::start();
    let cache: RedisCache<ChatReply> = RedisCache::builder()
        .url(server.url())
        .namespace("b")
        .build()
        .await
        .expect("connect");
    let raw = raw_client(&server.url()).await;
    // Made once with zstd level 19 from 512 MiB of zeros (see tests/support/frames.rs,
    // `zstd_bomb_with`); loaded from files so that building them does not raise the baseline.
    let declared: &[u8] = include_bytes!("data/zstd-bomb-512mib-declared.zst");
    let undeclared: &[u8] = include_bytes!("data/zstd-bomb-512mib-undeclared.zst");
    println!(
        "bombs: {} and {} bytes of zstd that expand to 512 MiB",
        declared.len(),
        undeclared.len()
    );
    assert!(declared.len() < 32 * 1024 && undeclared.len() < 32 * 1024);

    // Warm up allocator and connections before taking the baseline.
    assert!(cache.get("warm").await.expect("get").is_none());
    let baseline = peak_rss_bytes();
    let max = DEFAULT_MAX_VALUE_BYTES as u32;
    // Our frame tells the truth (512 MiB), lies small, or lies at exactly the limit; the zstd
    // frame inside declares its size or does not.
    let mut cases = 0;
    for (zstd_name, bomb) in [("declared", declared), ("undeclared", undeclared)] {
        for (frame_name, claimed) in [("honest", 512u32 << 20), ("small", 1000), ("at-limit", max)]
        {
            cases += 1;
            let name = format!("{zstd_name}-{frame_name}");
            let key = format!("b:{name}");
            let framed = frame(1, 3, &[], bomb, claimed);
            let _: () = raw
                .set(&key, Bytes::from(framed), None, None, false)
                .await
                .expect("raw set");
            assert!(
                cache
                    .get(&name)
                    .await
                    .expect("a miss, not an error")
                    .is_none(),
                "{name}"
            );
            let exists: i64 = raw.exists(&key).await.expect("exists");
            // A frame that admits a size over our limit may be read by a deployment with a
            // higher one: a miss here, but kept. Frames that lie about their size are corrupt.
            let expected = i64::from(frame_name == "honest");
            assert_eq!(exists, expected, "{name}: corrupt frames are deleted");
        }
    }
    let grew = peak_rss_bytes().saturating_sub(baseline);
    println!(
        "peak RSS grew by {:.1} MiB (limit {} MiB)",
        grew as f64 / 1048576.0,
        2 * max / 1048576
    );
    assert!(
        grew < 2 * u64::from(max),
        "peak memory grew by {grew} bytes"
    );
    assert_eq!(
        cache.stats().errors,
        cases,
        "one decode error counted per bomb"
    );
}

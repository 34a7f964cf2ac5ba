//! Rolling deploys on a real Redis: the old and the new version of a service serve side by side,
//! and the new one changed the value type. Neither may switch caching off for the other by
//! overwriting its values on every read (each overwrite is announced, evicting the other
//! version's L1 copies, whose next read loads again: an LLM call per request for as long as the
//! deploy lasts).

#![cfg(all(feature = "redis", feature = "msgpack"))]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fred::interfaces::{ClientLike, KeysInterface};
use layercache::{CacheExt, Layered, LoadOptions, MemoryCache, RedisCache};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use support::redis::RedisServer;

/// The reply as version 1 caches it: usage as a bare token count.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct ReplyV1 {
    id: String,
    content: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<String>,
    usage: u32,
}

/// Version 2 made usage a struct: neither version reads the other's values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct ReplyV2 {
    id: String,
    content: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<String>,
    usage: Usage,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Usage {
    prompt_tokens: u32,
    completion_tokens: u32,
}

fn v1() -> ReplyV1 {
    ReplyV1 {
        id: "chatcmpl-1".into(),
        content: "The ticket asks for a refund of order 1234.".into(),
        refusal: None,
        usage: 57,
    }
}

fn v2() -> ReplyV2 {
    ReplyV2 {
        id: "chatcmpl-2".into(),
        content: "The ticket asks for a refund of order 1234.".into(),
        refusal: None,
        usage: Usage {
            prompt_tokens: 40,
            completion_tokens: 17,
        },
    }
}

/// One replica of a version: memory L1, Redis L2 under the shared namespace, a backplane.
async fn replica<V>(server: &RedisServer) -> Layered<V>
where
    V: Clone + Send + Sync + Serialize + DeserializeOwned + 'static,
{
    let l2 = RedisCache::<V>::builder()
        .url(server.url())
        .namespace("chat")
        .build()
        .await
        .expect("l2");
    let backplane = l2.backplane().await.expect("backplane");
    let cache = Layered::builder(MemoryCache::builder().build().expect("l1"), l2)
        .name("chat")
        .backplane(backplane)
        .build()
        .expect("cache");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cache.backplane().is_some_and(|b| b.is_subscribed()) {
        assert!(Instant::now() < deadline, "the replica hears the fleet");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cache
}

/// `get_or_load` of `key`, counting the loads in `loads`.
async fn answer<V>(cache: &Layered<V>, key: &str, value: V, loads: &Arc<AtomicUsize>) -> V
where
    V: Clone + Send + Sync + 'static,
{
    let loads = Arc::clone(loads);
    cache
        .get_or_load(
            key,
            move || async move {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(value)
            },
            LoadOptions::ttl(Duration::from_secs(3600)),
        )
        .await
        .expect("answered")
}

/// What a plain `RedisCache` of type `V` reads under `key` (`None`: nothing it can read).
async fn in_redis<V>(server: &RedisServer, key: &str) -> Option<V>
where
    V: Clone + Send + Sync + Serialize + DeserializeOwned + 'static,
{
    let reader = RedisCache::<V>::builder()
        .url(server.url())
        .namespace("chat")
        .build()
        .await
        .expect("reader");
    reader.get_value(key).await.expect("read")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_versions_whose_value_type_changed_do_not_take_turns_loading() {
    let server = RedisServer::start();
    let old = replica::<ReplyV1>(&server).await;
    let new = replica::<ReplyV2>(&server).await;
    let (old_loads, new_loads) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));

    // Requests alternate between the versions, as a load balancer spreads them mid-deploy.
    // While the first announcements are in flight a version may load once more (a message about
    // the other version's first load can evict its fresh copy); after that, none loads again.
    let mut settled = (0, 0);
    for round in 0..20 {
        // Requests a few milliseconds apart: each version's messages arrive in between.
        assert_eq!(answer(&old, "summary", v1(), &old_loads).await, v1());
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(answer(&new, "summary", v2(), &new_loads).await, v2());
        tokio::time::sleep(Duration::from_millis(5)).await;
        if round == 1 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            settled = (
                old_loads.load(Ordering::SeqCst),
                new_loads.load(Ordering::SeqCst),
            );
        }
    }
    let loads = (
        old_loads.load(Ordering::SeqCst),
        new_loads.load(Ordering::SeqCst),
    );
    println!(
        "40 alternating reads of one key by two versions: {} + {} loads ({settled:?} after the \
         first 4 reads)",
        loads.0, loads.1
    );
    assert!(
        settled.0 <= 2 && settled.1 <= 2,
        "each version loads the key once (twice at most), not once per read: {settled:?}"
    );
    assert_eq!(loads, settled, "no load after the first rounds");
    // The version that wrote first keeps Redis; the other did not overwrite it.
    assert_eq!(in_redis::<ReplyV1>(&server, "summary").await, Some(v1()));
}

/// Rewrite the creation time in the metadata block of the frame under `full_key` (a plain
/// frame: no schema id, not compressed, not signed) and its checksum, by the documented layout.
async fn age_frame(server: &RedisServer, full_key: &str, age: Duration) {
    let client = fred::prelude::Builder::from_config(
        fred::prelude::Config::from_url(&server.url()).expect("url"),
    )
    .build()
    .expect("client");
    client.init().await.expect("connect");
    let bytes: Vec<u8> = client.get(full_key).await.expect("get");
    let mut frame = bytes.clone();
    assert_eq!(&frame[..3], b"LC\x01", "a version-1 frame");
    assert_eq!(frame[3], 0b1000, "plain frame with a metadata block");
    let created = SystemTime::now()
        .checked_sub(age)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .expect("time")
        .as_micros() as u64;
    frame[41..49].copy_from_slice(&created.to_le_bytes());
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&frame[..33]);
    h.update(&frame[41..]);
    frame[33..41].copy_from_slice(&h.digest().to_le_bytes());
    let _: () = client
        .set(full_key, frame, None, None, false)
        .await
        .expect("set");
    let _ = client.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_the_other_version_wrote_long_ago_is_taken_over() {
    let server = RedisServer::start();
    let old = replica::<ReplyV1>(&server).await;
    let loads = Arc::new(AtomicUsize::new(0));
    assert_eq!(answer(&old, "summary", v1(), &loads).await, v1());
    // Written before the deploy began, by a version that has stopped writing it since.
    age_frame(
        &server,
        "chat:summary",
        layercache::redis::OTHER_DEPLOYMENT_GRACE + Duration::from_secs(60),
    )
    .await;

    let new = replica::<ReplyV2>(&server).await;
    assert_eq!(answer(&new, "summary", v2(), &loads).await, v2());
    let deadline = Instant::now() + Duration::from_secs(5);
    while in_redis::<ReplyV2>(&server, "summary").await != Some(v2()) {
        assert!(
            Instant::now() < deadline,
            "the new version did not take the old value over"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The old version, still serving, now finds the new value: it loads once and keeps its
    // own in memory, leaving Redis to the new version.
    let old_loads = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // The new version's announcement evicts the old one's L1 copy.
        assert_eq!(answer(&old, "summary", v1(), &old_loads).await, v1());
        if old_loads.load(Ordering::SeqCst) == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the old version never reloaded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..5 {
        assert_eq!(answer(&old, "summary", v1(), &old_loads).await, v1());
    }
    assert_eq!(old_loads.load(Ordering::SeqCst), 1);
    assert_eq!(in_redis::<ReplyV2>(&server, "summary").await, Some(v2()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_frame_is_never_protected_as_another_deployments() {
    let server = RedisServer::start();
    // Someone without the signing key writes a well-formed, recent frame under the key.
    let planter = RedisCache::<ReplyV1>::builder()
        .url(server.url())
        .namespace("chat")
        .build()
        .await
        .expect("planter");
    planter
        .set_value("summary", v1(), Duration::from_secs(3600))
        .await
        .expect("plant");

    let key = [7u8; 32];
    let codec = layercache::Codec::builder()
        .signing_key(1, key)
        .build()
        .expect("codec");
    let l2 = RedisCache::<ReplyV1>::builder()
        .url(server.url())
        .namespace("chat")
        .codec(codec)
        .build()
        .await
        .expect("l2");
    let signed = Layered::builder(MemoryCache::builder().build().expect("l1"), l2.clone())
        .name("signed")
        .build()
        .expect("cache");
    let loads = Arc::new(AtomicUsize::new(0));
    let mine = ReplyV1 { usage: 99, ..v1() };
    assert_eq!(answer(&signed, "summary", mine.clone(), &loads).await, mine);
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    // The signed value replaced the planted one in Redis.
    let deadline = Instant::now() + Duration::from_secs(5);
    while l2.get_value("summary").await.expect("read") != Some(mine.clone()) {
        assert!(Instant::now() < deadline, "the planted frame was kept");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_versions_replicas_do_not_queue_for_the_lease() {
    let server = RedisServer::start();
    let old = replica::<ReplyV1>(&server).await;
    assert_eq!(
        answer(&old, "summary", v1(), &Arc::new(AtomicUsize::new(0))).await,
        v1()
    );
    // Three replicas of the new version miss the key at once. What each loads stays in its own
    // L1, so none can serve the others: their loads must run side by side, not one after the
    // other behind the fleet lease (each then waiting for the previous one's LLM call).
    let mut new = Vec::new();
    for _ in 0..3 {
        new.push(replica::<ReplyV2>(&server).await);
    }
    let met = Arc::new(tokio::sync::Barrier::new(3));
    let together = Arc::new(AtomicUsize::new(0));
    let mut calls = tokio::task::JoinSet::new();
    for cache in new {
        let (met, together) = (Arc::clone(&met), Arc::clone(&together));
        calls.spawn(async move {
            cache
                .get_or_load(
                    "summary",
                    move || async move {
                        // Each load waits (at most 5 s) for the other two to be running too.
                        if tokio::time::timeout(Duration::from_secs(5), met.wait())
                            .await
                            .is_ok()
                        {
                            together.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok::<_, std::io::Error>(v2())
                    },
                    LoadOptions::ttl(Duration::from_secs(3600)),
                )
                .await
                .expect("answered")
        });
    }
    while let Some(done) = calls.join_next().await {
        assert_eq!(done.expect("no panic"), v2());
    }
    assert_eq!(
        together.load(Ordering::SeqCst),
        3,
        "the three loads ran at the same time"
    );
    assert_eq!(in_redis::<ReplyV1>(&server, "summary").await, Some(v1()));
}

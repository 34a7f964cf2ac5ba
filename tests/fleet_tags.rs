//! Tag invalidation times in a real Redis: kept without expiry (never evicted under
//! `volatile-*`), deleted once no entry they could invalidate is left, and never taken from a
//! late announcement by a replica that forgot them.

#![cfg(all(feature = "redis", feature = "msgpack"))]

mod support;

use std::time::{Duration, Instant};

use layercache::{Cache, CacheExt, Entry, Layered, MemoryCache, RedisCache};
use support::fleet::{backplane_state, unix_nanos, wait_subscribed};
use support::proxy::{FaultProxy, Mode};
use support::redis::RedisServer;

/// Wait until `key` is in Redis (a load's L2 write may finish after its answer).
async fn wait_for_key(server: &RedisServer, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.pttl(key) == -2 {
        assert!(Instant::now() < deadline, "{key} never reached Redis");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A layered cache on namespace `namespace` with a backplane, and the given tag retention.
async fn tagged_replica(
    server: &RedisServer,
    namespace: &str,
    retention: Option<Duration>,
) -> Layered<String> {
    let l2 = layercache::RedisCache::<String>::builder()
        .url(server.url())
        .namespace(namespace)
        .build()
        .await
        .expect("l2");
    let backplane = l2.backplane().await.expect("backplane");
    let builder = Layered::builder(layercache::MemoryCache::builder().build().expect("l1"), l2)
        .backplane(backplane);
    match retention {
        Some(retention) => builder.tag_retention(retention),
        None => builder,
    }
    .build()
    .expect("cache")
}

/// `invalidate_tag` with a new tag per user used to leave one key in Redis per call, for good.
/// A tag's time is now deleted once no entry it could invalidate is left: tagged entries live at
/// most the tag retention, and later invalidations delete the times older than that (plus a
/// margin).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_times_in_redis_go_once_no_entry_they_could_invalidate_is_left() {
    use layercache::LoadOptions;

    let server = RedisServer::start();
    let hour = Duration::from_secs(3600);
    let cache = tagged_replica(&server, "short", Some(Duration::from_secs(2))).await;
    let tagged = LoadOptions::ttl(hour).with_tags(["user:1"]);
    let loaded = cache
        .get_or_load(
            "a",
            || async { Ok::<_, std::io::Error>("reply".to_owned()) },
            tagged,
        )
        .await
        .expect("load");
    assert_eq!(loaded, "reply");
    cache
        .set_value("plain", "untagged".into(), hour)
        .await
        .expect("set");
    wait_for_key(&server, "short:a").await;
    let tagged_life = server.pttl("short:a");
    assert!(
        (1..=2_100).contains(&tagged_life),
        "a tagged entry lives at most the retention: {tagged_life} ms"
    );
    assert!(
        server.pttl("short:plain") > 3_500_000,
        "an untagged one keeps its lifetime"
    );

    for user in 1..=20 {
        cache
            .invalidate_tag(&format!("user:{user}"))
            .await
            .expect("invalidate");
    }
    cache.clear().await.expect("clear");
    let tag_keys = || {
        server
            .cli(&["--scan", "--pattern", "layercache:tag:v1:{short}:*"])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let keys = tag_keys();
    assert_eq!(keys.len(), 21, "20 tag times and the clear time: {keys:?}");
    for key in &keys {
        // No expiry of their own: a Redis evicting keys that have one (`volatile-*`) must not
        // drop a tag time while entries it invalidated are left.
        assert_eq!(server.pttl(key), -1, "{key}");
    }
    let index = "layercache:tags:v1:{short}";
    assert_eq!(server.cli(&["zcard", index]).trim(), "20");
    // Later invalidations delete the times past the retention (2 s, plus 2 s of margin), never
    // while an entry they could invalidate is left; the clear time stays.
    let deadline = Instant::now() + Duration::from_secs(15);
    while tag_keys().len() > 2 {
        assert!(
            Instant::now() < deadline,
            "tag times never deleted: {:?}",
            tag_keys()
        );
        cache.invalidate_tag("sweeper").await.expect("invalidate");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        server.pttl("short:a"),
        -2,
        "the entry went before its tag's time"
    );
    let mut left = tag_keys();
    left.sort();
    assert_eq!(
        left,
        [
            "layercache:tag:v1:{short}:",
            "layercache:tag:v1:{short}:sweeper"
        ]
    );
    assert_eq!(server.cli(&["zcard", index]).trim(), "1");
    // A replica that never met the tag (nothing to learn from but Redis) finds nothing to serve.
    let newcomer = tagged_replica(&server, "short", Some(Duration::from_secs(2))).await;
    assert_eq!(newcomer.get_value("a").await.expect("get"), None);

    // By default: 30 days (plus an hour), and "forever" is 30 days for a tagged entry.
    let default = tagged_replica(&server, "default", None).await;
    let forever = LoadOptions::ttl(Duration::MAX).with_tags(["doc:7"]);
    default
        .get_or_load(
            "b",
            || async { Ok::<_, std::io::Error>("kept".to_owned()) },
            forever,
        )
        .await
        .expect("load");
    default.invalidate_tag("doc:8").await.expect("invalidate");
    let thirty_days = 30 * 24 * 3_600_000;
    assert_eq!(server.pttl("layercache:tag:v1:{default}:doc:8"), -1);
    let recorded: i64 = server
        .cli(&[
            "zscore",
            "layercache:tags:v1:{default}",
            "layercache:tag:v1:{default}:doc:8",
        ])
        .trim()
        .parse()
        .expect("recorded in the index");
    let now_ms = i64::try_from(unix_nanos() / 1_000_000).expect("ms");
    assert!((now_ms - recorded).abs() < 60_000, "{recorded} vs {now_ms}");
    wait_for_key(&server, "default:b").await;
    let life = server.pttl("default:b");
    assert!(
        (thirty_days - 60_000..=thirty_days + 100).contains(&life),
        "{life} ms"
    );
}

/// A replica on `namespace` whose L2 reaches `server` directly and whose backplane (its
/// subscription, and the connection that stores tag times) goes through a fault proxy.
async fn replica_with_proxied_backplane(
    server: &RedisServer,
    namespace: &str,
) -> (Layered<String>, FaultProxy) {
    let upstream = format!("127.0.0.1:{}", server.port)
        .parse()
        .expect("address");
    let proxy = FaultProxy::start(upstream).await;
    let l2 = RedisCache::<String>::builder()
        .url(server.url())
        .namespace(namespace)
        .build()
        .await
        .expect("l2");
    let listening = RedisCache::<String>::builder()
        .url(proxy.url())
        .namespace(namespace)
        .command_timeout(Duration::from_millis(200))
        .build()
        .await
        .expect("redis through the proxy");
    let backplane = listening.backplane().await.expect("backplane");
    let cache = Layered::builder(MemoryCache::builder().build().expect("l1"), l2)
        .backplane(backplane)
        .build()
        .expect("cache");
    (cache, proxy)
}

/// Wait (10 s at most) until `what` holds.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what} within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A replica that resynced (its tag times forgotten: messages may have been lost) then hears
/// an invalidation announced late — here another replica's, failed by Redis and retried, with
/// the time it was asked at — must not take that time for the tag's: Redis holds a later one.
/// Seed 1266 of the convergence test: the replica served such an entry for its whole lifetime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_announcement_does_not_revive_entries_of_a_tag_invalidated_since() {
    let server = RedisServer::start();
    let (forgetful, forgetful_proxy) = replica_with_proxied_backplane(&server, "late").await;
    let (late, late_proxy) = replica_with_proxied_backplane(&server, "late").await;
    let writer = tagged_replica(&server, "late", None).await;
    wait_subscribed(&[&forgetful, &late, &writer]).await;

    // `late` invalidates the tag while Redis cannot take it: kept, and retried.
    late_proxy.set(Mode::Reset);
    assert!(late.invalidate_tag("t").await.is_err());
    // Since: an entry with the tag, then its invalidation, which `forgetful` hears.
    let entry = Entry::new("v".to_string(), Duration::from_secs(600)).with_tags(["t"]);
    writer.set("k", entry).await.expect("set");
    writer.invalidate_tag("t").await.expect("invalidate");
    assert_eq!(writer.get_value("k").await.expect("get"), None);

    // `forgetful` loses its subscription and resyncs: it forgets the tag times.
    let resyncs = backplane_state(&forgetful).resyncs;
    forgetful_proxy.set(Mode::Reset);
    wait_until("forgetful stops hearing the fleet", || {
        !backplane_state(&forgetful).subscribed
    })
    .await;
    forgetful_proxy.set(Mode::Pass);
    wait_until("forgetful hears the fleet again and resyncs", || {
        let state = backplane_state(&forgetful);
        state.subscribed && state.resyncs > resyncs
    })
    .await;

    // `late`'s retry reaches Redis (which keeps the later time) and is announced with its own.
    let received = backplane_state(&forgetful).received;
    late_proxy.set(Mode::Pass);
    wait_until("forgetful hears the late invalidation", || {
        backplane_state(&forgetful).received > received
    })
    .await;

    // The entry is older than the invalidation Redis holds: not fresh on any replica.
    assert_eq!(
        forgetful.get_value("k").await.expect("get"),
        None,
        "served an entry of a tag invalidated after it was created"
    );
    assert_eq!(late.get_value("k").await.expect("get"), None);
}

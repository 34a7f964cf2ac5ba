//! A read from L2 that races with a change made on the same replica: the value read before the
//! change is answered to its caller, but never outlives the change in L1.
//!
//! L2 is a layer of the test's over a real Redis ([`GatedReads`]) that holds each read's
//! answer until the test lets it go, so that the change lands while the read is on its way.

#![cfg(all(feature = "redis", feature = "msgpack"))]

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use layercache::{Cache, CacheExt, Entry, Layered, MemoryCache, RedisCache};
use support::redis::RedisServer;

/// An L2 over Redis whose next read, once the gate is closed, reads Redis and then waits for
/// the test to open the gate before answering (the reads after it pass).
struct GatedReads {
    inner: RedisCache<String>,
    closed: AtomicBool,
    waiting: AtomicUsize,
    gate: tokio::sync::Semaphore,
}

impl GatedReads {
    fn over(inner: RedisCache<String>) -> Arc<GatedReads> {
        Arc::new(GatedReads {
            inner,
            closed: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            gate: tokio::sync::Semaphore::new(0),
        })
    }

    /// Hold the next read.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Let the read held go.
    fn open(&self) {
        self.gate
            .add_permits(self.waiting.swap(0, Ordering::SeqCst));
    }

    /// Wait (5 s at most) until a read is held.
    async fn holds_a_read(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.waiting.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "a read reached L2");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[async_trait::async_trait]
impl Cache<String> for GatedReads {
    fn name(&self) -> &str {
        "gated-reads"
    }
    fn get<'a>(&'a self, key: &'a str) -> layercache::CacheGet<'a, String> {
        self.inner.get(key)
    }
    async fn peek(&self, key: &str) -> layercache::Result<Option<Entry<String>>> {
        let read = self.inner.peek(key).await;
        if self.closed.swap(false, Ordering::SeqCst) {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            self.gate.acquire().await.expect("gate").forget();
        }
        read
    }
    async fn set(&self, key: &str, entry: Entry<String>) -> layercache::Result<()> {
        self.inner.set(key, entry).await
    }
    async fn set_if_newer(&self, key: &str, entry: Entry<String>) -> layercache::Result<bool> {
        self.inner.set_if_newer(key, entry).await
    }
    async fn delete(&self, key: &str) -> layercache::Result<()> {
        self.inner.delete(key).await
    }
    async fn delete_if_older(
        &self,
        key: &str,
        than: std::time::SystemTime,
    ) -> layercache::Result<bool> {
        self.inner.delete_if_older(key, than).await
    }
}

/// A cache over a gated Redis L2 of its own namespace, and that Redis itself; `key` holds
/// "old" in Redis alone (the cache's L1 is cold).
async fn cache_with_old(
    server: &RedisServer,
    namespace: &str,
    key: &str,
) -> (Layered<String>, Arc<GatedReads>, RedisCache<String>) {
    let redis = RedisCache::<String>::builder()
        .url(server.url())
        .namespace(namespace)
        .build()
        .await
        .expect("redis");
    let gated = GatedReads::over(redis.clone());
    let cache = Layered::builder(MemoryCache::builder().build().expect("l1"), gated.clone())
        .build()
        .expect("cache");
    redis
        .set_value(key, "old".to_owned(), Duration::from_secs(600))
        .await
        .expect("set");
    (cache, gated, redis)
}

/// Read `key` through `cache` on a task of its own, its L2 read held at the gate; returns once
/// the read is held.
async fn read_held(
    cache: &Layered<String>,
    gated: &GatedReads,
    key: &'static str,
) -> tokio::task::JoinHandle<Option<String>> {
    gated.close();
    let reader = cache.clone();
    let reading =
        tokio::spawn(async move { reader.get_value(key).await.expect("the racing read") });
    gated.holds_a_read().await;
    reading
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_races_with_a_delete_does_not_bring_the_value_back() {
    let server = RedisServer::start();
    let (cache, gated, _redis) = cache_with_old(&server, "race-delete", "k").await;
    let reading = read_held(&cache, &gated, "k").await;
    cache.delete("k").await.expect("delete");
    gated.open();
    // Read before the delete: that caller gets the old value.
    assert_eq!(reading.await.expect("read").as_deref(), Some("old"));
    assert_eq!(cache.get_value("k").await.expect("get"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_races_with_a_set_does_not_replace_the_new_value() {
    let server = RedisServer::start();
    let (cache, gated, redis) = cache_with_old(&server, "race-set", "k").await;
    let reading = read_held(&cache, &gated, "k").await;
    cache
        .set_value("k", "new".to_owned(), Duration::from_secs(600))
        .await
        .expect("set");
    gated.open();
    assert_eq!(reading.await.expect("read").as_deref(), Some("old"));
    assert_eq!(
        cache.get_value("k").await.expect("get").as_deref(),
        Some("new")
    );
    assert_eq!(
        redis.get_value("k").await.expect("read").as_deref(),
        Some("new")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_races_with_an_expire_does_not_make_the_value_fresh_again() {
    let server = RedisServer::start();
    let (cache, gated, _redis) = cache_with_old(&server, "race-expire", "k").await;
    let reading = read_held(&cache, &gated, "k").await;
    cache.expire("k").await.expect("expire");
    gated.open();
    assert_eq!(reading.await.expect("read").as_deref(), Some("old"));
    assert_eq!(cache.get_value("k").await.expect("get"), None);
}

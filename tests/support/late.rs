//! [`LateWrites`]: an L2 over a real Redis whose writes and deletes reach Redis when the test
//! says (after their caller gave up on them), and the writer and reader replicas built on it —
//! what `fleet_late_writes.rs` and `fleet_outage.rs` include (`#[path]`, beside `mod support`:
//! not part of `support`, which the ecosystem package's tests include too, without
//! `async-trait`).

#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use layercache::{Cache, CacheExt, Entry, Layered, MemoryCache, RedisCache};

use crate::support::fleet::wait_subscribed;
use crate::support::redis::RedisServer;

/// A command held by [`LateWrites`], as the stack sent it.
pub enum Held {
    Set(String, Entry<String>),
    SetIfNewer(String, Entry<String>),
    DeleteIfOlder(String, SystemTime),
    Prefix(String),
}

/// An L2 over Redis whose writes and deletes, while holding, fail for the caller (a timeout on
/// a slow link) but are kept to reach Redis later, when the test lands them.
pub struct LateWrites {
    inner: RedisCache<String>,
    holding: AtomicBool,
    held: Mutex<Vec<Held>>,
}

impl LateWrites {
    pub fn over(inner: RedisCache<String>) -> Arc<LateWrites> {
        Arc::new(LateWrites {
            inner,
            holding: AtomicBool::new(false),
            held: Mutex::new(Vec::new()),
        })
    }

    pub fn hold(&self, holding: bool) {
        self.holding.store(holding, Ordering::SeqCst);
    }

    /// Keep `command` if holding (the caller then sees a timeout); `None` if not.
    pub fn held(&self, command: impl FnOnce() -> Held) -> Option<layercache::Error> {
        if !self.holding.load(Ordering::SeqCst) {
            return None;
        }
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(command());
        Some(layercache::Error::Timeout {
            after: Duration::from_millis(250),
        })
    }

    /// Send the held commands to Redis now, in the order they were made; what each answered
    /// (stored / deleted).
    pub async fn land(&self) -> Vec<bool> {
        let held = std::mem::take(&mut *self.held.lock().unwrap_or_else(|e| e.into_inner()));
        let mut answers = Vec::new();
        for command in held {
            answers.push(
                match command {
                    Held::Set(key, entry) => self.inner.set(&key, entry).await.map(|()| true),
                    Held::SetIfNewer(key, entry) => self.inner.set_if_newer(&key, entry).await,
                    Held::DeleteIfOlder(key, than) => self.inner.delete_if_older(&key, than).await,
                    Held::Prefix(prefix) => {
                        self.inner.invalidate_prefix(&prefix).await.map(|n| n > 0)
                    }
                }
                .expect("land a held command"),
            );
        }
        answers
    }
}

#[async_trait::async_trait]
impl Cache<String> for LateWrites {
    fn name(&self) -> &str {
        "late-writes"
    }
    fn get<'a>(&'a self, key: &'a str) -> layercache::CacheGet<'a, String> {
        self.inner.get(key)
    }
    async fn peek(&self, key: &str) -> layercache::Result<Option<Entry<String>>> {
        self.inner.peek(key).await
    }
    async fn set(&self, key: &str, entry: Entry<String>) -> layercache::Result<()> {
        let kept = entry.clone();
        match self.held(|| Held::Set(key.to_owned(), kept)) {
            Some(timeout) => Err(timeout),
            None => self.inner.set(key, entry).await,
        }
    }
    async fn set_if_newer(&self, key: &str, entry: Entry<String>) -> layercache::Result<bool> {
        let kept = entry.clone();
        match self.held(|| Held::SetIfNewer(key.to_owned(), kept)) {
            Some(timeout) => Err(timeout),
            None => self.inner.set_if_newer(key, entry).await,
        }
    }
    async fn delete(&self, key: &str) -> layercache::Result<()> {
        self.inner.delete(key).await
    }
    async fn delete_if_older(&self, key: &str, than: SystemTime) -> layercache::Result<bool> {
        match self.held(|| Held::DeleteIfOlder(key.to_owned(), than)) {
            Some(timeout) => Err(timeout),
            None => self.inner.delete_if_older(key, than).await,
        }
    }
    async fn invalidate_prefix(&self, prefix: &str) -> layercache::Result<u64> {
        match self.held(|| Held::Prefix(prefix.to_owned())) {
            Some(timeout) => Err(timeout),
            None => self.inner.invalidate_prefix(prefix).await,
        }
    }
}

/// A writer whose L2 is `l2` and a reader straight on Redis, both on the backplane of
/// `namespace`, each subscribed.
pub async fn writer_and_reader(
    server: &RedisServer,
    namespace: &str,
) -> (Layered<String>, Arc<LateWrites>, Layered<String>) {
    let redis = RedisCache::<String>::builder()
        .url(server.url())
        .namespace(namespace)
        .build()
        .await
        .expect("redis");
    let backplane = redis.backplane().await.expect("backplane");
    let l2 = LateWrites::over(redis);
    let writer = Layered::builder(MemoryCache::builder().build().expect("l1"), l2.clone())
        .name("writer")
        .backplane(backplane)
        .build()
        .expect("writer");
    let reader = crate::support::fleet::replica_cache(&server.url(), namespace)
        .await
        .expect("reader");
    wait_subscribed(&[&writer, &reader]).await;
    (writer, l2, reader)
}

/// A `RedisCache` on `server` under `namespace`.
pub async fn redis_at(server: &RedisServer, namespace: &str) -> RedisCache<String> {
    RedisCache::<String>::builder()
        .url(server.url())
        .namespace(namespace)
        .build()
        .await
        .expect("redis")
}

/// Wait (10 s at most) until `cache`'s backplane no longer hears the fleet.
pub async fn no_longer_hears_the_fleet(cache: &Layered<String>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while crate::support::fleet::backplane_state(cache).subscribed {
        assert!(
            Instant::now() < deadline,
            "the backplane stopped hearing the fleet"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A writer over `l2` (Redis reached directly) whose backplane alone goes through a fault proxy
/// (so the test can make it stop hearing the fleet), and a plain reader, both on the backplane
/// of `namespace` and subscribed. With `keep_circuit_closed`, the writer's failed L2 calls never
/// open its circuit.
pub async fn writer_with_proxied_backplane(
    server: &RedisServer,
    namespace: &str,
    l2: Arc<dyn Cache<String>>,
    keep_circuit_closed: bool,
) -> (
    Layered<String>,
    crate::support::proxy::FaultProxy,
    Layered<String>,
) {
    let upstream: std::net::SocketAddr = format!("127.0.0.1:{}", server.port)
        .parse()
        .expect("address");
    let proxy = crate::support::proxy::FaultProxy::start(upstream).await;
    let listening = RedisCache::<String>::builder()
        .url(proxy.url())
        .namespace(namespace)
        .build()
        .await
        .expect("redis through the proxy");
    let mut writer =
        Layered::builder(MemoryCache::builder().build().expect("l1"), l2).name("writer");
    if keep_circuit_closed {
        writer = writer.breaker(layercache::BreakerConfig::default().disabled());
    }
    let writer = writer
        .backplane(listening.backplane().await.expect("backplane"))
        .build()
        .expect("writer");
    let reader = crate::support::fleet::replica_cache(&server.url(), namespace)
        .await
        .expect("reader");
    wait_subscribed(&[&writer, &reader]).await;
    (writer, proxy, reader)
}

/// Wait (5 s at most) until `cache` serves `want` for `key`.
pub async fn serves(cache: &Layered<String>, key: &str, want: Option<&str>, who: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = cache.get_value(key).await.expect("get");
        if seen.as_deref() == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{who} serves {seen:?} for {key} 5 s on, not {want:?} (pending writes: {})",
            cache.pending_l2_writes()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Redis holds `value` under `key`, and (within 5 s) each of `replicas` serves it.
pub async fn all_serve(
    redis: &RedisCache<String>,
    replicas: [&Layered<String>; 2],
    key: &str,
    value: &str,
) {
    assert_eq!(
        redis.get_value(key).await.expect("read").as_deref(),
        Some(value),
        "Redis holds the newest value of {key}"
    );
    for (replica, who) in replicas.into_iter().zip(["the writer", "the reader"]) {
        serves(replica, key, Some(value), who).await;
    }
}

/// Wait (5 s at most) until `writer` has no write left for its catch-up.
pub async fn caught_up(writer: &Layered<String>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while writer.pending_l2_writes() > 0 {
        assert!(Instant::now() < deadline, "the catch-up ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

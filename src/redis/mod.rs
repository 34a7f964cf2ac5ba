//! [`RedisCache`]: the shared layer, over [fred](https://docs.rs/fred) — single server, pool,
//! cluster or sentinel.
//!
//! Values are stored as `frame(compress(serialize(value)))` by a [`ValueCodec`] (MessagePack +
//! zstd by default). Redis's own expiry is set to the entry's *stale* deadline, so a value kept for
//! fail-safe is still there when the loader fails.
//!
//! # Safe defaults
//!
//! fred's own defaults suit a database client, not a cache that must never stall its caller. The
//! builder therefore sets:
//!
//! * a **command timeout** (250 ms) on every command through fred's per-command options — not a
//!   `tokio::time::timeout` around the call, which would abandon a write that fred then replays
//!   after a reconnect (a "zombie write" that can resurrect an invalidated value);
//! * **no replay after a timeout**: fred marks a command whose caller timed out and never writes
//!   it again, so a timed-out `set` cannot land behind a later `delete`;
//! * on a cluster, **redirections followed by the cache, not by fred**: fred 10.1 answers an `ASK`
//!   by reading the next reply of a pipelined connection as the reply to its `ASKING`, which
//!   hands every later reply on that connection to the wrong command (another key's value for a
//!   `GET`). fred is told to follow no redirection; a `MOVED`, `ASK` or `TRYAGAIN` comes back to
//!   the cache, which sends the command again (fred has refreshed its slot map by then) within
//!   the same command timeout;
//! * **fail-fast** while disconnected: calls error at once instead of queueing;
//! * **turns** on each connection: at most 256 commands of the cache in flight on it, the
//!   others waiting in the cache, with their timeout running from their turn. A burst of
//!   40,000 concurrent reads (a batch job, a replica restarted under full traffic) had sent them
//!   all at once, and each that waited behind the others longer than the command timeout failed
//!   as if Redis were down (16,097 of 40,000 cached values loaded again). A turn not given
//!   within the unresponsive time, while the server answers, is
//!   [`RedisErrorKind::Busy`](crate::RedisErrorKind::Busy)
//!   (not counted by a stack's breaker); behind a hung server, waiters give up with the first
//!   timeout of a command in flight;
//! * a **reconnect policy** (exponential, 10 ms to 150 ms, forever): without one, fred never recovers
//!   from a server restart. The first delay is short because fred only starts failing fast
//!   after it;
//! * **unresponsive-connection detection**, so a connection to a hung server is replaced: a
//!   watchdog of ours, which also catches what fred's own check misses (steady traffic into a
//!   hung server, where every command times out). The first timeout on a connection starts a
//!   `PING` probe; if the node still does not answer after the unresponsive time, the
//!   connection is rebuilt (re-asking the sentinels for the master). On a cluster,
//!   where a rebuild would stall the healthy masters' keys, each master is probed on its own,
//!   and the routing is refreshed once the cluster has replaced the hung one (see the
//!   watchdog's notes); the backplane's publisher has the same watchdog;
//! * **TCP_NODELAY**, and a pool of 2 connections ([`DEFAULT_POOL_SIZE`]): writes on one, so
//!   that a `set` and a later `delete` of one key cannot overtake each other, and reads on the
//!   other, so that a write blocked at the server (`CLIENT PAUSE WRITE`, `maxmemory`) never
//!   holds up a read. A larger pool keeps that split: each key's writes always go to the same
//!   one of the write half.
//!
//! A value that fails to decode (corrupted, truncated, written by another format or codec) is a
//! miss: it is counted under `layercache_layer_errors_total{op="decode"}` and its key deleted.
//!
//! Bulk invalidation ([`RedisCache::invalidate_prefix`]) uses `SCAN` + `UNLINK` on every primary,
//! never `KEYS`.
//!
//! # The client is a detail
//!
//! No type of the Redis client appears in this crate's API: the builder takes a URL and our own
//! settings, and failures are [`Error::Redis`] with a [`RedisErrorKind`](crate::RedisErrorKind);
//! the client's error is only their [`source`](std::error::Error::source). fred can therefore be
//! replaced without breaking users. A redis-rs backend would need: a pool of multiplexed
//! connections (or its cluster client) behind the same key-to-connection routing; per-command
//! timeouts that never replay an abandoned write after a reconnect; the watchdog's hung-connection
//! probe; `SCAN` per primary; the Lua scripts (conditional write and delete, lease, tag time);
//! and a pub/sub connection that resubscribes after a reconnect.
//!
//! redis-rs 1.8's `ConnectionManager` was measured on the same fault scenarios
//! (`ecosystem/tests/redis_rs_faults.rs`; figures in RELIABILITY.md): as safe on writes (no timed-out write
//! replayed) and as quick after a hung server resumes, but not fail-fast while the server is
//! down — a call after the first waits for its reconnection (seconds; the response timeout does
//! not bound it). A backend on it would need its own deadline around every call and a
//! background reconnect.
//!
//! # Credentials
//!
//! ACL user and password come from the URL or from [`RedisCacheBuilder::username`] /
//! [`RedisCacheBuilder::password`]. Wrong ones fail [`RedisCacheBuilder::build`] at once with
//! kind [`Auth`](crate::RedisErrorKind::Auth) (no retry loop). Passwords never appear in
//! `Debug`, `Display`, errors or logs.
//!
//! # TLS (feature `tls`)
//!
//! A `rediss://` URL (`rediss-cluster://`, `rediss-sentinel://`) connects with rustls, trusting
//! the system's roots or only the CA file given to `tls_ca_file`; `tls_client_cert` presents a
//! client certificate; `tls_server_name` checks the certificate against another name than the
//! URL's host. The certificate check is never turned off. A handshake that fails (untrusted or
//! mismatched certificate) fails `build()` at once with kind [`Tls`](crate::RedisErrorKind::Tls).

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fred::bytes::Bytes;
use fred::prelude::{ClientLike, Expiration, KeysInterface, Options, Pool, Value};

use crate::cache::{Cache, CacheGet};
use crate::codec::ValueCodec;
use crate::entry::{now_ms, Entry};
use crate::error::{Error, Result};
use crate::metrics::{LayerMetrics, Stats};

mod admission;
pub(crate) mod builder;
pub(crate) mod cluster;
pub(crate) mod connect;
mod deploy;
mod newer;
mod ops;
mod prefix;
mod pubsub;
mod tls;
pub(crate) mod watchdog;

use self::builder::Setup;
pub use self::builder::{Reconnect, RedisCacheBuilder};
pub use self::deploy::OTHER_DEPLOYMENT_GRACE;
pub use self::ops::RedisOp;
use self::ops::{Op, OpMetrics};

/// Default time limit for each Redis command.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(250);
/// Default time limit for connecting when the cache is built.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default number of connections: one for writes, one for reads.
///
/// Measured with `l2_throughput` (BENCHMARKS.md, 2 cores): with 16 to 256 reads in flight, a
/// pool of 2 served 13–18 % more reads per second than a pool of 4, and a pool of 8 fewer
/// still. Redis runs commands on one thread, so more connections add no server parallelism;
/// they only split the same requests into smaller batches, each paying its own system calls.
/// One fred connection pipelines whatever is in flight on it.
pub const DEFAULT_POOL_SIZE: usize = 2;
/// How long a conditional delete ([`Cache::delete_if_older`]:
/// every `delete` of a [`Layered`](crate::Layered) cache) leaves a 50-byte tombstone in the
/// key: 10 s.
///
/// A load that read its data before the delete — on another replica, whose load ended before
/// the delete's message reached it (a slow link, a stalled process) — would otherwise write
/// that value after the delete, and the whole fleet would serve it for its lifetime. The
/// tombstone is newer than that value, so the write is refused; a value written after the
/// delete replaces it. It reads as a miss, and an earlier version of this crate takes it for
/// another deployment's value (a miss too).
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(10);
/// The largest pool [`RedisCacheBuilder::pool_size`] accepts: 1,024 connections per cache
/// (a fleet of replicas multiplies it; Redis accepts 10,000 clients by default).
pub const MAX_POOL_SIZE: usize = 1024;
/// Keys fetched per `MGET` (and per `SCAN` page) in batch operations.
const BATCH: usize = 1000;
/// Commands sent per pipeline round trip in batch operations, so that each round stays well
/// inside the command timeout however large the batch.
const PIPELINE_CHUNK: usize = 500;

/// Writes of one command while its caller waits (fred re-sends a command written to a connection
/// that broke before it was sent).
const ATTEMPTS: u32 = 3;

/// The longest expiry given to Redis (`PX`), in ms: about 100 years. Redis refuses an expiry
/// that overflows its clock ("invalid expire time"), so a longer lifetime — up to
/// `Duration::MAX`, meaning "forever" — is written with this one. The entry's own deadlines,
/// stored in the frame, keep their full value.
pub(crate) const MAX_REDIS_PX_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

/// A remaining lifetime in ms as Redis's `PX` argument (capped at [`MAX_REDIS_PX_MS`]).
pub(crate) fn redis_px(ttl_ms: u64) -> i64 {
    // The cap is far below i64::MAX, so the conversion cannot fail.
    i64::try_from(ttl_ms.min(MAX_REDIS_PX_MS)).unwrap_or(i64::MAX)
}

/// A cache layer in Redis. Cloning is cheap and shares the connections.
///
/// Build it on the tokio runtime that uses it: its connections run as tasks of the runtime
/// `build` was awaited on, and end when that runtime shuts down. A cache that outlives its
/// runtime — one cache in a `static` shared by several `#[tokio::test]`s, each with its own
/// runtime — fails every command from then on with
/// [`RedisErrorKind::RuntimeGone`](crate::RedisErrorKind::RuntimeGone) (a `Layered` stack in
/// front still answers from L1 and the loader). In tests, build one per test, or run them all
/// on one shared runtime.
///
/// ```no_run
/// use std::time::Duration;
/// use layercache::{Cache, CacheExt, RedisCache};
///
/// # async fn demo() -> layercache::Result<()> {
/// let cache = RedisCache::<String>::builder()
///     .url("redis://127.0.0.1:6379")
///     .namespace("chat:v3")
///     .command_timeout(Duration::from_millis(200))
///     .build()
///     .await?;
/// cache.set_value("greeting", "hello".into(), Duration::from_secs(60)).await?;
/// assert_eq!(cache.get_value("greeting").await?.as_deref(), Some("hello"));
/// # Ok(())
/// # }
/// ```
pub struct RedisCache<V> {
    inner: Arc<Inner<V>>,
}

struct Inner<V> {
    /// Held while the cache exists; a background connect loop stops when it goes.
    alive: connect::Alive,
    /// Whether the shutdown of the runtime the connections ran on has been reported (once).
    runtime_gone_reported: std::sync::atomic::AtomicBool,
    /// How the pool was built, for the backplane's own connections.
    setup: Setup,
    pool: Pool,
    clustered: bool,
    prefix: String,
    codec: Arc<dyn ValueCodec<V>>,
    name: Arc<str>,
    options: Options,
    bulk_options: Options,
    metrics: LayerMetrics,
    ops: OpMetrics,
    watchdog: Arc<watchdog::Watchdog>,
    /// Turns on each pool connection (see [`admission`]).
    admission: admission::Admission,
    /// Connections opened so far (fred's reconnect events), for [`Cache::connections`].
    connections: Arc<std::sync::atomic::AtomicU64>,
    /// Keys whose last read found a recent value of another deployment (see `deploy`).
    deployments: deploy::OtherDeployments,
}

impl<V> Drop for Inner<V> {
    fn drop(&mut self) {
        // Close the connections (and stop reconnect loops) when the last handle goes.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let pool = self.pool.clone();
            // Bounded: a pool still reconnecting to a server that is gone never sends it.
            runtime.spawn(async move {
                let _ = tokio::time::timeout(connect::QUIT_WAIT, pool.quit()).await;
            });
        }
    }
}

impl<V> Clone for RedisCache<V> {
    fn clone(&self) -> Self {
        RedisCache {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<V> fmt::Debug for RedisCache<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCache")
            .field("name", &self.inner.name)
            .field("prefix", &self.inner.prefix)
            .field("clustered", &self.inner.clustered)
            .field("pool_size", &self.inner.pool.size())
            .field("codec", &self.inner.codec)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "msgpack")]
impl<V> RedisCache<V>
where
    V: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    /// A builder with the default codec (MessagePack with field names, zstd above 1 KiB when the
    /// `zstd` feature is on, every write verified to read back).
    pub fn builder() -> RedisCacheBuilder<V> {
        RedisCacheBuilder::with_codec(crate::codec::Codec::default())
    }
}

impl<V> RedisCache<V>
where
    V: Send + Sync + 'static,
{
    /// A builder that stores values with `codec`.
    pub fn builder_with_codec(codec: impl ValueCodec<V> + 'static) -> RedisCacheBuilder<V> {
        RedisCacheBuilder::with_codec(codec)
    }

    fn full_key(&self, key: &str) -> String {
        let mut full = String::with_capacity(self.inner.prefix.len() + key.len());
        full.push_str(&self.inner.prefix);
        full.push_str(key);
        full
    }

    /// The connection that carries every write (set, delete) of `key`, so writes of one key stay
    /// in order: a timed-out `set` cannot land after a later `delete`. Writes use the first half
    /// of the pool.
    fn writer_for(&self, key: &str) -> usize {
        let writers = (self.inner.pool.size() / 2).max(1);
        pick(key, writers)
    }

    /// The connection for reads of `key`: the second half of the pool. A write blocked at the
    /// server (`CLIENT PAUSE WRITE`, `maxmemory`) blocks its whole connection, and must not hold
    /// up reads. (With a pool of one, reads and writes share it.)
    fn reader_for(&self, key: &str) -> usize {
        let size = self.inner.pool.size();
        let (first, readers) = if size >= 2 {
            (size / 2, size - size / 2)
        } else {
            (0, size)
        };
        first + pick(key, readers)
    }

    /// Pool client `index`.
    fn client(&self, index: usize) -> &fred::clients::Client {
        &self.inner.pool.clients()[index]
    }

    /// Count a failed command on pool client `index`, and let the watchdog probe
    /// a connection whose command timed out.
    fn failed(&self, op: Op, index: usize, source: fred::error::Error) -> Error {
        if *source.kind() == fred::error::ErrorKind::Timeout {
            self.inner
                .watchdog
                .timed_out(index, self.client(index), &self.inner.options);
        }
        self.redis_error(op, source)
    }

    /// A turn on pool connection `index` for a command of kind `op` (see [`admission`]).
    async fn turn(&self, op: Op, index: usize) -> Result<admission::Turn<'_>> {
        use fred::error::ErrorKind;
        self.inner.admission.turn(index).await.map_err(|no| {
            let source = match no {
                admission::NoTurn::Stalled => fred::error::Error::new(
                    ErrorKind::Timeout,
                    "the last command to come back on the connection timed out, and others are still in flight on it: the server hangs",
                ),
                admission::NoTurn::Busy => fred::error::Error::new(
                    ErrorKind::Backpressure,
                    "waited the unresponsive time for a turn on the connection, while the server answered the commands before it",
                ),
            };
            self.redis_error(op, source)
        })
    }

    fn redis_error(&self, op: Op, source: fred::error::Error) -> Error {
        self.inner.ops.error(op);
        self.client_error(op.name(), source)
    }

    /// `source` as an [`Error::Redis`]; when the runtime that ran the connections has shut
    /// down, said so (and logged once), since nothing else explains why every command fails.
    fn client_error(&self, op: &'static str, source: fred::error::Error) -> Error {
        if !self.inner.alive.runtime_gone() {
            return Error::redis(op, source);
        }
        if !self
            .inner
            .runtime_gone_reported
            .swap(true, Ordering::Relaxed)
        {
            crate::log_warn!(
                cache = &*self.inner.name,
                "layercache: the tokio runtime this RedisCache was built on has shut down, and its Redis connections with it; every command fails from now on. Build the cache on the runtime that uses it (in tests: one cache per #[tokio::test], or one shared runtime)"
            );
        }
        Error::Redis {
            op,
            source: Box::new(crate::error::RedisError::runtime_gone(source)),
        }
    }

    /// Decode `bytes` read from `full_key`. A value that does not decode (or is already past its
    /// stale deadline) is a miss; one that does not decode is also counted, and deleted when it
    /// is corrupted — not when it is intact but foreign (another format, schema or crate
    /// version: another deployment may still read it).
    async fn decode_or_evict(&self, key: &str, full_key: &str, bytes: &[u8]) -> Option<Entry<V>> {
        if crate::codec::is_tombstone(bytes) {
            // A delete's tombstone (see `TOMBSTONE_TTL`): nothing there.
            self.inner.deployments.read(&self.inner.name, key, None);
            return None;
        }
        let decoded = self.inner.codec.decode_for_key(full_key, bytes);
        self.inner.deployments.read(
            &self.inner.name,
            key,
            decoded.as_ref().err().map(|e| (e, bytes)),
        );
        match decoded {
            Ok(entry) if entry.is_usable_at(now_ms()) => Some(entry),
            Ok(_) => None,
            Err(e) => {
                self.inner.ops.error(Op::Decode);
                let corrupted = match &e {
                    Error::Decode { kind, .. } => !kind.is_foreign(),
                    _ => false,
                };
                if corrupted {
                    self.evict(key, full_key).await;
                }
                None
            }
        }
    }

    /// Delete the corrupted value under `full_key` (best effort).
    async fn evict(&self, key: &str, full_key: &str) {
        let client = self.client(self.writer_for(key));
        let _ = cluster::follow(Instant::now(), &self.inner.options, |o| {
            let c = client.with_options(o);
            async move { c.unlink::<i64, _>(full_key).await }
        })
        .await;
    }

    /// GET `key` and decode it (not counted).
    async fn read(&self, key: &str) -> Result<Option<Entry<V>>> {
        let full = self.full_key(key);
        let started = Instant::now();
        let index = self.reader_for(key);
        let client = self.client(index);
        let turn = self.turn(Op::Get, index).await?;
        let read: std::result::Result<Option<Bytes>, _> = crate::traced!(
            self.op_span(Op::Get),
            cluster::follow_read(Instant::now(), &self.inner.options, |o| {
                let (c, full) = (client.with_options(o), full.as_str());
                async move { c.get(full).await }
            })
        )
        .await;
        settle(turn, &read);
        self.inner.ops.took(Op::Get, started);
        match read.map_err(|e| self.failed(Op::Get, index, e))? {
            Some(bytes) => Ok(self.decode_or_evict(key, &full, &bytes).await),
            None => {
                self.inner.deployments.read(&self.inner.name, key, None);
                Ok(None)
            }
        }
    }

    /// A `layercache.redis` span for one command of kind `op`.
    #[cfg(feature = "tracing")]
    fn op_span(&self, op: Op) -> tracing::Span {
        tracing::debug_span!("layercache.redis", cache = %self.inner.name, op = op.name())
    }

    fn count(&self, entry: &Option<Entry<V>>) {
        match entry {
            Some(e) if e.is_fresh() => self.inner.metrics.hit(),
            Some(_) => self.inner.metrics.stale(),
            None => self.inner.metrics.miss(),
        }
    }

    /// How long commands of kind `op` took since the cache was built (failed and timed-out ones
    /// included), without any recorder: count, mean, max and percentiles.
    pub fn op_latency(&self, op: RedisOp) -> crate::instrument::LatencySnapshot {
        self.inner.ops.latency[op.op() as usize].snapshot()
    }

    /// The frame for `entry` stored under `full_key`, with its encode failure and sizes counted.
    fn encode_counted(&self, full_key: &str, entry: &Entry<V>) -> Result<Vec<u8>> {
        let bytes = self
            .inner
            .codec
            .encode_for_key(full_key, entry)
            .inspect_err(|_| self.inner.ops.error(Op::Encode))?;
        self.inner.ops.sizes(&bytes);
        Ok(bytes)
    }

    /// Round-trip time of a `PING`, as a health check (never trust a client's "connected" flag).
    pub async fn ping(&self) -> Result<Duration> {
        let started = Instant::now();
        let _: Value = self
            .inner
            .pool
            .next()
            .with_options(&self.inner.options)
            .ping(None)
            .await
            .map_err(|source| self.client_error("ping", source))?;
        Ok(started.elapsed())
    }

    /// Counters since the cache was built (`errors` counts failed operations, decode failures
    /// included).
    pub fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        self.inner.metrics.fill(&mut stats);
        stats.errors = self.inner.ops.error_total.load(Ordering::Relaxed);
        stats
    }
}

/// Note how `turn`'s command came back (answered, timed out, or its connection lost), and end
/// the turn.
fn settle<T>(turn: admission::Turn<'_>, result: &std::result::Result<T, fred::error::Error>) {
    use fred::error::ErrorKind;
    match result {
        Err(e) if *e.kind() == ErrorKind::Timeout => turn.timed_out(),
        Err(e) if matches!(e.kind(), ErrorKind::Canceled | ErrorKind::IO) => {}
        _ => turn.answered(),
    }
}

/// Which of `choices` connections carries `key`: the same one every time. With one choice (the
/// default pool of two gives one reader and one writer) there is nothing to hash; otherwise
/// xxh3 (already used for frame checksums), cheaper than the standard library's SipHash.
fn pick(key: &str, choices: usize) -> usize {
    if choices <= 1 {
        return 0;
    }
    (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % choices as u64) as usize
}

#[async_trait]
impl<V> Cache<V> for RedisCache<V>
where
    V: Send + Sync + 'static,
{
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn holds_other_deployment(&self, key: &str) -> bool {
        self.inner.deployments.holds(key)
    }

    fn connections(&self) -> u64 {
        self.inner
            .connections
            .load(std::sync::atomic::Ordering::Acquire)
    }

    fn get<'a>(&'a self, key: &'a str) -> CacheGet<'a, V> {
        CacheGet::new(async move {
            let entry = self.read(key).await?;
            self.count(&entry);
            Ok(entry)
        })
    }

    async fn peek(&self, key: &str) -> Result<Option<Entry<V>>> {
        self.read(key).await
    }
    async fn set(&self, key: &str, entry: Entry<V>) -> Result<()> {
        let ttl_ms = entry.stale_until_ms().saturating_sub(now_ms());
        if ttl_ms == 0 {
            return self.delete(key).await;
        }
        let ttl_ms = redis_px(ttl_ms);
        let full = self.full_key(key);
        let bytes = self.encode_counted(&full, &entry)?;
        let started = Instant::now();
        let index = self.writer_for(key);
        let client = self.client(index);
        let bytes = Bytes::from(bytes);
        let turn = self.turn(Op::Set, index).await?;
        let written: std::result::Result<(), _> = crate::traced!(
            self.op_span(Op::Set),
            cluster::follow(Instant::now(), &self.inner.options, |o| {
                let (c, bytes) = (client.with_options(o), bytes.clone());
                let full = full.as_str();
                async move {
                    c.set(full, bytes, Some(Expiration::PX(ttl_ms)), None, false)
                        .await
                }
            })
        )
        .await;
        settle(turn, &written);
        self.inner.ops.took(Op::Set, started);
        written.map_err(|e| self.failed(Op::Set, index, e))
    }

    async fn invalidate_prefix(&self, prefix: &str) -> Result<u64> {
        RedisCache::invalidate_prefix(self, prefix).await
    }

    /// One script, sent by its hash: read the stored frame's creation time (frames without one
    /// count as older) and write only if `entry` is newer. An entry already past its stale
    /// deadline is not written: an older one the key holds is deleted instead (as `set`
    /// deletes the key for it), and `true` returned unless a newer one is kept.
    async fn set_if_newer(&self, key: &str, entry: Entry<V>) -> Result<bool> {
        self.write_if_newer(key, entry).await
    }

    /// One script, sent by its hash: read the stored frame's creation time and delete the key
    /// only if it is earlier than `than` (a frame without one counts as earlier).
    async fn delete_if_older(&self, key: &str, than: std::time::SystemTime) -> Result<bool> {
        self.delete_older(key, crate::clock::to_us(than)).await
    }

    /// The same script for each entry, pipelined as `set_many` pipelines its `SET`s.
    async fn set_many_if_newer(&self, entries: Vec<(&str, Entry<V>)>) -> Result<Vec<bool>> {
        self.write_many_if_newer(entries).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let started = Instant::now();
        let index = self.writer_for(key);
        let full = self.full_key(key);
        let client = self.client(index);
        let turn = self.turn(Op::Delete, index).await?;
        let deleted: std::result::Result<i64, _> = crate::traced!(
            self.op_span(Op::Delete),
            cluster::follow(Instant::now(), &self.inner.options, |o| {
                let (c, full) = (client.with_options(o), full.as_str());
                async move { c.unlink(full).await }
            })
        )
        .await;
        settle(turn, &deleted);
        self.inner.ops.took(Op::Delete, started);
        deleted
            .map(|_| ())
            .map_err(|e| self.failed(Op::Delete, index, e))
    }

    /// `MGET`, in chunks of 1,000 keys (on a cluster, one `MGET` per hash slot), pipelined in
    /// rounds of 500 commands.
    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Entry<V>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let full: Vec<String> = keys.iter().map(|k| self.full_key(k)).collect();
        // Groups of indices into `keys`, each fetched by one MGET.
        let groups: Vec<Vec<usize>> = if self.inner.clustered {
            let mut by_slot: std::collections::BTreeMap<u16, Vec<usize>> =
                std::collections::BTreeMap::new();
            for (i, k) in full.iter().enumerate() {
                by_slot
                    .entry(fred::util::redis_keyslot(k.as_bytes()))
                    .or_default()
                    .push(i);
            }
            by_slot
                .into_values()
                .flat_map(|g| g.chunks(BATCH).map(<[usize]>::to_vec).collect::<Vec<_>>())
                .collect()
        } else {
            (0..full.len())
                .collect::<Vec<_>>()
                .chunks(BATCH)
                .map(<[usize]>::to_vec)
                .collect()
        };
        let index = self.reader_for(keys[0]);
        let client = self.client(index);
        let mut replies: Vec<Value> = Vec::with_capacity(groups.len());
        for round in groups.chunks(PIPELINE_CHUNK) {
            let full = &full;
            let turn = self.turn(Op::GetMany, index).await?;
            let round_replies = crate::traced!(
                self.op_span(Op::GetMany),
                cluster::follow_read(Instant::now(), &self.inner.bulk_options, |_| async move {
                    let pipeline = client.pipeline();
                    for group in round {
                        let group_keys: Vec<fred::types::Key> = group
                            .iter()
                            .map(|&i| fred::types::Key::from(full[i].as_str()))
                            .collect();
                        let _: () = pipeline.mget(group_keys).await?;
                    }
                    pipeline.all::<Vec<Value>>().await
                })
            )
            .await;
            settle(turn, &round_replies);
            let round_replies = round_replies.map_err(|e| self.failed(Op::GetMany, index, e))?;
            if round_replies.len() != round.len() {
                return Err(self.redis_error(
                    Op::GetMany,
                    fred::error::Error::new(
                        fred::error::ErrorKind::Protocol,
                        "pipeline reply count mismatch",
                    ),
                ));
            }
            replies.extend(round_replies);
        }
        self.inner.ops.took(Op::GetMany, started);
        let mut out: Vec<Option<Entry<V>>> = (0..keys.len()).map(|_| None).collect();
        for (group, reply) in groups.iter().zip(replies) {
            let values: Vec<Value> = match reply {
                Value::Array(values) => values,
                single => vec![single],
            };
            for (&i, value) in group.iter().zip(values) {
                if let Some(bytes) = value.as_bytes() {
                    out[i] = self.decode_or_evict(keys[i], &full[i], bytes).await;
                }
            }
        }
        for entry in &out {
            self.count(entry);
        }
        Ok(out)
    }

    /// Pipelines of `SET … PX` (and `UNLINK` for entries already expired), 500 commands a round.
    async fn set_many(&self, entries: Vec<(&str, Entry<V>)>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let now = now_ms();
        // Each key's writes go through its own writer connection, as `set` and `delete` send
        // them, so that a batch cannot overtake (or be overtaken by) another write of a key.
        let writers = (self.inner.pool.size() / 2).max(1);
        let mut groups: Vec<Vec<&(&str, Entry<V>)>> = (0..writers).map(|_| Vec::new()).collect();
        for pair in &entries {
            groups[self.writer_for(pair.0)].push(pair);
        }
        for (index, group) in groups.iter().enumerate() {
            self.set_group(index, group, now).await?;
        }
        self.inner.ops.took(Op::SetMany, started);
        Ok(())
    }
}

impl<V> RedisCache<V>
where
    V: Send + Sync + 'static,
{
    /// Pipeline `group` (keys that all write through writer `index`) in rounds.
    async fn set_group(&self, index: usize, group: &[&(&str, Entry<V>)], now: u64) -> Result<()> {
        let client = self.client(index);
        for round in group.chunks(PIPELINE_CHUNK) {
            // Encoded once; `None` for an entry already past its stale deadline (unlinked).
            let mut writes: Vec<(String, Option<(Bytes, i64)>)> = Vec::with_capacity(round.len());
            for (key, entry) in round {
                let full = self.full_key(key);
                let ttl_ms = entry.stale_until_ms().saturating_sub(now);
                if ttl_ms == 0 {
                    writes.push((full, None));
                    continue;
                }
                let bytes = self.encode_counted(&full, entry)?;
                writes.push((full, Some((Bytes::from(bytes), redis_px(ttl_ms)))));
            }
            let writes = &writes;
            let turn = self.turn(Op::SetMany, index).await?;
            let written = crate::traced!(
                self.op_span(Op::SetMany),
                cluster::follow(Instant::now(), &self.inner.bulk_options, |_| async move {
                    let pipeline = client.pipeline();
                    for (full, write) in writes {
                        let _: () = match write {
                            None => pipeline.unlink(full.as_str()).await?,
                            Some((bytes, ttl)) => {
                                pipeline
                                    .set(
                                        full.as_str(),
                                        bytes.clone(),
                                        Some(Expiration::PX(*ttl)),
                                        None,
                                        false,
                                    )
                                    .await?
                            }
                        };
                    }
                    for result in pipeline.try_all::<Value>().await {
                        result?;
                    }
                    Ok(())
                })
            )
            .await;
            settle(turn, &written);
            written.map_err(|e| self.failed(Op::SetMany, index, e))?;
        }
        Ok(())
    }
}
